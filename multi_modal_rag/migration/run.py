"""Zero-downtime model migration: copy, catch up, hand over under a short write block, verify, swap the alias.

1. copy: a point-in-time scan of the old index, re-embedded with the new model into `ALIAS-vN+1`;
   the app reads and writes the old index through the alias meanwhile.
2. catch up: passes copy what changed since the last pass, found by `_seq_no` (see `sync`), until a
   pass finds little; deletions are mirrored by an id merge. Then, still while writes go on, the whole
   new index is reconciled with the old one (`sync.prepare`: ids and recomputed content hashes).
3. hand over: writes to the old index are blocked by the add-index-block API, which returns once the
   writes in flight are done; the new index is brought up to the frozen old one by the changes since
   `prepare` only (`sync.settle`), verified, the checkpoints confirmed unmoved, the lease confirmed by a
   conditional save, and the alias moves in one atomic `_aliases` call. This project's writers wait
   through the block and then write to the new index, re-embedding with its model; nothing runs against
   the new index after the swap, so no write made after the swap can be undone. The old index stays
   write-blocked: it is the frozen copy that rollback and cleanup reason about.

Progress and a lease live in the state index (see `state`): `--resume` continues from any crash point.
The run writes into the new index only through its fence, an alias `TARGET-fence-TOKEN` that whoever
takes the lease over (a `--resume`, a rollback) replaces or removes; the swap's `_aliases` call removes
the fence with `must_exist`, so a run that lost its lease while paused cannot write or swap when it wakes.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from opensearchpy import OpenSearch
from opensearchpy.exceptions import TransportError

from .. import store
from ..connection import ConnectionSettings, make_client
from ..documents import chunking_for
from ..encoders import Encoder
from ..errors import IndexNotFoundError, MigrationError
from ..models import Device, Precision, canonical_name
from ..parallel import Executor, run_units
from ..projection import Projection
from ..store import IndexSpec
from ..store.template import VectorEncoding
from .gate import GateRefused, GateSpec, after_refusal, evaluate_gate
from .reduce import reduced_dimension, target_projection
from .slices import CopyUnit, copy_slice
from .state import UNFINISHED, MigrationPlan, MigrationState, StateStore, fence_alias, lease_may_be_live
from .handover import HandOver, count_fixed
from .sync import Copier, catch_up_pass, copy_changed, prepare
from .verify import TargetCheck, check_target

logger = logging.getLogger(__name__)

PAGE_SIZE = 128
MAX_CATCH_UP_PASSES = 10
HANDOVER_BELOW = 5  # hand over once a catch-up pass finds at most this many changes: they are re-embedded while writes wait
Phase = Literal["copy", "catch-up", "gate", "handover", "swap", "done"]
ProgressCallback = Callable[[Phase, int, int | None], None]
# The boundaries between the run's requests; `on_step` is called at each (tests inject crashes there).
STEPS = ("lease-taken", "target-created", "page-copied", "caught-up", "writes-blocked", "reconciled", "verified",
         "swap-ready", "alias-moved", "finished")
GATE_STEP = "gate-passed"  # between "caught-up" and "writes-blocked", in a run with a relevance gate


class Migrator:
    """Migrate the index behind `alias` to `to_model` at `to_precision`. One instance per run.

    `to_precision` None keeps the source index's precision; the same model at another precision (minilm fp32
    -> minilm int8) is a migration like any other. `device` and `processes` are as for `Encoder`.
    `gate` evaluates both indexes before writes are blocked and refuses the swap when the new one ranks worse
    (see `gate`); it is saved with the run, so a resumed run keeps it. `force` swaps a run the gate refused.
    """

    def __init__(
        self,
        alias: str,
        to_model: str,
        *,
        settings: ConnectionSettings | None = None,
        client: OpenSearch | None = None,
        page_size: int = PAGE_SIZE,
        index_settings: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        on_step: Callable[[str], None] | None = None,
        to_precision: Precision | None = None,
        device: Device = "auto",
        processes: int = 1,
        workers: int = 1,
        executor: Executor = "local",
        ray_address: str | None = None,
        vector_encoding: VectorEncoding | None = None,
        gate: GateSpec | None = None,
        force: bool = False,
        reduce_dim: int | None = None,
    ):
        self.alias = alias
        self.to_model = to_model
        self.to_precision = to_precision
        self.device = device
        self.processes = processes
        self.workers, self.executor, self.ray_address = workers, executor, ray_address  # the copy's workers (`slices`)
        self.vector_encoding = vector_encoding  # None: the source index's
        self.gate, self.force = gate, force
        self.reduce_dim = reduce_dim  # PCA to N dims (see `reduce`); None: as the source is, 0: the model's full dimension
        self.settings = settings or ConnectionSettings.from_env()
        self.client = client or make_client(self.settings)
        self.page_size = page_size
        self.index_settings = index_settings or {}  # overrides of what the new index inherits (shards, replicas, ...)
        self.on_progress = on_progress or (lambda phase, done, total: None)
        self.on_step = on_step or (lambda step: None)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        """The new model, loaded on first use."""
        if self._encoder is None:
            if self.to_precision is None:
                with store.translated(self.settings.safe_url, f"reading the index behind {self.alias}"):
                    self.to_precision = self._recorded_spec(self._source_index()).precision
            self._encoder = Encoder(self.to_model, device=self.device, precision=self.to_precision,
                                    processes=self.processes)
        return self._encoder

    def close(self) -> None:
        """Stop the new model's encoding processes, if it started any."""
        if self._encoder is not None:
            self._encoder.close()

    # ---- planning ---------------------------------------------------------------------

    def _source_index(self) -> str:
        indices = store.alias_indices(self.client, self.alias)
        if not indices:
            raise IndexNotFoundError(f"Alias {self.alias!r} does not exist; nothing to migrate.")
        if len(indices) != 1:
            raise MigrationError(f"Alias {self.alias!r} points at {len(indices)} indices ({', '.join(indices)}); expected exactly one.")
        return indices[0]

    def target_spec(self, source_spec: IndexSpec, projection: Projection | None = None) -> IndexSpec:
        """The new model's spec; HNSW settings from the source, chunking too when it fits the new model.
        With --reduce-dim, `projection` is the target's once fitted (`_create_target`); a plan has none yet."""
        if self.to_precision is None:
            self.to_precision = source_spec.precision
        # Token windows that fit the new model are kept; word windows (older indexes) become token windows.
        fits = (source_spec.chunk_unit == "tokens"
                and source_spec.chunk_words <= chunking_for(self.encoder.max_tokens, "tokens")[0])
        chunking = {"chunk_words": source_spec.chunk_words, "chunk_overlap": source_spec.chunk_overlap} if fits else {}
        return self.encoder.spec(
            space_type=source_spec.space_type, engine=source_spec.engine, m=source_spec.m,
            ef_construction=source_spec.ef_construction, ef_search=source_spec.ef_search,
            vector_encoding=self.vector_encoding or source_spec.vector_encoding, **chunking,
            dimension=reduced_dimension(self.reduce_dim, source_spec, self.encoder) or self.encoder.model_dimension,
            projection=projection.id if projection else None,
        )

    def plan(self, *, estimate: bool = True) -> MigrationPlan:
        """Source, target, counts, dimensions and (with `estimate`) the time it would take; changes nothing."""
        with store.translated(self.settings.safe_url, f"planning the migration of {self.alias}"):
            store.ping(self.client, self.settings.safe_url)
            source_index = self._source_index()
            source_spec = store.spec_of(self.client, source_index)
            if source_spec is None:
                raise MigrationError(f"Index {source_index!r} has no multi_modal_rag _meta; cannot tell its model.")
            target_spec = self.target_spec(source_spec)
            documents, chunks = store.count_papers_and_chunks(self.client, source_index)
            target_index = store.successor_name(self.client, self.alias, source_index)
        return MigrationPlan(
            alias=self.alias, source_index=source_index, target_index=target_index,
            from_model=source_spec.model, to_model=target_spec.model,
            source_dimension=source_spec.dimension, target_dimension=target_spec.dimension,
            documents=documents, chunks=chunks,
            estimated_seconds=self._estimate_seconds(chunks) if estimate else None,
            chunking={"chunk_words": target_spec.chunk_words, "chunk_overlap": target_spec.chunk_overlap,
                      "chunk_unit": target_spec.chunk_unit},
            from_precision=source_spec.precision, to_precision=target_spec.precision,
        )

    def _estimate_seconds(self, chunks: int) -> float | None:
        """Time a small encode of chunk-sized texts and scale it to the whole corpus."""
        if not chunks:
            return 0.0
        sample = ["word " * 150] * 16
        started = time.perf_counter()
        self.encoder.encode_documents(sample)
        return round((time.perf_counter() - started) / len(sample) * chunks, 1)

    # ---- the run ----------------------------------------------------------------------

    def run(self, *, resume: bool = False) -> MigrationState:
        """Run (or resume) the migration to the swap. Raises MigrationError, alias untouched, on failure."""
        if self.gate is not None:
            self.gate.check()
        states = StateStore(self.client, self.alias)
        with store.translated(self.settings.safe_url, f"starting the migration of {self.alias}"):
            store.ping(self.client, self.settings.safe_url)
            state = self._claim(states, resume)
        states.start_heartbeat()
        finished = False
        try:
            self.on_step("lease-taken")
            self._advance(states, state)
            finished = True
            return state
        except TransportError as exc:
            reason = store.describe(exc)
            state.message = f"node error: {reason}"
            try:
                states.save(state)
            except (TransportError, MigrationError):
                pass
            raise MigrationError(
                f"OpenSearch failed mid-migration ({reason}); progress is saved ({state.status}, at {state.checkpoint!r}). "
                f"Run again with --resume when the node is back."
            ) from exc
        finally:
            if not finished:
                states.drop_lease()  # a crash of the whole process leaves it to lapse (or to --resume on this host)
            states.stop_heartbeat()
            self.close()

    def _claim(self, states: StateStore, resume: bool) -> MigrationState:
        existing = states.read()
        if resume:
            self._check_resumable(existing)
            existing = states.claim("resume")
            self._check_resumable(existing)  # (it may have finished while we waited for its lease)
            if existing.status in ("failed", "gated"):  # verification failed or the gate refused: catch up, check again
                existing.status = "catching-up"
            if self.gate is not None:
                existing.gate_spec = self.gate.to_dict()
            elif existing.gate_spec:  # a gate asked for at the start holds for every resume
                self.gate = GateSpec.from_dict(existing.gate_spec)
            self._fence(states, existing)
            return existing
        if existing is not None and existing.status == "gated":
            raise MigrationError(f"The migration of {self.alias!r} to {existing.to_model} was refused ({existing.message}). "
                                 f"{after_refusal(self.alias, existing.target_index)}")
        if existing is not None and existing.status in UNFINISHED:
            if lease_may_be_live(existing):
                raise MigrationError(f"A migration of {self.alias!r} to {existing.to_model} is running in {existing.lease_owner}; "
                                     "not starting a second one.")
            raise MigrationError(
                f"A migration of {self.alias!r} to {existing.to_model} was interrupted ({existing.status}, "
                f"{existing.copied} papers copied): continue it with --resume, or `mmrag migrate rollback` to abandon it."
            )
        plan = self.plan(estimate=False)
        if self.client.indices.exists(index=plan.target_index):
            raise MigrationError(
                f"Target index {plan.target_index!r} already exists (left by an earlier migration?); "
                f"delete it, or run `mmrag migrate cleanup --index {self.alias}`."
            )
        state = MigrationState(**plan.route(), started_at=datetime.now(timezone.utc).isoformat(),
                               source_documents=plan.documents, gate_spec=self.gate.to_dict() if self.gate else {})
        state.fence = fence_alias(state.target_index, states.token)
        states.create(state)
        store.guard_versions(self.client, self.alias)
        return state

    def _check_resumable(self, existing: MigrationState | None) -> None:
        if existing is None or (existing.status not in UNFINISHED and existing.status != "gated"):
            raise MigrationError(f"No interrupted migration of {self.alias!r} to resume.")
        if canonical_name(self.to_model) != existing.to_model:
            raise MigrationError(f"The interrupted migration is to {existing.to_model}, not {canonical_name(self.to_model)}.")

    def _fence(self, states: StateStore, state: MigrationState) -> None:
        """Make this run the only writer of the new index: its fence replaces every earlier run's (one atomic call)."""
        state.fence = fence_alias(state.target_index, states.token)
        states.save(state)
        if self.client.indices.exists(index=state.target_index):
            self.client.indices.update_aliases(body={"actions": [
                {"remove": {"index": state.target_index, "alias": fence_alias(state.target_index)}},
                {"add": {"index": state.target_index, "alias": state.fence}},
            ]})

    def _advance(self, states: StateStore, state: MigrationState) -> None:
        if state.status == "starting":
            self._create_target(state)
            state.terms = store.primary_terms(self.client, state.source_index)
            state.marks = store.shard_checkpoints(self.client, state.source_index)  # the copy sees at least these
            state.status = "copying"
            states.save(state)
        target_spec = self._recorded_spec(state.target_index)
        if self.to_precision is None:  # resumed: the precision the target was created for
            self.to_precision = target_spec.precision
        elif self.to_precision != target_spec.precision:
            raise MigrationError(f"The interrupted migration is to {target_spec.precision}, not {self.to_precision}.")
        copier = Copier(self.client, self.encoder, target_spec, state.target_index, page_size=self.page_size,
                        fence=state.fence)
        if state.status == "copying":
            self._copy(states, state, copier)
            state.status = "catching-up"
            states.save(state)
        checked = None
        if state.status == "catching-up":
            self._catch_up(states, state, copier)
            checked = self._check_target(states, state)
            self._pass_gate(states, state)
            prepared = prepare(copier, state.source_index)
            state.marks, state.terms, state.buckets = prepared.marks, prepared.terms, prepared.buckets
            count_fixed(state, prepared.fixed)
            started = time.monotonic()
            HandOver(self.client, states, state, self.on_step).block()
        else:
            started = time.monotonic()
        if state.status == "handover":
            self._hand_over(states, state, copier, started, checked)

    def _create_target(self, state: MigrationState) -> None:
        """Create the new index (again after a crash that lost it), inheriting the source's settings."""
        if not self.client.indices.exists(index=state.target_index):
            source_spec = self._recorded_spec(state.source_index)
            projection = target_projection(self.client, state.source_index, source_spec, self.encoder, self.reduce_dim,
                                           self.target_spec(source_spec))
            spec = self.target_spec(source_spec, projection)
            inherited = {**store.inherited_settings(self.client, state.source_index), **self.index_settings}
            # Bulk load faster without refreshes; the inherited interval comes back at the hand-over.
            store.create_index(self.client, state.target_index, spec, settings={**inherited, "refresh_interval": "-1"},
                               alias=state.fence)
        self.on_step("target-created")

    def _recorded_spec(self, index: str) -> IndexSpec:
        spec = store.spec_of(self.client, index)
        if spec is None:
            raise MigrationError(f"Index {index!r} has no multi_modal_rag _meta.")
        return spec

    def _copy(self, states: StateStore, state: MigrationState, copier: Copier) -> None:
        if self.workers > 1:
            return self._copy_in_slices(states, state)
        for page in store.scan_sources(self.client, state.source_index, after=state.checkpoint, page_size=self.page_size):
            copy_changed(copier, page)
            state.copied += len(page)
            state.checkpoint = page[-1]["paper_id"]
            states.save(state)
            self.on_step("page-copied")
            self.on_progress("copy", state.copied, state.source_documents)

    def _copy_in_slices(self, states: StateStore, state: MigrationState) -> None:
        """The copy as `workers` point-in-time slices, each run by a worker with its own model (see `slices`)."""
        units = [CopyUnit(self.settings, state.source_index, state.target_index, self.to_model, self.to_precision,
                          self.device, i, self.workers, self.page_size, state.fence) for i in range(self.workers)]
        self.on_progress("copy", state.copied, state.source_documents)
        copied = run_units(copy_slice, units, executor=self.executor, ray_address=self.ray_address,
                           gpu=self.device == "cuda")
        state.copied += sum(copied)
        states.save(state)
        self.on_step("page-copied")
        self.on_progress("copy", state.copied, state.source_documents)

    def _catch_up(self, states: StateStore, state: MigrationState, copier: Copier) -> None:
        """Passes until one finds at most HANDOVER_BELOW changes, or finds no fewer than the pass before
        (writes arrive faster than the new model embeds them); the hand-over takes the rest."""
        previous = None
        for _ in range(MAX_CATCH_UP_PASSES):
            marks, terms, copied, deleted = catch_up_pass(copier, state.source_index, state.marks, state.terms)
            state.marks, state.terms = marks, terms
            state.caught_up, state.deleted = state.caught_up + copied, state.deleted + deleted
            states.save(state)
            self.on_step("caught-up")
            self.on_progress("catch-up", state.caught_up, None)
            changes = copied + deleted
            if changes <= HANDOVER_BELOW or (previous is not None and changes >= previous):
                return
            previous = changes
        logger.info("writes keep arriving; handing over after %d catch-up passes", MAX_CATCH_UP_PASSES)

    def _check_target(self, states: StateStore, state: MigrationState) -> TargetCheck:
        """Vectors and canaries of the new index, before writes are blocked for the hand-over."""
        checked = check_target(self.client, state.target_index, self.encoder, self._recorded_spec(state.target_index))
        if checked.problems:
            HandOver(self.client, states, state, self.on_step).fail(checked.problems, asdict(checked))
        return checked

    def _pass_gate(self, states: StateStore, state: MigrationState) -> None:
        """Evaluate both indexes (while writes go on) and stop here, alias untouched, if the new one ranks worse."""
        if self.gate is None:
            return
        if self.force:
            state.gate = {**state.gate, "forced": True}
        else:
            asked = itertools.count(1)
            report = evaluate_gate(self.gate, client=self.client, settings=self.settings, source_index=state.source_index,
                                   target_index=state.target_index, target_encoder=self.encoder,
                                   on_query=lambda: self.on_progress("gate", next(asked), None))
            state.gate = report.to_dict()
            if not report.passed:
                state.status, state.message = "gated", f"relevance gate: {report.reason}"
                states.release(state)
                raise GateRefused(f"The relevance gate refused the swap ({report.reason}); alias {self.alias!r} not "
                                  f"moved. {after_refusal(self.alias, state.target_index)}", state.to_dict())
        states.save(state)
        self.on_step(GATE_STEP)

    def _hand_over(self, states: StateStore, state: MigrationState, copier: Copier, started: float,
                   checked: TargetCheck | None) -> None:
        if store.alias_indices(self.client, self.alias) == [state.target_index]:  # a crash came right after the swap
            self._finish(states, state, started)
            return
        if checked is None:  # resumed inside the hand-over
            checked = self._check_target(states, state)
        refresh = store.inherited_settings(self.client, state.source_index).get("refresh_interval", "1s")
        self.client.indices.put_settings(index=state.target_index, body={"index": {"refresh_interval": refresh}})
        handover = HandOver(self.client, states, state, self.on_step)
        handover.swap(handover.settle(copier, checked))
        self._finish(states, state, started)

    def _finish(self, states: StateStore, state: MigrationState, started: float) -> None:
        state.swap_marks = store.shard_checkpoints(self.client, state.target_index)
        state.handover_seconds = round(time.monotonic() - started, 3)
        state.status = "swapped"
        state.message = f"alias {self.alias} -> {state.target_index}"
        states.release(state)
        self.on_progress("swap", 1, 1)
        self.on_step("finished")
        self.on_progress("done", state.copied, state.copied)
