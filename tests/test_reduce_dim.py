"""--reduce-dim: the PCA projection's math, and indexes written, searched and migrated through it on the real node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multi_modal_rag.cli import run
from multi_modal_rag.errors import IndexMismatchError, InputError, MMRagError
from multi_modal_rag.projection import Projection, check_reduce_dim, fit_projection, sample_texts
from multi_modal_rag.store.template import IndexSpec

BEIR_MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"


def _subspace_vectors(count: int, dim: int, rank: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal rows
    return (rng.normal(size=(count, rank)) @ basis + rng.normal(size=dim)).astype(np.float32)


def test_a_projection_keeps_what_lies_in_its_directions_and_returns_unit_vectors():
    vectors = _subspace_vectors(200, 24, rank=6)
    projection = fit_projection(vectors, 6, model="m@fp32")
    assert (projection.input_dim, projection.output_dim) == (24, 6)
    assert projection.explained_variance == pytest.approx(1.0, abs=1e-4)
    reduced = projection.apply(vectors, normalize=False)
    back = reduced @ projection.components + projection.mean  # the data lies in 6 directions: nothing is lost
    np.testing.assert_allclose(back, vectors, atol=1e-4)
    centered = vectors - projection.mean
    np.testing.assert_allclose(reduced @ reduced.T, centered @ centered.T, rtol=1e-3, atol=1e-3)
    unit = projection.apply(vectors)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    with pytest.raises(MMRagError, match="24 dimensions"):
        projection.apply(vectors[:, :8])


def test_a_projection_is_stored_and_read_back_under_its_hash():
    projection = fit_projection(_subspace_vectors(100, 16, rank=8), 4, model="m@fp32")
    data = json.loads(json.dumps(projection.to_dict()))  # what the projections index stores
    again = Projection.from_dict(data)
    assert again.id == projection.id and again.id.startswith("pca4-") and again.model == "m@fp32"
    probe = _subspace_vectors(5, 16, rank=8, seed=2)
    np.testing.assert_array_equal(again.apply(probe), projection.apply(probe))
    data["components"][0][0] += 1e-3
    with pytest.raises(MMRagError, match="altered"):
        Projection.from_dict(data)
    other = fit_projection(_subspace_vectors(100, 16, rank=8, seed=3), 4, model="m@fp32")
    assert other.id != projection.id


def test_reduce_dim_refusals_and_the_spec_mismatch():
    with pytest.raises(InputError, match="from 1 to 383"):
        check_reduce_dim(384, 384)
    with pytest.raises(InputError, match="at least that many"):
        fit_projection(_subspace_vectors(10, 16, rank=8), 12, model="m@fp32")
    assert sample_texts(["a", "b", "c"], 5) == ["a", "b", "c"]
    picked = sample_texts([str(i) for i in range(100)], 10)
    assert len(picked) == 10 and picked == sorted(picked, key=int) and picked == sample_texts([str(i) for i in range(100)], 10)
    reduced = IndexSpec(model="m", dimension=32, projection="pca32-abc")
    problems = IndexSpec(model="m", dimension=384).mismatches(reduced)
    assert any(p.startswith("projection") for p in problems) and any(p.startswith("dimension") for p in problems)
    assert any(p.startswith("projection") for p in IndexSpec(model="m", dimension=32, projection="pca32-def").mismatches(reduced))
    assert IndexSpec.from_meta(reduced.meta()) == reduced
    assert IndexSpec.from_meta({"multi_modal_rag": {"model": "m", "dimension": 8}}).projection is None


def _json_out(capsys, argv: list[str]):
    code = run(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _mapping(client, alias: str) -> tuple[str, dict]:
    index = next(iter(client.indices.get_alias(name=alias)))
    return index, client.indices.get_mapping(index=index)[index]["mappings"]


def _first_paper() -> dict:
    with (BEIR_MINI / "corpus.jsonl").open(encoding="utf-8") as handle:
        return json.loads(handle.readline())


def test_an_index_reduced_to_32_dimensions_is_searched_by_a_fresh_process_and_refuses_other_writers(
        capsys, settings, client, index_name, tmp_path):
    from multi_modal_rag import OpenSearchManager, store
    from multi_modal_rag.documents import Paper

    url = ["--url", settings.url]
    _json_out(capsys, ["index", str(BEIR_MINI / "corpus.jsonl"), "--index", index_name, "--reduce-dim", "32", "--json", *url])
    index, mapping = _mapping(client, index_name)
    spec = IndexSpec.from_meta(mapping["_meta"])
    assert spec.dimension == 32 and spec.projection.startswith("pca32-")
    assert mapping["properties"]["chunks"]["properties"]["embedding"]["dimension"] == 32
    assert mapping["properties"]["embedding"]["dimension"] == 32
    stored = client.get(index=index, id=_first_paper()["_id"])["_source"]
    assert len(stored["embedding"]) == 32 and abs(np.linalg.norm(stored["embedding"]) - 1) < 1e-3

    first = _first_paper()
    hits = _json_out(capsys, ["search", first["title"], "--index", index_name, "--mode", "knn", "--size", "3", "--json", *url])
    assert hits[0]["id"] == first["_id"]

    reader = OpenSearchManager(index_name, settings=settings)  # another process: nothing but the alias
    assert reader.embed_query(first["title"]).shape == (32,)
    assert reader.binding.encoder.projection.id == spec.projection
    assert reader.search(first["title"], mode="knn", size=1)[0].id == first["_id"]

    paper = Paper(id="extra-1", title="A new paper", abstract="Written through the stored projection.")
    writer = OpenSearchManager(index_name, "minilm", settings=settings)  # no --reduce-dim: takes the index's projection
    assert writer.index_all([paper]).created == 1
    with pytest.raises(IndexMismatchError, match="reduced to 32 dimensions; this run asks for --reduce-dim 16"):
        OpenSearchManager(index_name, "minilm", settings=settings, reduce_dim=16).index_all([paper])
    from multi_modal_rag.encoders import Encoder, embed_papers

    with pytest.raises(IndexMismatchError, match="projection"):  # an encoder without it never writes into the index
        embed_papers(Encoder("minilm"), [paper], spec)
    with pytest.raises(IndexMismatchError, match="no such document"):
        store.load_projection(client, "pca32-0000000000000000", index=index)
    plain = tmp_path / "one.jsonl"
    plain.write_text(json.dumps({"id": "x", "title": "t", "abstract": "a"}) + "\n")
    assert run(["index", str(plain), "--index", f"{index_name}-small", "--reduce-dim", "400", *url]) == 1
    assert "--reduce-dim 400" in capsys.readouterr().err


def test_a_migration_to_reduce_dim_writes_and_searches_the_new_index_through_its_projection(capsys, settings, client, index_name):
    from multi_modal_rag import OpenSearchManager

    url = ["--url", settings.url]
    _json_out(capsys, ["index", str(BEIR_MINI / "corpus.jsonl"), "--index", index_name, "--json", *url])
    first = _first_paper()
    reader = OpenSearchManager(index_name, settings=settings)
    assert reader.embed_query(first["title"]).shape == (384,)
    plan = _json_out(capsys, ["migrate", "--index", index_name, "--to-model", "minilm", "--reduce-dim", "32", "--dry-run",
                              "--json", *url])
    assert (plan["source_dimension"], plan["target_dimension"]) == (384, 32)
    state = _json_out(capsys, ["migrate", "--index", index_name, "--to-model", "minilm", "--reduce-dim", "32", "--json", *url])
    assert state["status"] == "swapped"
    _, mapping = _mapping(client, index_name)
    spec = IndexSpec.from_meta(mapping["_meta"])
    assert spec.dimension == 32 and spec.projection.startswith("pca32-")
    assert mapping["properties"]["chunks"]["properties"]["embedding"]["dimension"] == 32
    # the reader made before the swap follows the alias to the new index and its projection
    assert reader.search(first["title"], mode="knn", size=1)[0].id == first["_id"]
    assert reader.binding.encoder.projection.id == spec.projection
    hits = _json_out(capsys, ["search", first["title"], "--index", index_name, "--mode", "hybrid", "--size", "3", "--json", *url])
    assert hits[0]["id"] == first["_id"]
