"""Where the package keeps downloaded things (models, the local OpenSearch node) on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$MMRAG_CACHE_DIR, or ~/.cache/multi_modal_rag."""
    configured = os.environ.get("MMRAG_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "multi_modal_rag"
