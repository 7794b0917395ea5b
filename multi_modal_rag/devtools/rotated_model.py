"""A second model of the same dimension for tests and benchmarks, built offline from an installed one.

`rotated_copy` appends a fixed orthogonal rotation (a bias-free `Dense` layer) to a sentence-transformers
model: unit vectors stay unit vectors and every similarity is unchanged, so retrieval quality is the
same, but the vectors differ. A migration to it is a change of model at the same dimension.
"""

from __future__ import annotations

from pathlib import Path


def rotated_copy(base: str, folder: str | Path, *, seed: int = 7) -> str:
    """Save `base` (a model name or path) followed by a seeded orthogonal rotation into `folder`; returns its path."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from ..models import embedding_dimension, load_embedder

    folder = Path(folder)
    if (folder / "modules.json").is_file():
        return str(folder)
    model = load_embedder(base)
    dimension = embedding_dimension(model)
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dimension, dimension)))
    dense = Dense(dimension, dimension, bias=False, activation_function=torch.nn.Identity())
    dense.linear.weight.data = torch.tensor(rotation, dtype=torch.float32)
    SentenceTransformer(modules=[*model, dense], device="cpu").save(str(folder))
    return str(folder)
