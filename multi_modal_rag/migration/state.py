"""What a migration is and how far it got, persisted in the `mmrag-migrations` index (one document per alias)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError

STATE_INDEX = "mmrag-migrations"
Status = Literal["copying", "verifying", "swapped", "failed", "rolled_back", "cleaned"]
UNFINISHED: tuple[Status, ...] = ("copying", "verifying", "failed")


@dataclass
class MigrationRoute:
    """Which index moves to which: the fields a plan and the state of its run share."""

    alias: str
    source_index: str
    target_index: str
    from_model: str
    to_model: str
    source_dimension: int
    target_dimension: int

    def route(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(MigrationRoute)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MigrationState(MigrationRoute):
    """The persisted progress of one alias's migration."""

    status: Status = "copying"
    started_at: str = ""
    checkpoint: str | None = None  # the last paper_id copied in the scan, sorted ascending
    copied: int = 0
    caught_up: int = 0
    deleted: int = 0
    source_documents: int = 0
    message: str = ""
    updated_at: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MigrationState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class MigrationPlan(MigrationRoute):
    """What a migration would do (`--dry-run`)."""

    documents: int
    chunks: int
    estimated_seconds: float | None = None
    chunking: dict[str, int] = field(default_factory=dict)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def load_state(client: OpenSearch, alias: str) -> MigrationState | None:
    """The recorded migration of `alias`, if any."""
    if not client.indices.exists(index=STATE_INDEX):
        return None
    try:
        doc = client.get(index=STATE_INDEX, id=alias)
    except NotFoundError:
        return None
    return MigrationState.from_dict(doc["_source"])


def save_state(client: OpenSearch, state: MigrationState) -> None:
    """Persist progress in OpenSearch, so a crashed run can resume from it."""
    state.updated_at = now()
    if not client.indices.exists(index=STATE_INDEX):
        # One node may hold no replica: with the default of 1 the cluster would stay yellow.
        client.indices.create(index=STATE_INDEX, body={"settings": {"number_of_replicas": 0}}, params={"ignore": 400})
    client.index(index=STATE_INDEX, id=state.alias, body=state.to_dict(), refresh=True)
