"""What a migration is and how far it got, persisted in the `mmrag-migrations` index (one document per alias),
and the lease that lets one process at a time act on it (a run, a rollback, a cleanup).

Every save is conditional on the document's `_seq_no`/`_primary_term` as last read or written, so a
process that lost its lease finds out at its next save. A lease is free once released (`lease_expires`
0) or once its holder is known to have exited; otherwise a process that wants it watches the document
and takes it only after LEASE_SECONDS of its own monotonic clock without a renewal: no two hosts'
clocks are ever compared. What a stale holder can still send is fenced elsewhere (`run`, `sync`).
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
# A lease not renewed for this long may be taken over; MMRAG_LEASE_SECONDS shortens it for tests of lapses.
LEASE_SECONDS = float(os.environ.get("MMRAG_LEASE_SECONDS", "60"))
HEARTBEAT_SECONDS = LEASE_SECONDS / 6
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
    lease_owner: str = ""  # host:pid:token of the holder, for people
    lease_process: str = ""  # boot id, PID namespace, pid and start time of the holder (see `_owner_is_gone`)
    lease_expires: float = 0.0  # 0: released; otherwise the holder's own clock reading, for people only
    save_id: str = ""  # unique per save: a save retried after a timeout recognises its own first attempt
    fence: str = ""  # the alias on the target index that the lease holder writes through (see `run`)
    terms: dict[str, int] = field(default_factory=dict)  # source shard -> primary term `marks` were taken under
    buckets: list[str] = field(default_factory=list)  # paper ids cutting the source into ranges (the hand-over)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MigrationState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def lease_held(self) -> bool:
        """Whether a process holds the lease (it may have died since: `StateStore.claim` finds out)."""
        return self.status in UNFINISHED and self.lease_expires != 0.0


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
    """The state document of one alias, held under a lease while a run, a rollback or a cleanup works on it."""

    def __init__(self, client: OpenSearch, alias: str):
        self.client = client
        self.alias = alias
        self.token = uuid.uuid4().hex[:8]
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.token}"
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

    def claim(self, action: str) -> MigrationState:
        """Read the recorded migration and hold its lease, to `action` it (resume, roll back, clean up).

        A lease that is released, or whose holder is known to have exited, is taken at once. Otherwise the
        document is watched for LEASE_SECONDS by this process's monotonic clock: a renewal means the holder
        lives (refused); none means it is gone or paused, and the lease is taken by a conditional save, so a
        holder that wakes up finds it lost at its next save and cannot act on the alias (see `run`).
        """
        state = self.read()
        if state is None:
            raise MigrationError(f"No migration of {self.alias!r} is recorded; nothing to {action}.")
        if state.lease_held() and state.lease_owner != self.owner and not _owner_is_gone(state):
            seen, version = time.monotonic(), self._version
            logger.warning("the migration of %s is leased to %s: waiting up to %.0f s to see whether it is alive",
                           self.alias, state.lease_owner, LEASE_SECONDS)
            while time.monotonic() - seen < LEASE_SECONDS:
                time.sleep(min(1.0, LEASE_SECONDS / 20))
                state = self.read()
                if state is None:
                    raise MigrationError(f"The migration of {self.alias!r} was deleted meanwhile; nothing to {action}.")
                if self._version != version:
                    if not state.lease_held():  # released meanwhile: free
                        break
                    raise MigrationError(
                        f"A migration of {self.alias!r} is running in {state.lease_owner} (it renewed its lease just now); "
                        f"stop it before you {action} (its lease lapses {LEASE_SECONDS:.0f} s after it stops)."
                    )
        self.save(state)
        return state

    def save(self, state: MigrationState) -> None:
        """Persist progress (and renew the lease); raises MigrationError if the lease was lost meanwhile.

        Call it right before an action that only the lease holder may take (the swap, lifting a block).
        """
        with self._lock:
            if self.lost:
                raise MigrationError(self.lost)
            self._stamp(state)
            self._write(state)

    def _stamp(self, state: MigrationState) -> None:
        state.updated_at = now()
        state.lease_owner = self.owner
        state.lease_process = _process_identity()
        state.lease_expires = time.time() + LEASE_SECONDS
        state.save_id = uuid.uuid4().hex

    def _write(self, state: MigrationState) -> None:
        if self._version is None:
            raise MigrationError(f"The state of the migration of {self.alias!r} was not read before writing it.")
        try:
            response = self.client.index(index=STATE_INDEX, id=self.alias, body=state.to_dict(), refresh=True,
                                         if_seq_no=self._version[0], if_primary_term=self._version[1])
        except ConflictError:
            record = _read(self.client, self.alias)
            if record is not None and record[0].save_id == state.save_id:  # our own write, retried after a timeout
                self._version = (record[1], record[2])
                return
            who = f"{record[0].status} by {record[0].lease_owner}" if record else "deleted"
            self.lost = (f"The migration of {self.alias!r} was changed by another process ({who}); this run stops "
                         "without moving the alias.")
            raise MigrationError(self.lost) from None
        self._version = (response["_seq_no"], response["_primary_term"])

    def release(self, state: MigrationState) -> None:
        """Save the final state with the lease given up."""
        self.stop_heartbeat()
        with self._lock:
            if self.lost:
                raise MigrationError(self.lost)
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
                    save_id = uuid.uuid4().hex
                    try:
                        response = self.client.update(
                            index=STATE_INDEX, id=self.alias, refresh=True,
                            body={"doc": {"lease_expires": time.time() + LEASE_SECONDS, "updated_at": now(),
                                          "save_id": save_id}},
                            if_seq_no=self._version[0], if_primary_term=self._version[1],
                        )
                        self._version = (response["_seq_no"], response["_primary_term"])
                    except ConflictError:
                        record = _read(self.client, self.alias)
                        if record is not None and record[0].save_id == save_id:
                            self._version = (record[1], record[2])
                            continue
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


def _process_identity(pid: int | None = None) -> str:
    """boot id / PID namespace / pid / start time: names one process across hosts, containers and pid reuse.
    Empty where /proc does not tell (then a holder is never judged gone, only lapsed)."""
    pid = pid or os.getpid()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        with open(f"/proc/{pid}/stat") as f:
            started = f.read().rpartition(")")[2].split()[19]  # field 22, counted after the command name
    except OSError:
        return ""
    return f"{boot}/{namespace}/{pid}/{started}"


def _owner_is_gone(state: MigrationState) -> bool:
    """True for a lease holder of this process whose run has ended, or a process that ran in this kernel and PID
    namespace (the same boot) and has exited: its pid is free or now names a process started at another time.
    A holder in another host, container or boot is never judged gone here: its lease has to lapse."""
    if state.lease_owner in _ENDED:
        return True
    mine = _process_identity()
    if not state.lease_process or not mine:
        return False
    boot, namespace, pid, _ = state.lease_process.rsplit("/", 3)
    if (boot, namespace) != tuple(mine.rsplit("/", 3)[:2]):
        return False
    return _process_identity(int(pid)) != state.lease_process


def fence_alias(target_index: str, token: str = "*") -> str:
    """The alias through which the run holding the lease with `token` writes into `target_index` (`*`: every run's)."""
    return f"{target_index}-fence-{token}"


def lease_may_be_live(state: MigrationState) -> bool:
    """Whether some process may still hold the lease (without waiting to find out)."""
    return state.lease_held() and not _owner_is_gone(state)


def save_state(client: OpenSearch, state: MigrationState) -> None:
    """Write a state unconditionally (tests and tools that set up a situation; runs use StateStore)."""
    _ensure_state_index(client)
    state.updated_at = now()
    client.index(index=STATE_INDEX, id=state.alias, body=state.to_dict(), refresh=True)
