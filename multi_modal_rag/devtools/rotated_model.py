"""Other models of the same dimension for tests and benchmarks, built offline from an installed one.

`noised_copy` is a deliberately worse model: Gaussian noise added to every weight matrix (scaled to each matrix's
own spread), so its rankings degrade with `noise` (beir_mini kNN NDCG@10: 0.97 for MiniLM, 0.65 at 0.4, 0.02 at
0.8). `rotated_copy` appends a fixed orthogonal rotation (a bias-free `Dense` layer) to a sentence-transformers
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


def noised_copy(base: str, folder: str | Path, *, noise: float = 0.6, seed: int = 7) -> str:
    """Save `base` with seeded noise of `noise` x each weight matrix's standard deviation added to it; returns the path."""
    import copy

    import torch

    from ..models import load_embedder

    folder = Path(folder)
    if (folder / "modules.json").is_file():
        return str(folder)
    generator = torch.Generator().manual_seed(seed)
    noisy = copy.deepcopy(load_embedder(base))  # the loaded model may be shared (cached): never change it
    with torch.no_grad():
        for parameter in noisy.parameters():
            if parameter.dim() == 2:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std() * noise)
    noisy.save(str(folder))
    return str(folder)


def tiny_copy(base: str, folder: str | Path, *, dimension: int = 32, seed: int = 7) -> str:
    """Save a one-layer BERT of `dimension` with random weights and `base`'s tokenizer into `folder`; returns its path.

    It ranks nothing well; it is for measuring what does not depend on the model (a migration's hand-over pause on a
    large index) at a fraction of a real model's encoding time. Its `rotated_copy` is a second model to migrate to.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    from ..models import load_embedder

    folder = Path(folder)
    if (folder / "modules.json").is_file():
        return str(folder)
    source = load_embedder(base)
    tokenizer = source.tokenizer
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=dimension, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=dimension * 2, max_position_embeddings=512)
    staging = folder.parent / f"{folder.name}-bert"
    BertModel(config).save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    transformer = Transformer(str(staging), max_seq_length=source.max_seq_length)
    SentenceTransformer(modules=[transformer, Pooling(dimension, "mean"), Normalize()], device="cpu").save(str(folder))
    return str(folder)
