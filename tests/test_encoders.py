"""Task-aware encoding: encode_document for papers and chunks, encode_query for queries, prompts recorded in _meta."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from multi_modal_rag import OpenSearchManager, Paper
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.models import model_path
from multi_modal_rag.store import spec_of


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory) -> str:
    """MiniLM with e5-style prompts, as a model folder any --model accepts."""
    folder = tmp_path_factory.mktemp("models") / "minilm-prompted"
    shutil.copytree(model_path("minilm"), folder)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    config_path.write_text(json.dumps(config))
    return str(folder)


def test_prompts_reach_the_model_and_the_spec(prompted_model):
    encoder = Encoder(prompted_model)
    assert (encoder.document_prompt, encoder.query_prompt) == ("document", "query")
    spec = encoder.spec()
    assert (spec.document_prompt, spec.query_prompt) == ("document", "query")
    plain = encoder.model.encode(["query: coral bleaching", "passage: coral bleaching"], normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode_queries(["coral bleaching"])[0], plain[0], atol=1e-5)
    np.testing.assert_allclose(encoder.encode_documents(["coral bleaching"])[0], plain[1], atol=1e-5)
    assert float(plain[0] @ plain[1]) < 0.999  # the prompts really change the vectors


def test_a_model_without_prompts_records_none():
    spec = Encoder("minilm").spec()
    assert (spec.document_prompt, spec.query_prompt) == (None, None)


def test_the_index_records_the_prompts_and_search_uses_the_query_prompt(prompted_model, settings, client, index_name):
    manager = OpenSearchManager(alias=index_name, model=prompted_model, settings=settings)
    papers = [Paper(id="coral", title="Ocean warming and coral reef bleaching",
                    abstract="Marine heatwaves drive mass coral bleaching events across tropical reefs."),
              Paper(id="malaria", title="Artemisinin resistance in malaria parasites",
                    abstract="Mutations in the kelch13 gene of Plasmodium falciparum confer resistance.")]
    assert manager.index_all(papers).created == 2
    spec = spec_of(client, f"{index_name}-v1")
    assert (spec.document_prompt, spec.query_prompt) == ("document", "query")
    reader = OpenSearchManager(alias=index_name, settings=settings)  # takes the model from the index
    assert reader.search("why do reefs bleach", mode="knn", size=1)[0].id == "coral"
    expected = Encoder(prompted_model).model.encode(["query: why do reefs bleach"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(reader.embed_query("why do reefs bleach"), expected, atol=1e-5)
