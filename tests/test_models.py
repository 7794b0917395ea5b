"""Both registered models load for real, offline, and embed sensibly."""

import numpy as np
import pytest

from multi_modal_rag.errors import ModelNotAvailableError
from multi_modal_rag.models import canonical_name, embedding_dimension, load_embedder, model_path

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
