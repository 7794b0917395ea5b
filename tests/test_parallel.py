"""Indexing spread over workers (`mmrag index --workers N --executor local|ray`): the same papers and vectors as one
process, each unit idempotent, a unit whose worker died run again."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.documents import Paper, read_papers
from multi_modal_rag.parallel import IndexUnit, index_in_parallel, units_for

PAPERS = 24


@pytest.fixture
def corpus(tmp_path, sample_path) -> Path:
    """24 sample papers, a duplicate id and a bad line, as one JSONL file."""
    lines = list(itertools.islice(sample_path.open(encoding="utf-8"), PAPERS))
    path = tmp_path / "papers.jsonl"
    path.write_text("".join(lines) + lines[3] + "{broken\n", encoding="utf-8")
    return path


def test_units_cover_every_record_once_and_keep_duplicates_together(corpus, settings):
    units = units_for([str(corpus)], 3, alias="x", model="minilm", settings=settings)
    seen = Counter()
    for unit in units:
        items = list(unit.records())
        seen.update(i.doc_id() if isinstance(i, Paper) else f"error:{i.origin}" for i in items)
    everything = Counter(i.doc_id() if isinstance(i, Paper) else f"error:{i.origin}" for i in read_papers(corpus))
    assert seen == everything and sum(seen.values()) == PAPERS + 2


def _stored(client, alias: str) -> dict[str, tuple[str, list[float]]]:
    client.indices.refresh(index=alias)
    hits = client.search(index=alias, body={"size": 100, "_source": ["content_hash", "embedding"]})["hits"]["hits"]
    return {h["_id"]: (h["_source"]["content_hash"], h["_source"]["embedding"]) for h in hits}


def _same_documents(one: dict, other: dict) -> None:
    assert set(one) == set(other) and len(one) == PAPERS
    for doc_id, (digest, vector) in one.items():
        assert other[doc_id][0] == digest
        assert np.allclose(vector, other[doc_id][1], atol=1e-5), doc_id


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_two_workers_write_what_one_process_writes(executor, corpus, settings, client, index_name):
    if executor == "ray":
        pytest.importorskip("ray")
    single = OpenSearchManager(alias=f"{index_name}-single", model="minilm", settings=settings)
    one = single.index_all(read_papers(corpus))
    assert (one.created, one.failed) == (PAPERS, 2)

    manager = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    manager.binding.ensure_index()
    units = units_for([str(corpus)], 2, alias=index_name, model="minilm", settings=settings)
    summary = index_in_parallel(units, executor=executor)
    assert (summary.created, summary.failed) == (PAPERS, 2)
    assert {f.origin for f in summary.failures} == {f"{corpus}:{PAPERS + 1}", f"{corpus}:{PAPERS + 2}"}
    _same_documents(_stored(client, f"{index_name}-single"), _stored(client, index_name))

    again = index_in_parallel(units, executor=executor)  # a unit run twice writes nothing new
    assert (again.created, again.updated, again.skipped) == (0, 0, PAPERS)
    client.indices.delete(index=f"{index_name}-single*", ignore_unavailable=True)


@dataclass(frozen=True)
class DyingUnit(IndexUnit):
    """A unit whose worker dies (as if killed) the first time it runs: a marker file says whether it has."""

    marker: str = ""

    def records(self):
        if self.part == 0 and not os.path.exists(self.marker):
            Path(self.marker).write_text("died once")
            os._exit(9)
        yield from super().records()


def test_a_unit_whose_worker_died_is_run_again_and_nothing_is_lost(corpus, settings, client, index_name, tmp_path):
    OpenSearchManager(alias=index_name, model="minilm", settings=settings).binding.ensure_index()
    units = [DyingUnit(**{**u.__dict__, "marker": str(tmp_path / "died")})
             for u in units_for([str(corpus)], 2, alias=index_name, model="minilm", settings=settings)]
    summary = index_in_parallel(units, executor="local")
    assert (tmp_path / "died").exists()
    assert summary.created + summary.skipped == PAPERS and summary.failed == 2
    stored = _stored(client, index_name)
    expected = {p.doc_id(): p.content_hash() for p in read_papers(corpus) if isinstance(p, Paper)}
    assert {doc_id: digest for doc_id, (digest, _) in stored.items()} == expected


def test_the_cli_spreads_indexing_over_workers(capsys, corpus, settings, index_name):
    from multi_modal_rag.cli import run

    code = run(["index", str(corpus), "--index", index_name, "--workers", "2", "--json", "--url", settings.url])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert (report["created"], report["failed"]) == (PAPERS, 2)
    assert {f["origin"] for f in report["failures"]} == {f"{corpus}:{PAPERS + 1}", f"{corpus}:{PAPERS + 2}"}


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_migration_copied_by_two_workers_matches_one_copied_here(executor, corpus, settings, client, index_name):
    if executor == "ray":
        pytest.importorskip("ray")
    from multi_modal_rag.migration.run import Migrator
    from multi_modal_rag.migration.slices import CopyUnit, copy_slice

    papers = [p for p in read_papers(corpus) if isinstance(p, Paper)]
    one, spread = f"{index_name}-one", index_name
    try:
        for alias in (one, spread):
            assert OpenSearchManager(alias=alias, model="minilm", settings=settings).index_all(papers).created == PAPERS
        Migrator(one, "minilm", settings=settings).run()
        state = Migrator(spread, "minilm", settings=settings, workers=2, executor=executor).run()
        assert (state.status, state.copied) == ("swapped", PAPERS)
        _same_documents(_stored(client, one), _stored(client, spread))
        # a slice run again (a lost worker's, or on --resume) finds everything there and embeds nothing
        unit = CopyUnit(settings, state.source_index, state.target_index, "minilm", "fp32", "cpu", 0, 2)
        assert copy_slice(unit) == 0
    finally:
        client.delete(index="mmrag-migrations", id=one, params={"ignore": 404})
