"""Precision is part of an index's model identity: recorded in `_meta`, checked before writes, followed by queries,
changed only by a migration. Real node, real minilm (fp32 and int8)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from multi_modal_rag import OpenSearchManager, Paper, migration
from multi_modal_rag.cli import run as cli_run
from multi_modal_rag.documents import read_papers
from multi_modal_rag.errors import IndexMismatchError
from multi_modal_rag.models import load_embedder
from multi_modal_rag.store import IndexSpec, spec_of

PAPERS = [
    Paper(id="coral", title="Ocean warming and coral reef bleaching",
          abstract="Marine heatwaves drive mass coral bleaching events across tropical reefs."),
    Paper(id="malaria", title="Artemisinin resistance in malaria parasites",
          abstract="Mutations in the kelch13 gene of Plasmodium falciparum confer resistance."),
]
QUERY = "why do reefs bleach"


def _quantized(manager: OpenSearchManager) -> bool:
    return any(isinstance(m, DynamicLinear) for m in manager.binding.encoder.model.modules())


def test_an_index_recorded_without_a_precision_is_fp32():
    recorded = IndexSpec("sentence-transformers/all-MiniLM-L6-v2", 384).meta()
    del recorded["multi_modal_rag"]["precision"]  # the _meta of an index made before precision was recorded
    old = IndexSpec.from_meta(recorded)
    assert old.precision == "fp32" and old.mismatches(IndexSpec(old.model, 384)) == []
    assert IndexSpec(old.model, 384, precision="int8").mismatches(old) == [
        "precision: index has 'fp32', this run uses 'int8'"]


def test_writing_int8_vectors_into_an_fp32_index_is_refused(settings, index_name, client):
    OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(PAPERS)
    assert spec_of(client, f"{index_name}-v1").precision == "fp32"
    int8 = OpenSearchManager(alias=index_name, model="minilm", precision="int8", settings=settings)
    with pytest.raises(IndexMismatchError, match=(
            r"precision: index has 'fp32', this run uses 'int8'\. Use the index's precision \(--precision fp32.*"
            rf"`mmrag migrate --index {index_name} --to-model minilm --to-precision int8`")):
        int8.index_all([Paper(id="new", title="Another paper", abstract="Written at int8.")])
    assert int8.count() == 2
    # a query at another precision than the index's is refused too, naming the option
    reader = OpenSearchManager(alias=index_name, precision="int8", settings=settings)
    with pytest.raises(IndexMismatchError, match="is fp32, this run asks for int8: use --precision fp32"):
        reader.search(QUERY, mode="knn")


def test_a_model_less_binding_on_an_int8_index_embeds_queries_with_int8(settings, index_name, client):
    writer = OpenSearchManager(alias=index_name, model="minilm", precision="int8", settings=settings)
    assert writer.index_all(PAPERS).created == 2
    assert spec_of(client, f"{index_name}-v1").precision == "int8"
    stored = client.get(index=index_name, id="coral")["_source"]["embedding"]
    int8_model, fp32_model = load_embedder("minilm", precision="int8"), load_embedder("minilm")
    assert writer.binding.encoder.model is int8_model  # the cached int8 model

    reader = OpenSearchManager(alias=index_name, settings=settings)  # no model, no precision: the index's
    assert reader.search(QUERY, mode="knn", size=1)[0].id == "coral"
    assert reader.binding.encoder.precision == "int8" and _quantized(reader)
    vector = reader.embed_query(QUERY)
    np.testing.assert_allclose(vector, int8_model.encode_query([QUERY], normalize_embeddings=True)[0], atol=1e-5)
    assert np.abs(vector - fp32_model.encode_query([QUERY], normalize_embeddings=True)[0]).max() > 1e-3
    assert abs(np.linalg.norm(stored) - 1) < 1e-3

    # a writer given the model but no precision takes the index's too
    follower = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    assert follower.index_all([Paper(id="third", title="Soil carbon", abstract="Tillage and soil carbon.")]).created == 1
    assert follower.binding.precision == "int8"


def test_migrating_minilm_fp32_to_minilm_int8(settings, index_name, client, sample_path, capsys):
    source = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    papers = list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), 12))
    assert source.index_all(papers).created == 12
    reader = OpenSearchManager(alias=index_name, settings=settings)  # follows the index, like the app
    assert reader.search(papers[0].title, mode="knn", size=1)[0].id == papers[0].doc_id()
    assert reader.binding.encoder.precision == "fp32"
    url = ["--url", settings.url]

    assert cli_run(["migrate", "--index", index_name, "--to-model", "minilm", "--to-precision", "int8", "--dry-run",
                    "--json", *url]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["from_precision"], plan["to_precision"], plan["target_index"]) == ("fp32", "int8", f"{index_name}-v2")

    assert cli_run(["migrate", "--index", index_name, "--to-model", "minilm", "--to-precision", "int8", "--json", *url]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["status"] == "swapped" and state["verification"]["ok"] and state["copied"] == 12
    target = spec_of(client, f"{index_name}-v2")
    assert (target.model, target.precision) == (source.spec().model, "int8")
    assert list(client.indices.get_alias(name=index_name)) == [f"{index_name}-v2"]

    hit = reader.search(papers[0].title, mode="knn", size=1)[0]  # the reader follows the swap to int8
    assert hit.id == papers[0].doc_id() and hit.index == f"{index_name}-v2"
    assert reader.binding.encoder.precision == "int8" and _quantized(reader)
    with pytest.raises(IndexMismatchError, match="precision: index has 'int8', this run uses 'fp32'"):
        OpenSearchManager(alias=index_name, model="minilm", precision="fp32", settings=settings).index_all(papers[:1])

    migration.rollback(client, index_name)  # the carried-back writes are embedded at the source's fp32
    assert list(client.indices.get_alias(name=index_name)) == [f"{index_name}-v1"]


def test_the_cli_refuses_a_device_that_is_not_here_in_one_line(settings, index_name, sample_path, capsys):
    code = cli_run(["index", str(sample_path), "--index", index_name, "--device", "cuda", "--url", settings.url])
    err = capsys.readouterr().err
    assert code == 1 and "error: --device cuda: no CUDA GPU is available here" in err and "Traceback" not in err
