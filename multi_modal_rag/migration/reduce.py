"""`mmrag migrate --reduce-dim N`: the new index's projection, fitted on a sample of the old index's papers.

The sample is drawn from the old index (a seeded random sample of its papers, then of their chunks) and
embedded with the new model, so the projection fits the space the new index is written in. A migration that
keeps the model, its precision and N reuses the old index's projection instead (the vectors are the same).
"""

from __future__ import annotations

import logging

from opensearchpy import OpenSearch

from .. import store
from ..documents import SOURCE_FIELDS, Paper
from ..encoders import Encoder, fit_on_papers
from ..projection import SAMPLE_PAPERS, Projection, check_reduce_dim
from ..store import IndexSpec

logger = logging.getLogger(__name__)


def reduced_dimension(reduce_dim: int | None, source_spec: IndexSpec, encoder: Encoder) -> int | None:
    """The target's --reduce-dim: `None` keeps the source's (N, or none), 0 asks for the model's full dimension."""
    dimension = (source_spec.dimension if source_spec.projection else None) if reduce_dim is None else reduce_dim or None
    if dimension is not None:
        check_reduce_dim(dimension, encoder.model_dimension)
    return dimension


def target_projection(client: OpenSearch, source_index: str, source_spec: IndexSpec, encoder: Encoder,
                      reduce_dim: int | None, chunk_spec: IndexSpec, *, sample: int = SAMPLE_PAPERS) -> Projection | None:
    """The projection the new index is written through (stored), or None for the model's own vectors."""
    dimension = reduced_dimension(reduce_dim, source_spec, encoder)
    if dimension is None:
        return None
    if source_spec.projection and source_spec.dimension == dimension:
        kept = store.load_projection(client, source_spec.projection, index=source_index)
        if kept.model == encoder.model_identity:
            return kept
    body = {"size": min(sample, 10_000), "query": {"function_score": {"random_score": {"seed": 13, "field": "_seq_no"}}},
            "_source": SOURCE_FIELDS}
    hits = client.search(index=source_index, body=body)["hits"]["hits"]
    papers = [Paper.from_source(hit["_source"]) for hit in hits]
    projection = fit_on_papers(encoder, papers, dimension, chunk_spec)
    store.save_projection(client, projection)
    return projection
