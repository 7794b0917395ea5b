"""The other ways to index the same chunk texts, for bench_indexing.py.

Each `prepare_*` function does the untimed setup (loading the model, building the client) and
returns the callable that is timed: it indexes `workload.texts` (one document per chunk text,
with its paper id as metadata) into the new index `name` and returns once they are searchable.
Every system gets the same model folder, encode batch size and HNSW settings as our indexer
(lucene, innerproduct, same m and ef_construction), so what differs is the pipeline, not the knobs.
LangChain and Haystack come from the `bench` extra: `pip install -e .[bench]`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from opensearchpy import OpenSearch

from multi_modal_rag.connection import ConnectionSettings
from multi_modal_rag.store.template import IndexSpec, knn_method


class PeerUnavailable(RuntimeError):
    """A peer library is not installed; the benchmark reports that system as skipped."""


@dataclass(frozen=True)
class Workload:
    conn: ConnectionSettings
    client: OpenSearch
    model: Any  # the loaded SentenceTransformer our indexer uses
    model_path: str  # the same model as a folder, for the peers to load their own way
    spec: IndexSpec
    batch_size: int
    texts: list[str]
    paper_ids: list[str]


def prepare_seed(w: Workload, name: str) -> Callable[[], None]:
    """The hand-written script this project grew from: encode each text alone, one index request each."""
    def run() -> None:
        w.client.indices.create(index=name, body={
            "settings": {"index": {"knn": True, "number_of_replicas": 0}},
            "mappings": {"properties": {
                "text": {"type": "text"}, "paper_id": {"type": "keyword"},
                "embedding": {"type": "knn_vector", "dimension": w.spec.dimension, "method": knn_method(w.spec)}}},
        })
        for i, (text, paper_id) in enumerate(zip(w.texts, w.paper_ids)):
            vector = w.model.encode(text, normalize_embeddings=True, show_progress_bar=False)
            w.client.index(index=name, id=str(i), body={"text": text, "paper_id": paper_id, "embedding": vector.tolist()})
        w.client.indices.refresh(index=name)
    return run


def prepare_langchain(w: Workload, name: str) -> Callable[[], None]:
    """LangChain: OpenSearchVectorSearch.add_texts with HuggingFaceEmbeddings (langchain-community)."""
    try:
        from langchain_community.embeddings import HuggingFaceEmbeddings
        from langchain_community.vectorstores import OpenSearchVectorSearch
    except ImportError as exc:
        raise PeerUnavailable(f"langchain-community is not installed ({exc})") from exc
    # After the import, which installs its own filters: quiet langchain-community's sunset and deprecation notices.
    warnings.filterwarnings("ignore", message=".*(sunset|deprecated).*")
    embeddings = HuggingFaceEmbeddings(model_name=w.model_path,
                                       encode_kwargs={"batch_size": w.batch_size, "normalize_embeddings": True})
    client_kwargs: dict[str, Any] = {"verify_certs": w.conn.verify_certs, "timeout": w.conn.timeout}
    if w.conn.user:
        client_kwargs["http_auth"] = (w.conn.user, w.conn.password)
    store = OpenSearchVectorSearch(opensearch_url=w.conn.url, index_name=name, embedding_function=embeddings,
                                   engine=w.spec.engine, **client_kwargs)

    def run() -> None:
        store.add_texts(w.texts, metadatas=[{"paper_id": p} for p in w.paper_ids], bulk_size=len(w.texts),
                        space_type=w.spec.space_type, m=w.spec.m, ef_construction=w.spec.ef_construction)
    return run


def prepare_haystack(w: Workload, name: str) -> Callable[[], None]:
    """Haystack: SentenceTransformersDocumentEmbedder, then OpenSearchDocumentStore.write_documents."""
    try:
        from haystack import Document
        from haystack.document_stores.types import DuplicatePolicy
        from haystack_integrations.components.embedders.sentence_transformers import SentenceTransformersDocumentEmbedder
        from haystack_integrations.document_stores.opensearch import OpenSearchDocumentStore
    except ImportError as exc:
        raise PeerUnavailable(f"opensearch-haystack or sentence-transformers-haystack is not installed ({exc})") from exc
    embedder = SentenceTransformersDocumentEmbedder(model=w.model_path, batch_size=w.batch_size, progress_bar=False,
                                                    normalize_embeddings=True, local_files_only=True)
    embedder.warm_up()
    store = OpenSearchDocumentStore(
        hosts=w.conn.url, index=name, embedding_dim=w.spec.dimension, method=knn_method(w.spec),
        http_auth=(w.conn.user, w.conn.password) if w.conn.user else None,
        use_ssl=w.conn.url.startswith("https"), verify_certs=w.conn.verify_certs, timeout=int(w.conn.timeout),
        settings={"index.knn": True, "number_of_replicas": 0})

    def run() -> None:
        documents = [Document(content=t, meta={"paper_id": p}) for t, p in zip(w.texts, w.paper_ids)]
        store.write_documents(embedder.run(documents=documents)["documents"], policy=DuplicatePolicy.OVERWRITE)
    return run
