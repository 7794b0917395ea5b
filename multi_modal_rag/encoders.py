"""Embedding with a sentence-transformers model, the way its authors intend.

Papers and chunks go through `encode_document` and queries through `encode_query`, so models that
were trained with prompts (e5, bge, nomic: "passage: ", "query: ") get them; the prompt names are
recorded in the index `_meta` with the model. `embed_papers` turns papers into index documents:
chunk, embed every chunk in one call, paper vector = normalized mean of its chunks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .documents import Chunk, Paper, chunk_paper, chunk_paper_in_tokens, chunking_for
from .documents.chunking import title_prefix
from .errors import IndexMismatchError, InputError, MMRagError
from .models import (
    Device,
    Precision,
    build_embedder,
    canonical_name,
    embedding_dimension,
    load_embedder,
    max_tokens,
    resolve_device,
)
from .projection import SAMPLE_CHUNKS, SEED, Projection, check_reduce_dim, fit_projection, sample_texts
from .store.template import IndexSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the names encode_document looks for, in its order


class Encoder:
    """One embedding model: its identity (name, dimension, prompts, precision) and its two encode calls.

    `device` is where the model runs (`auto`: cuda, else mps, else cpu; see `models.resolve_device`) and is
    no part of the identity; `precision` is (fp32, fp16, bf16, int8; see `models.check_runnable`).
    `processes` > 1 embeds documents with sentence-transformers' multi-process pool: one worker per
    process, on the CPU or spread over the CUDA GPUs; started on the first `encode_documents`, stopped
    by `close()` (or leaving a `with` block). Queries are always embedded in this process.
    `projection` (`--reduce-dim`), when set, maps documents and queries alike to its dimensions; it is part
    of the identity.
    """

    def __init__(
        self,
        name: str,
        *,
        batch_size: int = 32,
        device: Device = "auto",
        precision: Precision = "fp32",
        processes: int = 1,
    ):
        self.name = name
        self.batch_size = batch_size
        self.precision = precision
        self.device = resolve_device(device, precision)  # the resolved device: cpu, cuda or mps
        self.processes = processes
        self._check_processes()
        self.model: SentenceTransformer = load_embedder(name, self.device, precision)
        self._pool: dict[str, Any] | None = None
        self.projection: Projection | None = None

    def _check_processes(self) -> None:
        """int8 with a pool is refused: the pool pickles the model into each worker, and torch 2.13 cannot
        rebuild dynamically quantized weights there ("cannot call qscheme on UnknownQuantizer"). int8 is the
        CPU choice, where one process already uses every core through PyTorch's threads."""
        if not isinstance(self.processes, int) or self.processes < 1:
            raise InputError(f"--processes {self.processes!r}: must be a whole number, 1 or more")
        if self.processes > 1 and self.precision == "int8":
            raise InputError("--processes with --precision int8 is not supported: quantized weights cannot be sent to "
                             "the pool's worker processes; use one process (it uses every core), or fp32.")
        if self.processes > 1 and self.device == "mps":
            raise InputError("--processes with --device mps is not supported: there is one MPS device; use one process.")

    def pool_devices(self) -> list[str]:
        """The pool's target devices: `processes` CPU workers, or CUDA GPUs taken in turn (cuda:0, cuda:1, cuda:0, ...)."""
        if self.device == "cuda":
            import torch

            count = max(1, torch.cuda.device_count())
            return [f"cuda:{i % count}" for i in range(self.processes)]
        return ["cpu"] * self.processes

    def start_pool(self) -> dict[str, Any]:
        """Start the multi-process pool (once); `encode_documents` uses it from then on until `close()`.

        On the CPU the pool shares this process's (cached) model; for GPUs it gets its own copy, loaded on
        the CPU, since starting a pool moves the model to the CPU and each worker moves it to its GPU.
        """
        if self._pool is None:
            model = self.model if self.device == "cpu" else build_embedder(self.name, "cpu", self.precision)
            logger.info("starting %d encoding processes on %s", self.processes, ", ".join(self.pool_devices()))
            self._pool = model.start_multi_process_pool(self.pool_devices())
        return self._pool

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        pool, self._pool = self._pool, None
        if pool is not None:
            self.model.stop_multi_process_pool(pool)

    def __enter__(self) -> "Encoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def identity(self) -> str:
        """What query vectors must match: the model, its precision and the projection (`device` is not part of it)."""
        return self.model_identity + (f"/{self.projection.id}" if self.projection else "")

    @property
    def model_identity(self) -> str:
        """The model and its precision: what a projection is fitted for."""
        return f"{self.canonical_name}@{self.precision}"

    @property
    def canonical_name(self) -> str:
        return canonical_name(self.name)

    @property
    def dimension(self) -> int:
        """The dimension of the vectors this encoder returns: the projection's, else the model's."""
        return self.projection.output_dim if self.projection else self.model_dimension

    @property
    def model_dimension(self) -> int:
        return embedding_dimension(self.model)

    def use_projection(self, projection: Projection | None) -> None:
        """Project every vector from now on with `projection` (None: the model's own vectors)."""
        if projection is not None and (projection.model != self.model_identity or projection.input_dim != self.model_dimension):
            raise IndexMismatchError(f"projection {projection.id} was fitted for {projection.model} "
                                     f"({projection.input_dim} dims), not {self.model_identity} ({self.model_dimension})")
        self.projection = projection

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
        size, overlap = chunking_for(self.max_tokens, "tokens")
        defaults = {"chunk_words": size, "chunk_overlap": overlap, "chunk_unit": "tokens",
                    "document_prompt": self.document_prompt, "query_prompt": self.query_prompt,
                    "dimension": self.dimension, "projection": self.projection.id if self.projection else None}
        return IndexSpec(model=self.canonical_name, precision=self.precision, **{**defaults, **overrides})

    def chunk(self, paper: Paper, spec: IndexSpec) -> list[Chunk]:
        """The paper's chunks as `spec` says. Token windows leave room in front for the special tokens, the
        document prompt and the paper's title, so that what the model reads is never cut."""
        return self.chunk_many([paper], spec)[0]

    def chunk_many(self, papers: Sequence[Paper], spec: IndexSpec) -> list[list[Chunk]]:
        """`chunk` for many papers, with one tokenizer call for all titles and one for all bodies (the fast
        tokenizer works through a list on every core: half the time of a call per paper)."""
        if spec.chunk_unit == "words":
            return [chunk_paper(paper, spec.chunk_words, spec.chunk_overlap) for paper in papers]
        if not papers:
            return []
        tokenizer = self.model.tokenizer
        prompt = (self.model.prompts or {}).get(self.document_prompt or "", "")
        prefixes = tokenizer([prompt + title_prefix(p) for p in papers], add_special_tokens=True)["input_ids"]
        bodies = tokenizer([p.body for p in papers], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        chunked = []
        for paper, prefix, offsets in zip(papers, prefixes, bodies):
            reserved = len(prefix) + 1  # +1: the join of title and window may add one
            size = max(16, min(spec.chunk_words, self.max_tokens - reserved))
            chunks = chunk_paper_in_tokens(paper, tokenizer, size, min(spec.chunk_overlap, size // 2), offsets)
            if offsets:  # a paper without body is its title alone, left for encode_documents to count
                chunks = [c._replace(tokens=len(prefix) + min(size, len(offsets) - c.position)) for c in chunks]
            chunked.append(chunks)
        return chunked

    def encode_documents(self, texts: Sequence[str], *, normalize: bool = True, project: bool = True,
                         lengths: Sequence[int | None] | None = None) -> np.ndarray:
        """Document vectors, through the multi-process pool when `processes` > 1; `project=False`: the model's own.

        `lengths`: the texts' token counts when the caller knows them (the token chunker does); else counted here.
        """
        projection = self.projection if project else None
        if not texts:
            return np.zeros((0, projection.output_dim if projection else self.model_dimension), dtype=np.float32)
        if self.processes > 1:
            vectors = self.model.encode_document(
                list(texts), batch_size=self.batch_size, normalize_embeddings=normalize,
                convert_to_numpy=True, show_progress_bar=False, pool=self.start_pool(),
            )
        else:
            vectors = self._encode_in_token_order(list(texts), lengths, normalize)
        return self._checked(vectors, len(texts), normalize, projection)

    def _encode_in_token_order(self, texts: list[str], lengths: Sequence[int | None] | None, normalize: bool) -> np.ndarray:
        """One model call per batch of texts of about the same number of tokens.

        sentence-transformers orders a call's texts by their length in characters before cutting batches, and
        pads each batch to its longest text; ordered by tokens, the batches pad less (200 SciFact papers:
        82,232 tokens through the model against 88,722). The vectors are the same.
        """
        size = self.batch_size
        order = np.argsort(-np.asarray(self._lengths(texts, lengths)), kind="stable") if len(texts) > size else range(len(texts))
        parts = [
            np.asarray(self.model.encode_document([texts[i] for i in order[start:start + size]], batch_size=size,
                                                  normalize_embeddings=normalize, convert_to_numpy=True,
                                                  show_progress_bar=False), dtype=np.float32)
            for start in range(0, len(texts), size)
        ]
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[np.asarray(order)] = np.concatenate(parts)
        return vectors

    def _lengths(self, texts: list[str], known: Sequence[int | None] | None) -> list[int]:
        lengths = list(known) if known is not None else [None] * len(texts)
        missing = [i for i, n in enumerate(lengths) if n is None]
        for i, n in zip(missing, self.token_counts([texts[i] for i in missing])):
            lengths[i] = n
        return lengths

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """How many tokens the model reads of each text (cut at `max_tokens`)."""
        if not texts:
            return []
        ids = self.model.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, return_attention_mask=False,
                                   return_token_type_ids=False)["input_ids"]
        return [len(i) for i in ids]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode_query(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return self._checked(vectors, len(texts), True, self.projection)

    def _checked(self, vectors: np.ndarray, count: int, normalize: bool, projection: Projection | None) -> np.ndarray:
        """float32 vectors of the right shape, projected; fp16/bf16 ones normalized again in float32 (bf16 rounding
        leaves norms up to 0.4% off 1, more than the migration's check allows)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        check_encoded(vectors, count, self.model_dimension)
        if normalize and self.precision in ("fp16", "bf16"):
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            check_encoded(vectors, count, self.model_dimension)
        if projection is not None:
            vectors = projection.apply(vectors, normalize=normalize)
            check_encoded(vectors, count, projection.output_dim)
        return vectors


def check_encoded(vectors: np.ndarray, count: int, dimension: int) -> None:
    """Refuse what a broken model returns before it reaches an index."""
    if vectors.shape != (count, dimension):
        raise MMRagError(f"model returned vectors of shape {vectors.shape}, expected ({count}, {dimension})")
    if not np.isfinite(vectors).all():
        raise MMRagError("model returned non-finite vectors")


def embed_papers(encoder: Encoder, papers: Sequence[Paper], spec: IndexSpec) -> list[dict[str, Any]]:
    """Index documents (`_source`) for papers: stored fields, bookkeeping, the paper vector and the chunks.

    Vectors stay float32 numpy arrays; the client's serializer (`connection.FastJSONSerializer`) writes them.
    """
    if spec.projection != (encoder.projection.id if encoder.projection else None):
        raise IndexMismatchError(f"the index's vectors go through projection {spec.projection}; this encoder uses "
                                 f"{encoder.projection.id if encoder.projection else 'none'} (--reduce-dim)")
    chunked = encoder.chunk_many(papers, spec)
    flat = [c for chunks in chunked for c in chunks]
    vectors = encoder.encode_documents([c.embed_text for c in flat], normalize=spec.normalized, lengths=[c.tokens for c in flat])
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
            "embedding": paper_vector.astype(np.float32),
            "chunks": [
                {"text": chunk.text, "position": chunk.position, "embedding": vector}
                for chunk, vector in zip(chunks, chunk_vectors)
            ],
        })
    return docs


def fit_on_papers(encoder: Encoder, papers: Iterable[Paper], n_components: int, spec: IndexSpec, *,
                  sample: int = SAMPLE_CHUNKS, seed: int = SEED) -> Projection:
    """Chunk `papers` as `spec` says, embed a seeded sample of the chunks with `encoder` (unprojected), fit."""
    papers = list(papers)
    texts = [chunk.embed_text for chunks in encoder.chunk_many(papers, spec) for chunk in chunks]
    check_reduce_dim(n_components, encoder.model_dimension, len(texts))
    texts = sample_texts(texts, sample, seed=seed)
    vectors = encoder.encode_documents(texts, normalize=spec.normalized, project=False)
    projection = fit_projection(vectors, n_components, model=encoder.model_identity, seed=seed)
    logger.info("fitted %s on %d chunks of %d papers: %.1f%% of the variance kept", projection.id, len(texts),
                len(papers), 100 * projection.explained_variance)
    return projection
