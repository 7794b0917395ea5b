"""What a migration is and how far it got, persisted in the `mmrag-migrations` index (one document per alias),
and the lease that lets one process at a time run it.

Every save is conditional on the document's `_seq_no`/`_primary_term` as last read or written, so a
process that lost its lease (taken over after its heartbeat stopped, or a rollback by someone else)
finds out at its next save, before it can move the alias.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConflictError, NotFoundError, TransportError

from ..errors import MigrationError

logger = logging.getLogger(__name__)

STATE_INDEX = "mmrag-migrations"
LEASE_SECONDS = 60.0  # a lease not renewed for this long may be taken over by --resume
HEARTBEAT_SECONDS = 10.0
Status = Literal["starting", "copying", "catching-up", "handover", "swapped", "failed", "gated", "rolled_back", "cleaned"]
UNFINISHED: tuple[Status, ...] = ("starting", "copying", "catching-up", "handover", "failed")
# "gated": the relevance gate refused the swap; the new index stays for inspection (`swap --force` or `cleanup`).


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

    status: Status = "starting"
    started_at: str = ""
    checkpoint: str | None = None  # the last paper_id copied in the scan, sorted ascending
    marks: dict[str, int] = field(default_factory=dict)  # source shard -> local checkpoint already caught up to
    frozen_marks: dict[str, int] = field(default_factory=dict)  # source shard -> checkpoint when writes were blocked
    swap_marks: dict[str, int] = field(default_factory=dict)  # target shard -> checkpoint when the alias moved
    copied: int = 0
    caught_up: int = 0
    deleted: int = 0
    source_documents: int = 0
    handover_seconds: float | None = None  # how long writes were blocked
    verification: dict[str, Any] = field(default_factory=dict)
    gate_spec: dict[str, Any] = field(default_factory=dict)  # the relevance gate asked for (kept for --resume)
    gate: dict[str, Any] = field(default_factory=dict)  # its report, once it ran
    message: str = ""
    updated_at: str = ""
    lease_owner: str = ""
    lease_expires: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MigrationState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def lease_is_live(self) -> bool:
        return self.status in UNFINISHED and self.lease_expires > time.time()


@dataclass
class MigrationPlan(MigrationRoute):
    """What a migration would do (`--dry-run`)."""

    documents: int
    chunks: int
    estimated_seconds: float | None = None
    chunking: dict[str, int] = field(default_factory=dict)
    from_precision: str = "fp32"
    to_precision: str = "fp32"


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _ensure_state_index(client: OpenSearch) -> None:
    if client.indices.exists(index=STATE_INDEX):
        return
    data_nodes = len(client.cat.nodes(format="json", h="node.role") or [])
    # One replica where there is a node to hold it; on one node a replica would keep the cluster yellow.
    replicas = 1 if data_nodes > 1 else 0
    client.indices.create(index=STATE_INDEX, body={"settings": {"number_of_replicas": replicas}}, params={"ignore": 400})


def load_state(client: OpenSearch, alias: str) -> MigrationState | None:
    """The recorded migration of `alias`, if any."""
    record = _read(client, alias)
    return record[0] if record else None


def _read(client: OpenSearch, alias: str) -> tuple[MigrationState, int, int] | None:
    if not client.indices.exists(index=STATE_INDEX):
        return None
    try:
        doc = client.get(index=STATE_INDEX, id=alias)
    except NotFoundError:
        return None
    return MigrationState.from_dict(doc["_source"]), doc["_seq_no"], doc["_primary_term"]


class StateStore:
    """The state document of one alias, held under a lease while a run (or a rollback) works on it."""

    def __init__(self, client: OpenSearch, alias: str):
        self.client = client
        self.alias = alias
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._version: tuple[int, int] | None = None  # (_seq_no, _primary_term) of our last read or write
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost: str | None = None  # why the lease was lost, once it was

    def read(self) -> MigrationState | None:
        record = _read(self.client, self.alias)
        if record is None:
            self._version = None
            return None
        state, seq_no, term = record
        self._version = (seq_no, term)
        return state

    def create(self, state: MigrationState) -> None:
        """Take the lease for a new migration; refuse if another process created one first."""
        _ensure_state_index(self.client)
        self._stamp(state)
        try:
            if self._version is None:
                response = self.client.index(index=STATE_INDEX, id=self.alias, body=state.to_dict(), op_type="create",
                                             refresh=True)
            else:  # replacing the record of a finished migration
                response = self.client.index(index=STATE_INDEX, id=self.alias, body=state.to_dict(), refresh=True,
                                             if_seq_no=self._version[0], if_primary_term=self._version[1])
        except ConflictError:
            raise MigrationError(f"Another migration of {self.alias!r} started at the same moment; not starting a second one.") from None
        self._version = (response["_seq_no"], response["_primary_term"])

    def take_over(self, state: MigrationState) -> None:
        """Hold the lease of a recorded run (ours to resume): refused while another live process holds it."""
        if state.lease_is_live() and not _owner_is_gone(state.lease_owner):
            left = state.lease_expires - time.time()
            raise MigrationError(
                f"A migration of {self.alias!r} is running in {state.lease_owner} (lease renewed, expires in {left:.0f} s); "
                "wait for it, or stop it and run again with --resume."
            )
        self.save(state)

    def save(self, state: MigrationState) -> None:
        """Persist progress (and renew the lease); raises MigrationError if the lease was lost meanwhile."""
        with self._lock:
            if self.lost:
                raise MigrationError(self.lost)
            self._stamp(state)
            self._write(state)

    def _stamp(self, state: MigrationState) -> None:
        state.updated_at = now()
        state.lease_owner = self.owner
        state.lease_expires = time.time() + LEASE_SECONDS

    def _write(self, state: MigrationState) -> None:
        if self._version is None:
            raise MigrationError(f"The state of the migration of {self.alias!r} was not read before writing it.")
        try:
            response = self.client.index(index=STATE_INDEX, id=self.alias, body=state.to_dict(), refresh=True,
                                         if_seq_no=self._version[0], if_primary_term=self._version[1])
        except ConflictError:
            current = load_state(self.client, self.alias)
            who = f"{current.status} by {current.lease_owner}" if current else "deleted"
            self.lost = (f"The migration of {self.alias!r} was changed by another process ({who}); this run stops "
                         "without moving the alias.")
            raise MigrationError(self.lost) from None
        self._version = (response["_seq_no"], response["_primary_term"])

    def release(self, state: MigrationState) -> None:
        """Save the final state with the lease given up."""
        self.stop_heartbeat()
        with self._lock:
            self._stamp(state)
            state.lease_expires = 0.0
            self._write(state)

    def drop_lease(self) -> None:
        """Give the lease up without changing the progress (the run stopped); best effort."""
        self.stop_heartbeat()
        _ENDED.add(self.owner)
        with self._lock:
            if self._version is None or self.lost:
                return
            try:
                self.client.update(index=STATE_INDEX, id=self.alias, refresh=True, body={"doc": {"lease_expires": 0.0}},
                                   if_seq_no=self._version[0], if_primary_term=self._version[1])
            except TransportError as exc:
                logger.warning("could not give up the migration lease (it lapses by itself): %s", exc)

    def start_heartbeat(self) -> None:
        """Renew the lease in the background, so a slow page does not let it lapse.

        The heartbeat updates only the lease fields, never the progress the main thread is changing.
        """
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                with self._lock:
                    if self._version is None or self.lost:
                        continue
                    try:
                        response = self.client.update(
                            index=STATE_INDEX, id=self.alias, refresh=True,
                            body={"doc": {"lease_expires": time.time() + LEASE_SECONDS, "updated_at": now()}},
                            if_seq_no=self._version[0], if_primary_term=self._version[1],
                        )
                        self._version = (response["_seq_no"], response["_primary_term"])
                    except ConflictError:
                        self.lost = f"The migration of {self.alias!r} was changed by another process; this run stops."
                        return
                    except TransportError as exc:  # the node is away: the main thread will find out too
                        logger.warning("lease heartbeat failed: %s", exc)

        self._stop.clear()
        self._heartbeat = threading.Thread(target=beat, daemon=True, name="mmrag-lease")
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None


_ENDED: set[str] = set()  # lease owners of this process whose run has returned (its lease could not be given up)


def _owner_is_gone(owner: str) -> bool:
    """True for a lease holder that was a process on this machine and has exited (a crash, a kill), or a run
    of this process that has ended."""
    if owner in _ENDED:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def save_state(client: OpenSearch, state: MigrationState) -> None:
    """Write a state unconditionally (tests and tools that set up a situation; runs use StateStore)."""
    _ensure_state_index(client)
    state.updated_at = now()
    client.index(index=STATE_INDEX, id=state.alias, body=state.to_dict(), refresh=True)
