"""Zero-downtime model migration: scan, re-embed, bulk, catch up, verify, swap the alias.

The alias keeps pointing at the old index, so the app searches and writes as usual, until
the new index is verified; then one atomic `_aliases` call moves it. Progress lives in
OpenSearch (index `mmrag-migrations`, one document per alias), so a run stopped by Ctrl-C,
a crash or a lost node continues with `resume=True` without losing or duplicating papers.

Writes during a migration: papers written through the alias after the migration began
(`indexed_at` at or after its start) are copied again by catch-up passes, and papers
deleted from the old index are deleted from the new one, until a pass finds nothing; then
the alias moves, and one last pass copies whatever landed in between.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Literal

import numpy as np
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import ConnectionError as OSConnectionError, NotFoundError, TransportError

from .documents import Paper
from .errors import IndexNotFoundError, MigrationError, MMRagError
from .index_body import IndexSpec, build_index_body, next_version, version_of, versioned_name
from .indexing import OpenSearchManager
from .indexing.opensearch_manager import count_papers_and_chunks
from .models import canonical_name, max_tokens
from .queries import knn_query

logger = logging.getLogger(__name__)

STATE_INDEX = "mmrag-migrations"
PAGE_SIZE = 128
CANARY_QUERIES = 5
Phase = Literal["copy", "catch-up", "verify", "swap", "done"]
ProgressCallback = Callable[[Phase, int, int | None], None]
SOURCE_FIELDS = ["paper_id", "title", "abstract", "content", "authors", "categories", "year", "published", "source", "url"]


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

    status: Literal["copying", "verifying", "swapped", "failed", "rolled_back", "cleaned"] = "copying"
    started_at: str = ""
    checkpoint: str | None = None  # the last paper_id copied in the scan, sorted ascending
    copied: int = 0
    caught_up: int = 0
    deleted: int = 0
    source_documents: int = 0
    message: str = ""
    updated_at: str = ""


@dataclass
class MigrationPlan(MigrationRoute):
    """What a migration would do (`--dry-run`)."""

    documents: int
    chunks: int
    estimated_seconds: float | None = None
    chunking: dict[str, int] = field(default_factory=dict)


@dataclass
class VerificationReport:
    ok: bool
    problems: list[str]
    source_documents: int
    target_documents: int
    source_chunks: int
    target_chunks: int
    expected_chunks: int
    vectors_checked: int
    canaries_ok: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def load_state(client: OpenSearch, alias: str) -> MigrationState | None:
    """The recorded migration of `alias`, if any."""
    if not client.indices.exists(index=STATE_INDEX):
        return None
    try:
        doc = client.get(index=STATE_INDEX, id=alias)
    except NotFoundError:
        return None
    return MigrationState(**doc["_source"])


def save_state(client: OpenSearch, state: MigrationState) -> None:
    """Persist progress in OpenSearch, so a crashed run can resume from it."""
    state.updated_at = _now()
    if not client.indices.exists(index=STATE_INDEX):
        # One node may hold no replica: with the default of 1 the cluster would stay yellow.
        client.indices.create(index=STATE_INDEX, body={"settings": {"number_of_replicas": 0}}, params={"ignore": 400})
    client.index(index=STATE_INDEX, id=state.alias, body=state.to_dict(), refresh=True)


class Migrator:
    """Migrate the index behind `alias` to `to_model`. One instance per run."""

    def __init__(
        self,
        alias: str,
        to_model: str,
        manager: OpenSearchManager | None = None,
        page_size: int = PAGE_SIZE,
        on_progress: ProgressCallback | None = None,
    ):
        self.alias = alias
        self.source = manager or OpenSearchManager(index=alias)
        self.client = self.source.client
        self.target = OpenSearchManager(index=alias, model=to_model, settings=self.source.settings, client=self.client)
        self.to_model = to_model
        self.page_size = page_size
        self.on_progress = on_progress or (lambda phase, done, total: None)

    # ---- planning ---------------------------------------------------------------------

    def _source_index(self) -> str:
        try:
            indices = list(self.client.indices.get_alias(name=self.alias))
        except NotFoundError:
            raise IndexNotFoundError(f"Alias {self.alias!r} does not exist; nothing to migrate.") from None
        if len(indices) != 1:
            raise MigrationError(f"Alias {self.alias!r} points at {len(indices)} indices ({', '.join(sorted(indices))}); expected exactly one.")
        return indices[0]

    def target_spec(self, source_spec: IndexSpec) -> IndexSpec:
        """The new model's spec; chunking kept from the source when it fits the new model."""
        target = self.target.spec()
        fits = source_spec.chunk_words <= int(max_tokens(self.target.embedder) * 0.7)
        chunking = (source_spec.chunk_words, source_spec.chunk_overlap) if fits else (target.chunk_words, target.chunk_overlap)
        return IndexSpec(
            model=target.model, dimension=target.dimension, space_type=source_spec.space_type, engine=source_spec.engine,
            m=source_spec.m, ef_construction=source_spec.ef_construction, ef_search=source_spec.ef_search,
            chunk_words=chunking[0], chunk_overlap=chunking[1],
        )

    def plan(self, estimate: bool = True) -> MigrationPlan:
        """Source, target, counts, dimensions and (with `estimate`) the time it would take; changes nothing."""
        self.source.ping()
        source_index = self._source_index()
        source_spec = self.source.index_spec_of(source_index)
        if source_spec is None:
            raise MigrationError(f"Index {source_index!r} has no multi_modal_rag _meta; cannot tell its model.")
        target_spec = self.target_spec(source_spec)
        version = version_of(self.alias, source_index)
        if version is None:  # an index not made by us: take the first free version
            existing = list(self.client.indices.get(index=f"{self.alias}-v*", expand_wildcards="all", ignore_unavailable=True))
            version = next_version(self.alias, existing) - 1
        status = self.source.status()
        return MigrationPlan(
            alias=self.alias,
            source_index=source_index,
            target_index=versioned_name(self.alias, version + 1),
            from_model=source_spec.model,
            to_model=target_spec.model,
            source_dimension=source_spec.dimension,
            target_dimension=target_spec.dimension,
            documents=status.documents,
            chunks=status.chunks,
            estimated_seconds=self._estimate_seconds(status.chunks) if estimate else None,
            chunking={"chunk_words": target_spec.chunk_words, "chunk_overlap": target_spec.chunk_overlap},
        )

    def _estimate_seconds(self, chunks: int) -> float | None:
        """Time a small encode of chunk-sized texts and scale it to the whole corpus."""
        if not chunks:
            return 0.0
        sample = ["word " * 150] * 16
        started = time.perf_counter()
        self.target.embedder.encode(sample, batch_size=16, show_progress_bar=False)
        return round((time.perf_counter() - started) / len(sample) * chunks, 1)

    def load_state(self) -> MigrationState | None:
        return load_state(self.client, self.alias)

    def save_state(self, state: MigrationState) -> None:
        save_state(self.client, state)

    # ---- the run ----------------------------------------------------------------------

    def run(self, resume: bool = False) -> MigrationState:
        """Copy, catch up, verify and swap. Raises MigrationError (alias untouched) on failure."""
        self.source.ping()
        state = self.load_state()
        if resume:
            if state is None or state.status not in ("copying", "verifying", "failed"):
                raise MigrationError(f"No interrupted migration of {self.alias!r} to resume.")
            if canonical_name(self.to_model) != state.to_model:
                raise MigrationError(f"The interrupted migration is to {state.to_model}, not {canonical_name(self.to_model)}.")
        else:
            if state is not None and state.status in ("copying", "verifying", "failed"):
                raise MigrationError(
                    f"A migration of {self.alias!r} to {state.to_model} was interrupted at {state.checkpoint!r} "
                    f"({state.copied} papers copied): continue it with --resume, or `mmrag migrate rollback` to abandon it."
                )
            state = self._start()
        try:
            self._copy(state)
            self._catch_up(state)
            state.status = "verifying"
            self.save_state(state)
            report = self.verify(state)
            if not report.ok:
                state.status = "failed"
                state.message = "; ".join(report.problems)
                self.save_state(state)
                raise MigrationError(f"Verification failed, alias {self.alias!r} not moved: {state.message}", report.to_dict())
            self._swap(state)
            self._catch_up(state)  # anything written between the last pass and the swap
            self.on_progress("done", state.copied, state.copied)
            return state
        except (OSConnectionError, TransportError) as exc:
            state.message = f"node error: {str(exc)[:300]}"
            try:
                self.save_state(state)
            except (OSConnectionError, TransportError):
                pass
            raise MigrationError(
                f"OpenSearch failed mid-migration ({str(exc)[:200]}); progress is saved at {state.checkpoint!r}. "
                f"Run again with --resume when the node is back."
            ) from None

    def _start(self) -> MigrationState:
        plan = self.plan(estimate=False)
        if self.client.indices.exists(index=plan.target_index):
            raise MigrationError(
                f"Target index {plan.target_index!r} already exists (left by an earlier migration?); "
                f"delete it, or run `mmrag migrate cleanup --index {self.alias}`."
            )
        source_spec = self.source.index_spec_of(plan.source_index)
        target_spec = self.target_spec(source_spec)
        self.client.indices.create(index=plan.target_index, body=build_index_body(target_spec))
        # Bulk load faster without refreshes; restored before verification.
        self.client.indices.put_settings(index=plan.target_index, body={"index": {"refresh_interval": "-1"}})
        state = MigrationState(
            **plan.route(), started_at=(datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat(),
            source_documents=plan.documents,
        )
        self.save_state(state)
        return state

    def _target_index_spec(self, state: MigrationState) -> IndexSpec:
        spec = self.source.index_spec_of(state.target_index)
        if spec is None:
            raise MigrationError(f"Target index {state.target_index!r} lost its _meta.")
        return spec

    def _copy(self, state: MigrationState) -> None:
        spec = self._target_index_spec(state)
        for page in self._scan(state.source_index, after=state.checkpoint):
            self._write(state.target_index, page, spec)
            state.copied += len(page)
            state.checkpoint = page[-1]["paper_id"]
            self.save_state(state)
            self.on_progress("copy", state.copied, state.source_documents)

    def _catch_up(self, state: MigrationState) -> None:
        """Copy papers written since the start and mirror deletions, until a pass finds nothing."""
        spec = self._target_index_spec(state)
        for _ in range(10):
            self.client.indices.refresh(index=state.source_index)
            changed = 0
            query = {"range": {"indexed_at": {"gte": state.started_at}}}
            for page in self._scan(state.source_index, query=query, after=None):
                fresh = self._changed_in_source(state.target_index, page)
                if fresh:
                    self._write(state.target_index, fresh, spec)
                    changed += len(fresh)
            changed += self._mirror_deletions(state)
            state.caught_up += changed
            self.save_state(state)
            self.on_progress("catch-up", state.caught_up, None)
            if not changed:
                return
        logger.warning("writes kept arriving during catch-up; continuing after 10 passes")

    def _changed_in_source(self, target: str, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The source documents of `page` that the target lacks or holds with other content."""
        response = self.client.mget(index=target, body={"ids": [d["paper_id"] for d in page]}, _source_includes=["content_hash"])
        stored = {d["_id"]: d["_source"].get("content_hash") for d in response["docs"] if d.get("found")}
        return [d for d in page if stored.get(d["paper_id"]) != d.get("content_hash")]

    def _mirror_deletions(self, state: MigrationState) -> int:
        extra = [doc_id for doc_id, where in self._compare_ids(state) if where == "target only"]
        if extra:
            helpers.bulk(self.client, ({"_op_type": "delete", "_index": state.target_index, "_id": i} for i in extra))
            state.deleted += len(extra)
        return len(extra)

    def _scan(self, index: str, after: str | None, query: dict[str, Any] | None = None,
              fields: list[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of `_source` sorted by paper_id, read from a point-in-time, resumable by `after`."""
        pit = self.client.create_pit(index=index, params={"keep_alive": "5m"})["pit_id"]
        try:
            while True:
                body: dict[str, Any] = {
                    "size": self.page_size,
                    "query": query or {"match_all": {}},
                    "sort": [{"paper_id": "asc"}],
                    "pit": {"id": pit, "keep_alive": "5m"},
                    "_source": fields or SOURCE_FIELDS + ["content_hash"],
                }
                if after is not None:
                    body["search_after"] = [after]
                hits = self.client.search(body=body)["hits"]["hits"]
                if not hits:
                    return
                after = hits[-1]["sort"][0]
                yield [hit["_source"] for hit in hits]
        finally:
            try:
                self.client.delete_pit(body={"pit_id": [pit]})
            except (OSConnectionError, TransportError):
                pass

    def _write(self, index: str, sources: list[dict[str, Any]], spec: IndexSpec) -> None:
        papers = [paper_from_source(source) for source in sources]
        docs = self.target.embed_papers(papers, spec)
        actions = ({"_index": index, "_id": p.doc_id(), "_source": d} for p, d in zip(papers, docs))
        ok, errors = helpers.bulk(self.client, actions, max_retries=5, initial_backoff=1, raise_on_error=False,
                                  chunk_size=self.page_size)
        if errors:
            raise MigrationError(f"{len(errors)} papers could not be written to {index}: {str(errors[0])[:300]}")

    # ---- verification and the swap ------------------------------------------------------

    def _compare_ids(self, state: MigrationState) -> Iterator[tuple[str, str]]:
        """(id, "source only" | "target only") for ids not in both, by a sorted merge: flat memory."""
        def ids(index: str) -> Iterator[str]:
            for page in self._scan(index, after=None, fields=["paper_id"]):
                for source in page:
                    yield source["paper_id"]

        self.client.indices.refresh(index=state.target_index)
        left, right = ids(state.source_index), ids(state.target_index)
        a, b = next(left, None), next(right, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a < b):
                yield a, "source only"
                a = next(left, None)
            elif a is None or b < a:
                yield b, "target only"
                b = next(right, None)
            else:
                a, b = next(left, None), next(right, None)

    def verify(self, state: MigrationState) -> VerificationReport:
        """Counts, ids, vector dimension and norm, canary queries: all must pass before the swap."""
        self.client.indices.put_settings(index=state.target_index, body={"index": {"refresh_interval": "1s"}})
        self.client.indices.refresh(index=state.target_index)
        self.client.indices.refresh(index=state.source_index)
        source_counts = count_papers_and_chunks(self.client, state.source_index)
        target_counts = count_papers_and_chunks(self.client, state.target_index)
        spec = self._target_index_spec(state)
        problems: list[str] = []
        if source_counts[0] != target_counts[0]:
            problems.append(f"document count differs: source {source_counts[0]}, target {target_counts[0]}")
        missing = [(doc_id, where) for doc_id, where in self._compare_ids(state)]
        if missing:
            sample = ", ".join(f"{i} ({w})" for i, w in missing[:5])
            problems.append(f"{len(missing)} ids not in both indices, e.g. {sample}")
        expected_chunks = self._expected_chunks(state.source_index, spec)
        if target_counts[1] != expected_chunks:
            problems.append(f"chunk count differs: expected {expected_chunks}, target has {target_counts[1]}")
        checked, vector_problems = self._check_vectors(state.target_index, spec)
        problems += vector_problems
        canaries_ok, canary_problems = self._canaries(state)
        problems += canary_problems
        return VerificationReport(
            ok=not problems, problems=problems, source_documents=source_counts[0], target_documents=target_counts[0],
            source_chunks=source_counts[1], target_chunks=target_counts[1], expected_chunks=expected_chunks,
            vectors_checked=checked, canaries_ok=canaries_ok,
        )

    def _expected_chunks(self, source_index: str, spec: IndexSpec) -> int:
        total = 0
        for page in self._scan(source_index, after=None, fields=["title", "abstract", "content"]):
            total += sum(len(self.target.chunk_texts(paper_from_source(s), spec)) for s in page)
        return total

    def _check_vectors(self, index: str, spec: IndexSpec, sample: int = 200) -> tuple[int, list[str]]:
        body = {"size": sample, "query": {"function_score": {"random_score": {"seed": 7, "field": "_seq_no"}}},
                "_source": ["embedding", "chunks.embedding"]}
        problems, checked = [], 0
        for hit in self.client.search(index=index, body=body)["hits"]["hits"]:
            vectors = [hit["_source"].get("embedding")] + [c.get("embedding") for c in hit["_source"].get("chunks", [])]
            for vector in vectors:
                checked += 1
                if vector is None or len(vector) != spec.dimension:
                    problems.append(f"paper {hit['_id']}: a vector has {len(vector or [])} dimensions, expected {spec.dimension}")
                    break
                if spec.normalized and abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                    problems.append(f"paper {hit['_id']}: a vector is not unit length")
                    break
        return checked, problems[:5]

    def _canaries(self, state: MigrationState) -> tuple[int, list[str]]:
        """A few titles from the source, searched by kNN in the target: each must return results."""
        body = {"size": CANARY_QUERIES, "query": {"function_score": {"random_score": {"seed": 11, "field": "_seq_no"}}},
                "_source": ["title", "abstract"]}
        hits = self.client.search(index=state.source_index, body=body)["hits"]["hits"]
        ok, problems = 0, []
        for hit in hits:
            text = hit["_source"].get("title") or hit["_source"].get("abstract", "")[:200]
            if not text.strip():
                continue
            vector = self.target.embed_query(text)
            found = self.client.search(index=state.target_index, body={"size": 10, "_source": False,
                                                                        "query": knn_query(vector, 10, target="paper")})
            ids = [h["_id"] for h in found["hits"]["hits"]]
            if ids:
                ok += 1
            else:
                problems.append(f"canary query {text[:60]!r} returned nothing")
        return ok, problems

    def _swap(self, state: MigrationState) -> None:
        self.client.indices.update_aliases(body={"actions": [
            {"remove": {"index": state.source_index, "alias": self.alias, "must_exist": True}},
            {"add": {"index": state.target_index, "alias": self.alias}},
        ]})
        state.status = "swapped"
        state.message = f"alias {self.alias} -> {state.target_index}"
        self.save_state(state)
        self.on_progress("swap", 1, 1)


def paper_from_source(source: dict[str, Any]) -> Paper:
    """A Paper rebuilt from an indexed document's `_source` (vectors and bookkeeping dropped)."""
    return Paper(
        id=source.get("paper_id"), title=source.get("title") or "", abstract=source.get("abstract") or "",
        content=source.get("content") or "", authors=source.get("authors") or [], categories=source.get("categories") or [],
        year=source.get("year"), published=source.get("published"), source=source.get("source"), url=source.get("url"),
        origin=f"paper {source.get('paper_id')}",
    )


def rollback(manager: OpenSearchManager) -> MigrationState:
    """Point the alias back at the index it had before the last migration."""
    state = load_state(manager.client, manager.alias)
    if state is None:
        raise MigrationError(f"No migration of {manager.alias!r} is recorded; nothing to roll back.")
    current = list(manager.client.indices.get_alias(name=manager.alias)) if manager.client.indices.exists_alias(name=manager.alias) else []
    if not manager.client.indices.exists(index=state.source_index):
        raise MigrationError(f"The previous index {state.source_index!r} was already cleaned up; cannot roll back.")
    actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": manager.alias}} for i in current if i != state.source_index]
    if state.source_index not in current:
        actions.append({"add": {"index": state.source_index, "alias": manager.alias}})
    if actions:
        manager.client.indices.update_aliases(body={"actions": actions})
    state.status = "rolled_back"
    state.message = f"alias {manager.alias} -> {state.source_index}"
    save_state(manager.client, state)
    return state


def cleanup(manager: OpenSearchManager) -> list[str]:
    """Delete the index the alias no longer uses after a finished or abandoned migration."""
    state = load_state(manager.client, manager.alias)
    if state is None:
        raise MigrationError(f"No migration of {manager.alias!r} is recorded; nothing to clean up.")
    current = set(manager.client.indices.get_alias(name=manager.alias))
    unused = [i for i in (state.source_index, state.target_index) if i not in current and manager.client.indices.exists(index=i)]
    if state.status in ("copying", "verifying") and state.target_index in unused:
        raise MMRagError(f"The migration to {state.target_index} is still in progress; resume or roll it back first.")
    for index in unused:
        manager.client.indices.delete(index=index)
    state.status = "cleaned"
    state.message = f"deleted {', '.join(unused) or 'nothing'}"
    save_state(manager.client, state)
    return unused
