"""Embedding with a sentence-transformers model, the way its authors intend.

Papers and chunks go through `encode_document` and queries through `encode_query`, so models that
were trained with prompts (e5, bge, nomic: "passage: ", "query: ") get them; the prompt names are
recorded in the index `_meta` with the model. `embed_papers` turns papers into index documents:
chunk, embed every chunk in one call, paper vector = normalized mean of its chunks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .documents import Paper, chunk_paper, chunking_for
from .errors import MMRagError
from .models import canonical_name, embedding_dimension, load_embedder, max_tokens
from .store.template import IndexSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the names encode_document looks for, in its order


class Encoder:
    """One embedding model: its identity (name, dimension, prompts) and its two encode calls."""

    def __init__(self, name: str, *, batch_size: int = 32):
        self.name = name
        self.batch_size = batch_size
        self.model: SentenceTransformer = load_embedder(name)

    @property
    def canonical_name(self) -> str:
        return canonical_name(self.name)

    @property
    def dimension(self) -> int:
        return embedding_dimension(self.model)

    @property
    def max_tokens(self) -> int:
        return max_tokens(self.model)

    @property
    def document_prompt(self) -> str | None:
        """The name of the non-empty prompt `encode_document` puts before papers and chunks, if any."""
        return self._prompt_used(next((n for n in DOCUMENT_PROMPTS if n in (self.model.prompts or {})), None))

    @property
    def query_prompt(self) -> str | None:
        """The name of the non-empty prompt `encode_query` puts before queries, if any."""
        return self._prompt_used("query" if "query" in (self.model.prompts or {}) else None)

    def _prompt_used(self, name: str | None) -> str | None:
        name = name or self.model.default_prompt_name
        return name if name and (self.model.prompts or {}).get(name) else None

    def spec(self, **overrides: Any) -> IndexSpec:
        """The index spec for this model; chunking sized to what the model reads, unless overridden."""
        words, overlap = chunking_for(self.max_tokens)
        defaults = {"chunk_words": words, "chunk_overlap": overlap,
                    "document_prompt": self.document_prompt, "query_prompt": self.query_prompt}
        return IndexSpec(model=self.canonical_name, dimension=self.dimension, **{**defaults, **overrides})

    def encode_documents(self, texts: Sequence[str], *, normalize: bool = True) -> np.ndarray:
        vectors = self.model.encode_document(
            list(texts), batch_size=self.batch_size, normalize_embeddings=normalize,
            convert_to_numpy=True, show_progress_bar=False,
        )
        check_encoded(vectors, len(texts), self.dimension)
        return vectors

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode_query(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        check_encoded(vectors, len(texts), self.dimension)
        return vectors


def check_encoded(vectors: np.ndarray, count: int, dimension: int) -> None:
    """Refuse what a broken model returns before it reaches an index."""
    if vectors.shape != (count, dimension):
        raise MMRagError(f"model returned vectors of shape {vectors.shape}, expected ({count}, {dimension})")
    if not np.isfinite(vectors).all():
        raise MMRagError("model returned non-finite vectors")


def embed_papers(encoder: Encoder, papers: Sequence[Paper], spec: IndexSpec) -> list[dict[str, Any]]:
    """Index documents (`_source`) for papers: stored fields, bookkeeping, the paper vector and the chunks."""
    chunked = [chunk_paper(p, spec.chunk_words, spec.chunk_overlap) for p in papers]
    vectors = encoder.encode_documents([c.embed_text for chunks in chunked for c in chunks], normalize=spec.normalized)
    now = datetime.now(timezone.utc).isoformat()
    docs, offset = [], 0
    for paper, chunks in zip(papers, chunked):
        chunk_vectors = vectors[offset : offset + len(chunks)]
        offset += len(chunks)
        paper_vector = chunk_vectors.mean(axis=0)
        if spec.normalized:
            paper_vector = paper_vector / np.linalg.norm(paper_vector)
        docs.append({
            **paper.to_source(),
            "model": spec.model,
            "chunk_count": len(chunks),
            "indexed_at": now,
            "embedding": paper_vector.tolist(),
            "chunks": [
                {"text": chunk.text, "position": chunk.position, "embedding": vector.tolist()}
                for chunk, vector in zip(chunks, chunk_vectors)
            ],
        })
    return docs
