"""What `mmrag serve` is told: the alias, the node, the limits on requests, and the API keys."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..connection import ConnectionSettings
from ..errors import InputError
from ..search.queries import HybridSettings
from .guards import key_digest

KEYS_VARIABLE = "MMRAG_API_KEYS"  # comma-separated
KEYS_FILE_VARIABLE = "MMRAG_API_KEYS_FILE"  # one key per line, '#' comments
CONFIG_VARIABLE = "MMRAG_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process


@dataclass(frozen=True)
class ServeConfig:
    alias: str = "papers"
    url: str | None = None  # None: $OPENSEARCH_URL, else http://localhost:9200
    rerank_model: str | None = None  # the CrossEncoder `"rerank": true` uses; None: reranking is refused
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_digests: tuple[str, ...] = field(default=(), repr=False)  # what worker processes get instead of keys
    max_size: int = 100
    max_query_chars: int = 2000
    max_papers: int = 100  # per POST /papers
    max_paper_chars: int = 200_000  # title + abstract + content of one paper; a longer one fails, not embedded
    max_body_bytes: int = 10 * 1024 * 1024
    max_rerank_top: int = 200
    batch_wait_ms: float = 2.0  # how long a batch may wait for company, only under concurrency
    max_batch: int = 64
    query_cache_size: int = 1024
    pool_maxsize: int = 64  # HTTP connections to the node, one per concurrent request thread
    recipe: str | None = None  # a fusion recipe file (mmrag eval --tune): how hybrid and rrf fuse

    def hybrid_settings(self) -> HybridSettings:
        """The searcher's fusion settings: the recipe's, else the defaults."""
        if not self.recipe:
            return HybridSettings()
        from ..search.recipes import load_recipe

        return load_recipe(self.recipe).settings()

    def connection(self) -> ConnectionSettings:
        return replace(ConnectionSettings.from_env(self.url), pool_maxsize=self.pool_maxsize)

    def key_digests(self) -> tuple[str, ...]:
        """SHA-256 digests of the API keys: all RequestGuard needs to check a key."""
        return self.api_key_digests or tuple(key_digest(key) for key in self.api_keys)

    def to_env(self) -> str:
        """The config for worker processes: the keys' digests, never the keys (the environment is readable)."""
        return json.dumps({**asdict(self), "api_keys": [], "api_key_digests": list(self.key_digests())})

    @classmethod
    def from_env(cls) -> "ServeConfig":
        raw = os.environ.get(CONFIG_VARIABLE)
        if not raw:
            return cls(api_keys=load_api_keys())
        data = json.loads(raw)
        return cls(**{**data, "api_keys": (), "api_key_digests": tuple(data.get("api_key_digests", ()))})


def load_api_keys(keys_file: str | None = None) -> tuple[str, ...]:
    """Keys from $MMRAG_API_KEYS and from a file (`keys_file`, else $MMRAG_API_KEYS_FILE); none: auth off."""
    keys = [k.strip() for k in os.environ.get(KEYS_VARIABLE, "").split(",") if k.strip()]
    path = keys_file or os.environ.get(KEYS_FILE_VARIABLE)
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"API keys file {path}: {exc.strerror or exc}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise InputError(f"API keys file {path} holds no key (one per line)")
    short = [i for i, key in enumerate(keys, start=1) if len(key) < 16]
    if short:
        raise InputError(f"API keys must be at least 16 characters; key number {short[0]} is shorter")
    return tuple(dict.fromkeys(keys))
