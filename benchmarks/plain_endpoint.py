"""The peer of `mmrag serve` in bench_serve.py: what a team writes in an afternoon.

One FastAPI route that, per request, embeds the query with `SentenceTransformer.encode` and sends the
same hybrid search to OpenSearch: no batching, no cache, a plain (sync) route FastAPI runs on its
thread pool. Run by bench_serve.py as `uvicorn plain_endpoint:app`, configured by BENCH_ALIAS,
BENCH_MODEL_PATH, BENCH_PIPELINE and OPENSEARCH_URL.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from opensearchpy import OpenSearch
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

from multi_modal_rag.search.queries import search_body

model = SentenceTransformer(os.environ["BENCH_MODEL_PATH"], device="cpu")
client = OpenSearch(os.environ.get("OPENSEARCH_URL", "http://localhost:9200"), pool_maxsize=64)
app = FastAPI()


class Query(BaseModel):
    query: str
    size: int = 10


@app.post("/search")
def search(body: Query) -> dict:
    vector = model.encode(body.query, normalize_embeddings=True)
    response = client.search(index=os.environ["BENCH_ALIAS"], body=search_body("hybrid", body.query, vector, body.size),
                             params={"search_pipeline": os.environ["BENCH_PIPELINE"]})
    return {"hits": [{"id": h["_id"], "score": h["_score"], "title": h["_source"].get("title")} for h in response["hits"]["hits"]]}
