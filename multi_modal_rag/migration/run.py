"""Zero-downtime model migration: scan, re-embed, bulk, catch up, verify, swap the alias.

The alias keeps pointing at the old index, so the app searches and writes as usual, until the
new index is verified; then one atomic `_aliases` call moves it. Progress lives in OpenSearch
(see `state`), so a run stopped by Ctrl-C, a crash or a lost node continues with `resume=True`
without losing or duplicating papers.

Writes during a migration: papers written through the alias after the migration began
(`indexed_at` at or after its start) are copied again by catch-up passes, and papers deleted
from the old index are deleted from the new one, until a pass finds nothing; then the alias
moves, and one last pass copies whatever landed in between.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import NotFoundError, TransportError

from .. import store
from ..connection import ConnectionSettings, make_client
from ..documents import Paper, chunking_for
from ..encoders import Encoder, embed_papers
from ..errors import IndexNotFoundError, MigrationError
from ..models import canonical_name
from ..store import IndexSpec
from .state import UNFINISHED, MigrationPlan, MigrationState, load_state, save_state
from .verify import VerificationReport, compare_ids, verify

logger = logging.getLogger(__name__)

PAGE_SIZE = 128
CATCH_UP_PASSES = 10
Phase = Literal["copy", "catch-up", "verify", "swap", "done"]
ProgressCallback = Callable[[Phase, int, int | None], None]


class Migrator:
    """Migrate the index behind `alias` to `to_model`. One instance per run."""

    def __init__(
        self,
        alias: str,
        to_model: str,
        *,
        settings: ConnectionSettings | None = None,
        client: OpenSearch | None = None,
        page_size: int = PAGE_SIZE,
        on_progress: ProgressCallback | None = None,
    ):
        self.alias = alias
        self.to_model = to_model
        self.settings = settings or ConnectionSettings.from_env()
        self.client = client or make_client(self.settings)
        self.page_size = page_size
        self.on_progress = on_progress or (lambda phase, done, total: None)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        """The new model, loaded on first use."""
        if self._encoder is None:
            self._encoder = Encoder(self.to_model)
        return self._encoder

    # ---- planning ---------------------------------------------------------------------

    def _source_index(self) -> str:
        indices = store.alias_indices(self.client, self.alias)
        if not indices:
            raise IndexNotFoundError(f"Alias {self.alias!r} does not exist; nothing to migrate.")
        if len(indices) != 1:
            raise MigrationError(f"Alias {self.alias!r} points at {len(indices)} indices ({', '.join(indices)}); expected exactly one.")
        return indices[0]

    def target_spec(self, source_spec: IndexSpec) -> IndexSpec:
        """The new model's spec; HNSW settings from the source, chunking too when it fits the new model."""
        fits = source_spec.chunk_words <= chunking_for(self.encoder.max_tokens)[0]
        chunking = {"chunk_words": source_spec.chunk_words, "chunk_overlap": source_spec.chunk_overlap} if fits else {}
        return self.encoder.spec(
            space_type=source_spec.space_type, engine=source_spec.engine, m=source_spec.m,
            ef_construction=source_spec.ef_construction, ef_search=source_spec.ef_search, **chunking,
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
            chunking={"chunk_words": target_spec.chunk_words, "chunk_overlap": target_spec.chunk_overlap},
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
        """Copy, catch up, verify and swap. Raises MigrationError (alias untouched) on failure."""
        with store.translated(self.settings.safe_url, f"starting the migration of {self.alias}"):
            store.ping(self.client, self.settings.safe_url)
            state = load_state(self.client, self.alias)
        if resume:
            if state is None or state.status not in UNFINISHED:
                raise MigrationError(f"No interrupted migration of {self.alias!r} to resume.")
            if canonical_name(self.to_model) != state.to_model:
                raise MigrationError(f"The interrupted migration is to {state.to_model}, not {canonical_name(self.to_model)}.")
        elif state is not None and state.status in UNFINISHED:
            raise MigrationError(
                f"A migration of {self.alias!r} to {state.to_model} was interrupted at {state.checkpoint!r} "
                f"({state.copied} papers copied): continue it with --resume, or `mmrag migrate rollback` to abandon it."
            )
        try:
            if not resume:
                state = self._start()
            self._copy(state)
            self._catch_up(state)
            state.status = "verifying"
            save_state(self.client, state)
            report = self.verify(state)
            if not report.ok:
                state.status = "failed"
                state.message = "; ".join(report.problems)
                save_state(self.client, state)
                raise MigrationError(f"Verification failed, alias {self.alias!r} not moved: {state.message}", report.to_dict())
            self._swap(state)
            self._catch_up(state)  # anything written between the last pass and the swap
            self.on_progress("done", state.copied, state.copied)
            return state
        except TransportError as exc:
            reason = store.describe(exc)
            if state is None:
                raise store.translate(exc, self.settings.safe_url, f"starting the migration of {self.alias}") from exc
            state.message = f"node error: {reason}"
            try:
                save_state(self.client, state)
            except TransportError:
                pass
            raise MigrationError(
                f"OpenSearch failed mid-migration ({reason}); progress is saved at {state.checkpoint!r}. "
                f"Run again with --resume when the node is back."
            ) from exc

    def _start(self) -> MigrationState:
        plan = self.plan(estimate=False)
        if self.client.indices.exists(index=plan.target_index):
            raise MigrationError(
                f"Target index {plan.target_index!r} already exists (left by an earlier migration?); "
                f"delete it, or run `mmrag migrate cleanup --index {self.alias}`."
            )
        target_spec = self.target_spec(store.spec_of(self.client, plan.source_index))
        # Bulk load faster without refreshes; restored before verification.
        store.create_index(self.client, plan.target_index, target_spec, settings={"refresh_interval": "-1"})
        state = MigrationState(
            **plan.route(), started_at=(datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat(),
            source_documents=plan.documents,
        )
        save_state(self.client, state)
        return state

    def _target_spec_recorded(self, state: MigrationState) -> IndexSpec:
        spec = store.spec_of(self.client, state.target_index)
        if spec is None:
            raise MigrationError(f"Target index {state.target_index!r} lost its _meta.")
        return spec

    def _copy(self, state: MigrationState) -> None:
        spec = self._target_spec_recorded(state)
        for page in store.scan_sources(self.client, state.source_index, after=state.checkpoint, page_size=self.page_size):
            self._write(state.target_index, page, spec)
            state.copied += len(page)
            state.checkpoint = page[-1]["paper_id"]
            save_state(self.client, state)
            self.on_progress("copy", state.copied, state.source_documents)

    def _catch_up(self, state: MigrationState) -> None:
        """Copy papers written since the start and mirror deletions, until a pass finds nothing."""
        spec = self._target_spec_recorded(state)
        for _ in range(CATCH_UP_PASSES):
            self.client.indices.refresh(index=state.source_index)
            changed = 0
            query = {"range": {"indexed_at": {"gte": state.started_at}}}
            for page in store.scan_sources(self.client, state.source_index, query=query, page_size=self.page_size):
                fresh = self._changed_in_source(state.target_index, page)
                if fresh:
                    self._write(state.target_index, fresh, spec)
                    changed += len(fresh)
            changed += self._mirror_deletions(state)
            state.caught_up += changed
            save_state(self.client, state)
            self.on_progress("catch-up", state.caught_up, None)
            if not changed:
                return
        logger.warning("writes kept arriving during catch-up; continuing after %d passes", CATCH_UP_PASSES)

    def _changed_in_source(self, target: str, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The source documents of `page` that the target lacks or holds with other content."""
        response = self.client.mget(index=target, body={"ids": [d["paper_id"] for d in page]}, _source_includes=["content_hash"])
        stored = {d["_id"]: d["_source"].get("content_hash") for d in response["docs"] if d.get("found")}
        return [d for d in page if stored.get(d["paper_id"]) != d.get("content_hash")]

    def _mirror_deletions(self, state: MigrationState) -> int:
        extra = [doc_id for doc_id, where in compare_ids(self.client, state.source_index, state.target_index)
                 if where == "target only"]
        if extra:
            actions = ({"_op_type": "delete", "_index": state.target_index, "_id": i} for i in extra)
            _, errors = helpers.bulk(self.client, actions, max_retries=5, initial_backoff=1, raise_on_error=False)
            if errors:
                raise MigrationError(f"{len(errors)} deletions could not be mirrored to {state.target_index}: {str(errors[0])[:300]}")
            state.deleted += len(extra)
        return len(extra)

    def _write(self, index: str, sources: list[dict[str, Any]], spec: IndexSpec) -> None:
        docs = embed_papers(self.encoder, [Paper.from_source(source) for source in sources], spec)
        actions = ({"_index": index, "_id": doc["paper_id"], "_source": doc} for doc in docs)
        ok, errors = helpers.bulk(self.client, actions, max_retries=5, initial_backoff=1, raise_on_error=False,
                                  chunk_size=self.page_size)
        if errors:
            raise MigrationError(f"{len(errors)} papers could not be written to {index}: {str(errors[0])[:300]}")

    def verify(self, state: MigrationState) -> VerificationReport:
        return verify(self.client, state, self.encoder, self._target_spec_recorded(state))

    def _swap(self, state: MigrationState) -> None:
        self.client.indices.update_aliases(body={"actions": [
            {"remove": {"index": state.source_index, "alias": self.alias, "must_exist": True}},
            {"add": {"index": state.target_index, "alias": self.alias}},
        ]})
        state.status = "swapped"
        state.message = f"alias {self.alias} -> {state.target_index}"
        save_state(self.client, state)
        self.on_progress("swap", 1, 1)


def rollback(client: OpenSearch, alias: str) -> MigrationState:
    """Point the alias back at the index it had before the last migration."""
    state = load_state(client, alias)
    if state is None:
        raise MigrationError(f"No migration of {alias!r} is recorded; nothing to roll back.")
    current = store.alias_indices(client, alias)
    if not client.indices.exists(index=state.source_index):
        raise MigrationError(f"The previous index {state.source_index!r} was already cleaned up; cannot roll back.")
    actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": alias}} for i in current if i != state.source_index]
    if state.source_index not in current:
        actions.append({"add": {"index": state.source_index, "alias": alias}})
    if actions:
        client.indices.update_aliases(body={"actions": actions})
    state.status = "rolled_back"
    state.message = f"alias {alias} -> {state.source_index}"
    save_state(client, state)
    return state


def cleanup(client: OpenSearch, alias: str) -> list[str]:
    """Delete the index the alias no longer uses after a finished or abandoned migration."""
    state = load_state(client, alias)
    if state is None:
        raise MigrationError(f"No migration of {alias!r} is recorded; nothing to clean up.")
    current = set(store.alias_indices(client, alias))
    unused = [i for i in (state.source_index, state.target_index) if i not in current and client.indices.exists(index=i)]
    if state.status in ("copying", "verifying") and state.target_index in unused:
        raise MigrationError(f"The migration to {state.target_index} is still in progress; resume or roll it back first.")
    for index in unused:
        client.indices.delete(index=index)
    state.status = "cleaned"
    state.message = f"deleted {', '.join(unused) or 'nothing'}"
    save_state(client, state)
    return unused
