"""Task-aware encoding: encode_document for papers and chunks, encode_query for queries, prompts recorded in _meta."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from multi_modal_rag import OpenSearchManager, Paper
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.errors import InputError
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


# ---- device, precision, processes -------------------------------------------------------

TEXTS = ["Ocean warming and coral reef bleaching.", "Artemisinin resistance in malaria parasites.",
         "Marine heatwaves drive mass coral bleaching events across tropical reefs."]


def test_the_precision_is_part_of_the_spec_and_the_device_is_not():
    encoder = Encoder("minilm", precision="int8")
    assert (encoder.device, encoder.precision, encoder.spec().precision) == ("cpu", "int8", "int8")
    assert Encoder("minilm").spec().precision == "fp32"
    assert encoder.identity == "sentence-transformers/all-MiniLM-L6-v2@int8"
    assert "device" not in encoder.spec().meta()["multi_modal_rag"]


def test_bf16_on_the_cpu_runs_and_its_vectors_are_float32_of_unit_length():
    bf16 = Encoder("minilm", precision="bf16")  # allowed on the CPU, with a warning: slow, but runnable
    vectors = bf16.encode_documents(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalized again in float32
    assert ((vectors * Encoder("minilm").encode_documents(TEXTS)).sum(axis=1) > 0.99).all()


def test_processes_are_checked():
    with pytest.raises(InputError, match="--processes 0"):
        Encoder("minilm", processes=0)
    with pytest.raises(InputError, match="--processes with --precision int8 is not supported"):
        Encoder("minilm", precision="int8", processes=2)


def test_pool_devices_cpu_workers_or_cuda_gpus_in_turn(monkeypatch):
    encoder = Encoder("minilm", processes=3)
    assert encoder.pool_devices() == ["cpu", "cpu", "cpu"]
    encoder.device = "cuda"  # the GPU branch, without a GPU: only the device list is computed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert encoder.pool_devices() == ["cuda:0", "cuda:1", "cuda:0"]


def test_two_processes_give_the_same_vectors_as_one(prompted_model):
    texts = TEXTS * 7  # several chunks, so both workers get some
    single = Encoder(prompted_model).encode_documents(texts)
    with Encoder(prompted_model, processes=2) as pooled:
        first = pooled.encode_documents(texts)
        pool = pooled._pool
        assert pool is not None and len(pool["processes"]) == 2
        pids = [p.pid for p in pool["processes"]]
        second = pooled.encode_documents(texts[:2])  # the same pool, started once
        assert pooled._pool is pool
        assert pooled.encode_documents([]).shape == (0, 384)
    assert pooled._pool is None  # stopped on leaving the block: the workers are gone
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    np.testing.assert_allclose(first, single, atol=1e-5)  # the document prompt reaches the workers too
    np.testing.assert_allclose(second, single[:2], atol=1e-5)


def test_token_windows_fit_what_the_model_reads_and_cover_every_token(prompted_model):
    """Title + window + prompt + special tokens never pass max_seq_length; consecutive windows overlap."""
    from multi_modal_rag.documents import chunk_paper_in_tokens

    encoder = Encoder(prompted_model)
    spec = encoder.spec()
    words = "retrieval augmented generation hyphen-ated state-of-the-art Ünïcode 3.14 x " * 120
    papers = [Paper(id=str(i), title="A long title " * (i * 5), abstract=words[: 400 * (i + 1)]) for i in range(4)]
    papers.append(Paper(id="title-only", title="Only a title"))
    chunked = encoder.chunk_many(papers, spec)
    tokenizer, limit = encoder.model.tokenizer, encoder.max_tokens
    for paper, chunks in zip(papers, chunked):
        assert chunks == encoder.chunk(paper, spec)
        for chunk in chunks:
            assert len(tokenizer("passage: " + chunk.embed_text)["input_ids"]) <= limit
        if paper.body:
            body_tokens = len(tokenizer(paper.body, add_special_tokens=False)["input_ids"])
            positions = [c.position for c in chunks]
            assert positions[0] == 0 and positions == sorted(positions)
            sizes = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
            assert all(b < a + s for a, b, s in zip(positions, positions[1:], sizes))  # the next starts inside this one
            assert positions[-1] + sizes[-1] >= body_tokens - 1  # the last reaches the end
    assert chunked[-1][0].embed_text == "Only a title"
    # the batched call gives what one call per paper does
    size = 100
    one = chunk_paper_in_tokens(papers[1], tokenizer, size, 10)
    assert [c.text for c in one] == [c.text for c in chunk_paper_in_tokens(papers[1], tokenizer, size, 10,
                                                                             tokenizer(papers[1].body, add_special_tokens=False,
                                                                                       return_offsets_mapping=True)["offset_mapping"])]


def test_documents_reach_the_model_in_batches_of_like_token_counts(monkeypatch):
    """Texts whose length in characters misleads (few long words against many short ones) are batched by tokens:
    less padding than sentence-transformers' own order, and the same vectors."""
    encoder = Encoder("minilm", batch_size=4)
    texts = [("a " if i % 2 else "internationalization ") * (10 + 7 * i) for i in range(12)]
    calls: list[list[str]] = []
    encode = encoder.model.encode_document

    def spy(batch, **kwargs):
        calls.append(list(batch))
        return encode(batch, **kwargs)

    monkeypatch.setattr(encoder.model, "encode_document", spy)  # the model is shared: undone after the test
    vectors = encoder.encode_documents(texts)
    counts = dict(zip(texts, encoder.token_counts(texts)))
    padded = sum(max(counts[t] for t in call) * len(call) for call in calls)
    by_chars = sorted(texts, key=len, reverse=True)
    padded_by_chars = sum(max(counts[t] for t in by_chars[i:i + 4]) * 4 for i in range(0, 12, 4))
    assert [len(c) for c in calls] == [4, 4, 4] and padded < padded_by_chars
    assert [counts[t] for call in calls for t in call] == sorted(counts.values(), reverse=True)
    np.testing.assert_allclose(vectors, encode(texts, normalize_embeddings=True), atol=1e-5)


def test_token_chunks_carry_their_token_counts():
    encoder = Encoder("minilm")
    papers = [Paper(id=str(i), title="Coral reefs " * (i + 1), abstract="Bleaching follows marine heatwaves. " * (20 * i + 3))
              for i in range(4)] + [Paper(id="title-only", title="Only a title")]
    for paper, chunks in zip(papers, encoder.chunk_many(papers, encoder.spec())):
        for chunk in chunks:
            if paper.body:
                assert abs(chunk.tokens - encoder.token_counts([chunk.embed_text])[0]) <= 2, chunk
            else:
                assert chunk.tokens is None  # counted by encode_documents
