"""Both registered models load for real, offline, and embed sensibly; devices and precisions."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from multi_modal_rag.errors import InputError, ModelNotAvailableError
from multi_modal_rag.models import (
    canonical_name,
    check_runnable,
    embedding_dimension,
    load_embedder,
    model_path,
    resolve_device,
)

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]


@pytest.mark.parametrize(("name", "dimension"), [("minilm", 384), ("mpnet", 768)])
def test_registered_model_embeds_meaningfully(name, dimension):
    model = load_embedder(name)
    assert embedding_dimension(model) == dimension
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    assert vectors.shape == (3, dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    food, bread, stocks = vectors
    assert food @ bread > food @ stocks + 0.3


def test_any_other_name_or_path_goes_to_sentence_transformers(tmp_path):
    folder = model_path("minilm")
    assert model_path(folder) == folder  # a path is used as is
    assert embedding_dimension(load_embedder(folder)) == 384
    assert canonical_name("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ModelNotAvailableError, match="could not be loaded"):
        load_embedder(str(tmp_path / "no-such-model"))


def test_unfetched_mpnet_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="mmrag models fetch mpnet"):
        model_path("mpnet")


# ---- device and precision ---------------------------------------------------------------

BEIR_MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"


def _beir_texts(n: int = 50) -> list[str]:
    with (BEIR_MINI / "corpus.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in itertools.islice(handle, n)]
    return [f"{r['title']}. {r['text']}" for r in records]


def test_device_auto_resolves_to_the_cpu_here_and_int8_always_to_the_cpu():
    assert not torch.cuda.is_available()  # this machine; the GPU branches are exercised on GPU machines
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_device("auto", "int8") == "cpu"
    assert resolve_device("cpu", "bf16") == "cpu"


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_gpu_that_is_not_here_is_refused_naming_the_option(device):
    with pytest.raises(ModelNotAvailableError, match=f"--device {device}: .*available here.*--device cpu"):
        load_embedder("minilm", device=device)


def test_combinations_the_hardware_cannot_run_are_refused():
    for device in ("cuda", "mps"):
        with pytest.raises(ModelNotAvailableError, match=f"--precision int8 runs on the CPU only .*not on {device}"):
            check_runnable(device, "int8")
    for device in ("cuda", "mps", "cpu"):  # fp16 and bf16 run everywhere (slowly on most CPUs: a warning at load)
        check_runnable(device, "fp16")
        check_runnable(device, "bf16")
    with pytest.raises(InputError, match="--precision 'fp8'"):
        load_embedder("minilm", precision="fp8")
    with pytest.raises(InputError, match="--device 'tpu'"):
        load_embedder("minilm", device="tpu")


def test_the_cache_key_separates_precisions_and_shares_auto_with_its_device():
    fp32, int8 = load_embedder("minilm"), load_embedder("minilm", precision="int8")
    assert fp32 is not int8
    assert load_embedder("minilm", "cpu", "fp32") is fp32
    assert load_embedder("minilm", "auto", "int8") is load_embedder("minilm", "cpu", "int8") is int8


def test_int8_is_really_quantized_per_channel_and_close_to_fp32():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    int8 = load_embedder("minilm", precision="int8")
    quantized = [m for m in int8.modules() if isinstance(m, DynamicLinear)]
    assert len(quantized) == 6 * 6 + 1  # 6 layers x (query, key, value, attention output, intermediate, output), pooler
    assert not [m for m in int8.modules() if type(m) is torch.nn.Linear]
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)
    assert all(type(m) is torch.nn.Linear for m in load_embedder("minilm").modules() if "Linear" in type(m).__name__)

    texts = _beir_texts(50)
    assert len(texts) == 50
    fp32_vectors = load_embedder("minilm").encode_document(texts, normalize_embeddings=True)
    int8_vectors = int8.encode_document(texts, normalize_embeddings=True)
    cosines = (fp32_vectors * int8_vectors).sum(axis=1)
    assert cosines.mean() >= 0.97, cosines.mean()
    assert cosines.mean() < 0.9999  # really another model, not the fp32 one again
