"""The rows `mmrag tune` trains on, from the user's judgments and index: (query, relevant paper, hard negatives)
triples, the held-out split and its small corpus, and the paper texts as the indexer embeds them."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .documents import Paper
from .documents.chunking import title_prefix
from .errors import MMRagError
from .evaluation import Qrels
from .search.queries import bm25_query, clean_query

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

TEXT_FIELDS = ["title", "abstract", "content"]
MSEARCH_BATCH = 64  # queries per msearch request
MGET_BATCH = 500  # papers per mget request


# ---- pure builders ---------------------------------------------------------------------


def split_held_out(query_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids): a seeded sample of `fraction` of the ids held out (at least one if any)."""
    ids = sorted(query_ids)
    if fraction <= 0 or len(ids) < 2:
        return ids, []
    held = set(random.Random(seed).sample(ids, max(1, round(len(ids) * fraction))))
    return [q for q in ids if q not in held], sorted(held)


def build_triples(
    queries: Mapping[str, str],
    qrels: Qrels,
    texts: Mapping[str, str],
    rankings: Mapping[str, Sequence[str]],
    *,
    hard_negatives: int,
    skip_top: int = 0,
    pairs_per_query: int = 0,
    seed: int = 42,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Training columns (anchor, positive, negative_1..N) and counts, from judgments, paper texts and BM25 rankings.

    One row per judged-relevant (query, paper) pair whose paper has a text; its negatives are the query's BM25 hits
    with a text and no relevant judgment, after the first `skip_top` of them. A pair that cannot get N negatives is
    left out (counted in `pairs_short_of_negatives`): the dataset's columns must be full. With `pairs_per_query`,
    a seeded sample of that many of each query's usable pairs is kept (`pairs_capped` counts those left out).
    """
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(hard_negatives)}}
    counts = {"pairs": 0, "missing_docs": 0, "pairs_short_of_negatives": 0, "hard_negatives": 0, "pairs_capped": 0}
    missing: set[str] = set()
    rng = random.Random(seed)
    for query_id in sorted(qrels):
        if query_id not in queries:
            continue
        relevant = {doc for doc, rel in qrels[query_id].items() if rel > 0}
        negatives = [doc for doc in rankings.get(query_id, ()) if doc not in relevant and doc in texts]
        negatives = negatives[skip_top : skip_top + hard_negatives]
        missing |= {doc for doc in relevant if doc not in texts}
        usable = sorted(doc for doc in relevant if doc in texts)
        if len(negatives) < hard_negatives:
            counts["pairs_short_of_negatives"] += len(usable)
            continue
        if 0 < pairs_per_query < len(usable):
            counts["pairs_capped"] += len(usable) - pairs_per_query
            usable = sorted(rng.sample(usable, pairs_per_query))
        for doc in usable:
            columns["anchor"].append(queries[query_id])
            columns["positive"].append(texts[doc])
            for i, negative in enumerate(negatives):
                columns[f"negative_{i + 1}"].append(texts[negative])
            counts["pairs"] += 1
            counts["hard_negatives"] += len(negatives)
    counts["missing_docs"] = len(missing)
    return columns, counts


def held_out_corpus(held_ids: Sequence[str], qrels: Qrels, rankings: Mapping[str, Sequence[str]], candidates: int) -> set[str]:
    """The held-out queries' relevant papers and each one's BM25 top-`candidates`."""
    docs: set[str] = set()
    for query_id in held_ids:
        docs |= {doc for doc, rel in qrels.get(query_id, {}).items() if rel > 0}
        docs |= set(rankings.get(query_id, ())[:candidates])
    return docs


def paper_text(source: Mapping[str, Any]) -> str:
    """What the indexer embeds for a paper's first chunk: the title in front of the body (the title alone without one)."""
    paper = Paper(title=source.get("title") or "", abstract=source.get("abstract") or "", content=source.get("content") or "")
    return title_prefix(paper) + (paper.body or paper.title)


def truncate_texts(texts: Sequence[str], tokenizer: Any, limit: int) -> list[str]:
    """Each text cut after the last token the model reads (`limit` tokens, less its two special tokens)."""
    if not texts:
        return []
    offsets = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = max(1, limit - 2)
    return [text if len(spans) <= keep else text[: spans[keep - 1][1]] for text, spans in zip(texts, offsets)]


# ---- OpenSearch reads ------------------------------------------------------------------


def bm25_rankings(client: "OpenSearch", index: str, queries: Mapping[str, str], size: int) -> dict[str, list[str]]:
    """query id -> ids of its BM25 top `size` in `index`; one msearch per MSEARCH_BATCH queries."""
    rankings: dict[str, list[str]] = {}
    ids = list(queries)
    for start in range(0, len(ids), MSEARCH_BATCH):
        batch = ids[start : start + MSEARCH_BATCH]
        lines: list[dict[str, Any]] = []
        for query_id in batch:
            lines += [{"index": index}, {"size": size, "query": bm25_query(clean_query(queries[query_id])), "_source": False}]
        for query_id, response in zip(batch, client.msearch(body=lines)["responses"]):
            if "error" in response:
                raise MMRagError(f"BM25 search for query {query_id} failed: {response['error']}")
            rankings[query_id] = [hit["_id"] for hit in response["hits"]["hits"]]
    return rankings


def fetch_texts(client: "OpenSearch", index: str, ids: Sequence[str]) -> dict[str, str]:
    """paper id -> text (see `paper_text`) of the ids found in `index`; one mget per MGET_BATCH ids."""
    texts: dict[str, str] = {}
    ids = sorted(set(ids))
    for start in range(0, len(ids), MGET_BATCH):
        response = client.mget(index=index, body={"ids": ids[start : start + MGET_BATCH]}, params={"_source": ",".join(TEXT_FIELDS)})
        for doc in response["docs"]:
            if doc.get("found"):
                texts[doc["_id"]] = paper_text(doc["_source"])
    return texts
