"""`--reduce-dim N`: a PCA projection of a model's vectors to N dimensions, fitted on a sample of the corpus.

Documents and queries go through the same map, x -> normalize((x - mean) @ components.T), so an index of N
dimensions ranks like the model's own space, restricted to the N directions the corpus varies most in. The
fit is scikit-learn's PCA on chunk embeddings of a seeded sample of the corpus's chunks. A projection is
identified by a hash of its numbers (`id`), recorded in the index `_meta` (`IndexSpec.projection`); the numbers
live in the `mmrag-projections` index (`store.projections`), so every later process embeds the same way. The fit on papers is
`encoders.fit_on_papers`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import InputError, MMRagError

logger = logging.getLogger(__name__)

SAMPLE_CHUNKS = 2000  # chunk texts a projection is fitted on, at most (`encoders.fit_on_papers`)
SAMPLE_PAPERS = 2000  # papers those chunks are drawn from
SEED = 0


@dataclass(frozen=True, eq=False)
class Projection:
    """A fitted PCA map from the model's `input_dim` to `output_dim` dimensions (float32)."""

    mean: np.ndarray  # (input_dim,)
    components: np.ndarray  # (output_dim, input_dim), rows orthonormal
    model: str  # the encoder it was fitted for (`Encoder.identity`: model@precision)
    fitted_on: int = 0  # how many vectors
    explained_variance: float = 0.0  # share of the sample's variance the N directions keep
    id: str = field(init=False)

    def __post_init__(self) -> None:
        mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        components = np.ascontiguousarray(self.components, dtype=np.float32)
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise MMRagError(f"a projection needs mean (d,) and components (n, d); got {mean.shape} and {components.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(components).all()):
            raise MMRagError("a projection holds non-finite numbers")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", components)
        digest = hashlib.sha256(mean.astype("<f4").tobytes() + components.astype("<f4").tobytes()).hexdigest()
        object.__setattr__(self, "id", f"pca{components.shape[0]}-{digest[:16]}")

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, vectors: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """(count, input_dim) -> (count, output_dim), unit length when `normalize`."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            raise MMRagError(f"projection {self.id} takes vectors of {self.input_dim} dimensions, got shape {vectors.shape}")
        projected = (vectors - self.mean) @ self.components.T
        if normalize:
            norms = np.linalg.norm(projected, axis=1, keepdims=True)
            projected = projected / np.maximum(norms, np.finfo(np.float32).tiny)
        return projected.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "fitted_on": self.fitted_on, "explained_variance": self.explained_variance,
                "mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Projection":
        """The projection `to_dict` wrote; refused if its numbers no longer hash to its id."""
        projection = cls(np.asarray(data["mean"]), np.asarray(data["components"]), model=data["model"],
                         fitted_on=int(data.get("fitted_on", 0)), explained_variance=float(data.get("explained_variance", 0.0)))
        if data.get("id") not in (None, projection.id):
            raise MMRagError(f"projection {data['id']}: its stored numbers hash to {projection.id}; it was altered")
        return projection


def fit_projection(vectors: np.ndarray, n_components: int, *, model: str, seed: int = SEED) -> Projection:
    """scikit-learn's PCA of `vectors` to `n_components` directions."""
    from sklearn.decomposition import PCA

    vectors = np.asarray(vectors, dtype=np.float32)
    check_reduce_dim(n_components, vectors.shape[1], vectors.shape[0])
    pca = PCA(n_components=n_components, random_state=seed).fit(vectors)
    return Projection(pca.mean_, pca.components_, model=model, fitted_on=int(vectors.shape[0]),
                      explained_variance=round(float(pca.explained_variance_ratio_.sum()), 4))


def check_reduce_dim(n_components: int, model_dim: int, samples: int | None = None) -> None:
    if not isinstance(n_components, int) or n_components < 1 or n_components >= model_dim:
        raise InputError(f"--reduce-dim {n_components!r}: must be a whole number from 1 to {model_dim - 1} "
                         f"(the model has {model_dim} dimensions)")
    if samples is not None and samples < n_components:
        raise InputError(f"--reduce-dim {n_components}: a projection to {n_components} dimensions needs at least that many "
                         f"chunks to fit on; the sample has {samples}")


def sample_texts(texts: Sequence[str], limit: int = SAMPLE_CHUNKS, *, seed: int = SEED) -> list[str]:
    """At most `limit` of `texts`, a seeded random choice, in their order."""
    if len(texts) <= limit:
        return list(texts)
    keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[i] for i in keep]
