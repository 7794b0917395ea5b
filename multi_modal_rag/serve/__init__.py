"""`mmrag serve`: the HTTP search service (FastAPI on uvicorn)."""

from .app import create_app
from .config import ServeConfig, load_api_keys

__all__ = ["ServeConfig", "create_app", "load_api_keys"]
