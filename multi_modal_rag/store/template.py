"""The papers index: its settings, mapping and `_meta`, built by pure functions from the template.

The template is `index_templates/papers.json` at the top of the repository, shipped inside the
wheel as the package data `multi_modal_rag.index_templates`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from importlib.resources import files
from typing import Any, Literal

from ..documents import ChunkUnit
from ..errors import InputError
from ..models import Precision

Engine = Literal["lucene", "faiss"]
SpaceType = Literal["innerproduct", "cosinesimil", "l2"]
# How the node stores vectors for search: fp32 as given, or sq8: the lucene engine's scalar quantizer (7 bits a
# dimension, quantiles per segment; the raw floats stay on disk beside the quantized ones, for merges and rescoring).
VectorEncoding = Literal["fp32", "sq8"]

TEMPLATE_VERSION = 2  # 2: chunks.text is kept in _source, not analyzed (nothing searches it; the paper fields are)
TEMPLATE_PACKAGE = "multi_modal_rag.index_templates"


@dataclass(frozen=True)
class IndexSpec:
    """What an index was built for; stored in its mapping `_meta` and checked before every write."""

    model: str
    dimension: int
    normalized: bool = True
    # Vectors are unit length, so inner product ranks exactly like cosine and costs less.
    space_type: SpaceType = "innerproduct"
    engine: Engine = "lucene"
    m: int = 16
    ef_construction: int = 128
    ef_search: int = 100
    # Window size and overlap, counted in `chunk_unit`s: tokens of the model's tokenizer, or words for an
    # index recorded before token windows (its _meta has no chunk_unit).
    chunk_words: int = 180
    chunk_overlap: int = 30
    chunk_unit: ChunkUnit = "words"
    template_version: int = TEMPLATE_VERSION
    # The sentence-transformers prompt names used for documents and queries (None: the model has none).
    document_prompt: str | None = None
    query_prompt: str | None = None
    # The model's precision (fp32, fp16, bf16, int8): part of the index's model identity. Queries are embedded
    # at it; an index recorded before it existed has none, and is fp32.
    precision: Precision = "fp32"
    # Not in `mismatches`: writers and queries send floats either way; the node quantizes.
    vector_encoding: VectorEncoding = "fp32"
    # `--reduce-dim`: the id of the PCA projection every vector goes through (`dimension` is then its output);
    # its numbers are in `store.projections`. None: the model's own vectors.
    projection: str | None = None

    def meta(self) -> dict[str, Any]:
        return {"multi_modal_rag": asdict(self)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> "IndexSpec | None":
        """The spec recorded in an index's `_meta`, or None for an index we did not create."""
        recorded = (meta or {}).get("multi_modal_rag")
        if not isinstance(recorded, dict):
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in recorded.items() if k in known})

    def mismatches(self, other: "IndexSpec") -> list[str]:
        """What differs between the two in a way that makes vectors incompatible.

        Precision is refused like the model, not warned about: int8 vectors are about 0.98 cosine to fp32 ones,
        so a mixed index ranks by which run embedded a paper, and nothing would tell which papers to redo.
        One index, one precision; another precision is another index (`mmrag migrate --to-precision`).
        """
        return [
            f"{name}: index has {getattr(other, name)!r}, this run uses {getattr(self, name)!r}"
            for name in ("model", "dimension", "space_type", "normalized", "precision", "projection")
            if getattr(self, name) != getattr(other, name)
        ]


def load_template(name: str = "papers.json") -> dict[str, Any]:
    """An index template from `index_templates/` (package data)."""
    body = json.loads(files(TEMPLATE_PACKAGE).joinpath(name).read_text(encoding="utf-8"))
    body.pop("_comment", None)
    return body


def knn_method(spec: IndexSpec) -> dict[str, Any]:
    """The HNSW method block of a knn_vector field."""
    parameters: dict[str, Any] = {"m": spec.m, "ef_construction": spec.ef_construction}
    if spec.vector_encoding == "sq8":
        if spec.engine != "lucene":
            raise InputError(f"--vector-encoding sq8 is the lucene engine's scalar quantizer; this index uses {spec.engine}")
        parameters["encoder"] = {"name": "sq"}
    return {"name": "hnsw", "engine": spec.engine, "space_type": spec.space_type, "parameters": parameters}


def build_index_body(spec: IndexSpec, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The create-index body for `spec`: template + vector dimension, HNSW method and `_meta`."""
    body = copy.deepcopy(template if template is not None else load_template())
    properties = body["mappings"]["properties"]
    for vector_field in (properties["embedding"], properties["chunks"]["properties"]["embedding"]):
        vector_field["dimension"] = spec.dimension
        vector_field["method"] = knn_method(spec)
    body["mappings"]["_meta"] = spec.meta()
    if spec.engine != "lucene":
        # faiss/nmslib read ef_search from the index settings; lucene takes it per query.
        body["settings"]["index"]["knn.algo_param.ef_search"] = spec.ef_search
    return body


def versioned_name(alias: str, version: int) -> str:
    """`papers` + 1 -> `papers-v1`."""
    return f"{alias}-v{version}"


def version_of(alias: str, index: str) -> int | None:
    """`papers`, `papers-v3` -> 3; None for a name that is not `{alias}-vN`."""
    prefix = f"{alias}-v"
    suffix = index[len(prefix) :]
    return int(suffix) if index.startswith(prefix) and suffix.isdigit() else None


def next_version(alias: str, existing: list[str]) -> int:
    """The next free version number for indices named `{alias}-vN`."""
    numbers = [v for v in (version_of(alias, name) for name in existing) if v is not None]
    return max(numbers, default=0) + 1


ORPHAN_MARK = "mmrag_orphan"
# Above any priority a user is likely to give, and different for two aliases whose `{alias}-v*` patterns overlap
# (one alias is `{other}-v...`; the node refuses overlapping templates of equal priority): the longer one wins.
GUARD_PRIORITY = 1_000_000_000


def guard_template_name(alias: str) -> str:
    return f"mmrag-guard-{alias}"


def guard_template(alias: str) -> dict[str, Any]:
    """The composable index template that keeps a bulk from bringing back an `{alias}-vN` index the alias left.

    OpenSearch creates a missing index on a write to it. A writer that embedded papers for `papers-v1` while a
    migration swapped to `papers-v2` and `cleanup` deleted `papers-v1` would re-create it (dynamic mapping, outside
    the alias) and be acknowledged there. Under this template such an index is born write-blocked and marked
    (`_meta.mmrag_orphan`): no item is acknowledged, and the writer, refused by the migration's kind of block, waits,
    finds the alias elsewhere and re-sends there (a bulk *delete* never creates an index: it answers
    index_not_found_exception). `store.create_index` sets `blocks.write: false` and the mark false explicitly, so
    the indices this package creates take writes (request settings and `_meta` keys override a template's).

    Not `action.auto_create_index: false`: a cluster-wide setting that belongs to the cluster's operator, and other
    applications on the cluster may rely on auto-creation. Not writing through the alias with `require_alias`: the
    alias may swap between embedding and writing, and vectors of the old model would land in the new index.
    """
    return {
        "index_patterns": [f"{alias}-v*"],
        "priority": GUARD_PRIORITY + len(alias),
        "template": {
            "settings": {"index": {"blocks": {"write": True}, "number_of_shards": 1, "number_of_replicas": 0}},
            "mappings": {"_meta": {ORPHAN_MARK: True}},
        },
        "_meta": {"managed_by": "multi_modal_rag", "alias": alias},
    }
