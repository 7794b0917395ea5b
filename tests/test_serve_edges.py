"""`mmrag serve` under odd and hostile input (issue 22): each request that once got a 5xx, and the schema's truth.

A real service on a free port, the real node, the real MiniLM; the fixtures are test_serve.py's.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings, make_client
from multi_modal_rag.devtools.service import ServiceProcess, free_port
from multi_modal_rag.errors import OpenSearchRequestError
from multi_modal_rag.search import HybridSettings
from multi_modal_rag.serve.config import CONFIG_VARIABLE, ServeConfig
from multi_modal_rag.serve.guards import key_digest
from multi_modal_rag.serve.responses import public_message
from test_serve import KEY, _papers, http, served_alias, service  # noqa: F401 (fixtures)

MODES = ("bm25", "knn", "hybrid", "rrf", "bool")


def _refused(response: httpx.Response, field: str, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _post_raw(http: httpx.Client, path: str, text: str) -> httpx.Response:
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("filters,field", [
    ({"year_from": 576460752303423488}, "filters.year_from"),
    ({"year_to": 3000000000}, "filters.year_to"),
    ({"year_from": 0}, "filters.year_from"),
    ({"categories": ["x"] * 65537}, "filters.categories"),
    ({"authors": ["x"] * 1025}, "filters.authors"),
    ({"sources": ["s" * 257]}, "filters.sources.0"),
])
def test_out_of_range_years_and_oversized_filter_lists_are_422_naming_the_field(http, filters, field):
    _refused(http.post("/search", json={"query": "cells", "mode": "bm25", "filters": filters}), field)


def test_the_largest_filters_allowed_are_answered(http):
    filters = {"year_from": 1, "year_to": 9999, "categories": [f"c{i}" for i in range(1024)], "authors": ["a" * 256]}
    for mode in MODES:
        assert http.post("/search", json={"query": "cells", "mode": mode, "filters": filters}).status_code == 200, mode


@pytest.mark.parametrize("weights", ['{"bm25": 1e999, "knn": 0}', '{"bm25": NaN, "knn": 0.5}', '{"bm25": 2, "knn": 0}',
                                     '{"bm25": -1e999, "knn": 1}'])
def test_infinite_nan_or_out_of_range_weights_are_422(http, weights):
    _refused(_post_raw(http, "/search", f'{{"query": "cells", "weights": {weights}}}'), "weights.bm25")


def test_weights_both_zero_are_422(http):
    _refused(http.post("/search", json={"query": "cells", "weights": {"bm25": 0, "knn": 0}}), "weights")


def test_long_queries_are_answered_in_every_mode(http, sample_path):
    words = " ".join(f"q{i}" for i in range(342))  # 342 distinct words, under 2,000 characters
    han = "".join(chr(0x4E00 + 7 * i) for i in range(400))  # 400 distinct CJK characters
    emoji = "".join(chr(0x1F300 + i) for i in range(500))  # each emoji is a term of its own
    target = _papers(sample_path, 40)[4]
    pasted = (target.title + " " + words)[:2000]
    for query in (words, han, emoji, pasted):
        for mode in MODES:
            response = http.post("/search", json={"query": query, "mode": mode, "explain": True})
            assert response.status_code == 200, (mode, query[:40], response.text[:300])
    assert http.post("/search", json={"query": pasted, "mode": "bm25"}).json()["hits"][0]["id"] == target.id


def test_a_lone_surrogate_is_cleaned_as_the_readers_do(http):
    for mode in MODES:
        response = _post_raw(http, "/search", f'{{"query": "\\ud800 cancer", "mode": "{mode}", "explain": true}}')
        assert response.status_code == 200, (mode, response.text)
        assert response.json()["query"] == "\ufffd cancer"
    filtered = _post_raw(http, "/search", '{"query": "cells", "filters": {"authors": ["\\udfff"]}}')
    assert filtered.status_code == 200 and filtered.json()["hits"] == []


def test_delete_ids_must_be_non_empty_without_control_characters(http):
    paper_id = f"edge-{uuid.uuid4().hex[:6]}"
    created = http.post("/papers", json=[{"id": paper_id, "title": "Tidal locking of exoplanets around red dwarfs"}])
    assert created.json()["created"] == 1
    for path in ("/papers/", "/papers/%0A", f"/papers/{paper_id}%0A", "/papers/a%00b", "/papers/..%2Fx"):
        _refused(http.delete(path), "paper_id")
    long_id = http.delete("/papers/" + "\u00e9" * 300)  # 600 bytes: no paper can have it
    assert long_id.status_code == 404
    assert http.delete(f"/papers/{paper_id}").status_code == 200  # the newline did not delete it


def test_booleans_and_numbers_are_strict(http):
    _refused(http.post("/search", json={"query": "cells", "passages": 0}), "passages")
    _refused(http.post("/search", json={"query": "cells", "explain": "yes"}), "explain")
    _refused(http.post("/search", json={"query": "cells", "size": "10"}), "size")
    _refused(http.post("/search", json={"query": "cells", "filters": {"year_from": "2015"}}), "filters.year_from")
    _refused(http.post("/papers?refresh=yes", json=[{"title": "x"}]), "refresh")
    _refused(http.post("/papers", json=[]), "body")


def test_a_405_says_which_methods_are_allowed(http):
    for method, path, allowed in [("GET", "/search", "POST"), ("GET", "/papers/x", "DELETE"), ("POST", "/status", "GET")]:
        response = http.request(method, path)
        assert response.status_code == 405 and response.headers["allow"] == allowed, (method, path)
        assert response.json()["request_id"] == response.headers["x-request-id"]


def test_one_oversized_paper_fails_alone_before_the_model(http):
    small, big = f"edge-{uuid.uuid4().hex[:6]}", f"edge-{uuid.uuid4().hex[:6]}"
    body = http.post("/papers", json=[{"id": big, "title": "Big", "content": "word " * 40_001},
                                      {"id": small, "title": "Spin glasses and replica symmetry breaking"}]).json()
    assert [r["outcome"] for r in body["results"]] == ["failed", "created"]
    assert "over the limit of 200000" in body["results"][0]["reason"] and body["results"][0]["id"] == big
    assert http.delete(f"/papers/{small}").status_code == 200


def test_other_weights_use_a_request_scoped_pipeline_with_the_same_ranking(http, served_alias, opensearch_url, sample_path):
    client = make_client(ConnectionSettings(url=opensearch_url))
    before = set(client.search_pipeline.get())  # noqa: the 2.19 client reads every pipeline
    query = _papers(sample_path, 40)[2].title
    served = {}
    for bm25 in (0.11, 0.22, 0.33, 0.44, 0.55):
        response = http.post("/search", json={"query": query, "weights": {"bm25": bm25, "knn": 1 - bm25}, "size": 5})
        assert response.status_code == 200
        served[bm25] = [(h["id"], round(h["score"], 5)) for h in response.json()["hits"]]
    assert set(client.search_pipeline.get()) == before  # cluster state did not grow
    named = OpenSearchManager(served_alias, None, ConnectionSettings(url=opensearch_url),
                              hybrid=HybridSettings(bm25_weight=0.33, knn_weight=0.67)).searcher
    hits = named.search(query, mode="hybrid", size=5, passages=0)  # its own settings: a named pipeline
    assert [(h.id, round(h.score, 5)) for h in hits] == served[0.33]


def test_explain_after_a_swap_embeds_the_query_again(served_alias, opensearch_url, sample_path):
    searcher = OpenSearchManager(served_alias, None, ConnectionSettings(url=opensearch_url)).searcher
    target = _papers(sample_path, 40)[6]
    hits = searcher.search(target.title, size=3, passages=0)
    stale = [0.1] * 768  # a vector of the model before a dimension-changing swap
    scores = searcher.retriever_scores(target.title, stale, [h.id for h in hits], vector_model="old-model@fp32")
    assert scores[target.id]["knn"]["rank"] == 1
    unknown = searcher.retriever_scores(target.title, stale, [h.id for h in hits])  # the node's refusal tells
    assert unknown[target.id]["knn"]["rank"] == 1


def test_workers_get_key_digests_not_keys(monkeypatch):
    config = ServeConfig(api_keys=(KEY,))
    raw = config.to_env()
    assert KEY not in raw and key_digest(KEY) in raw
    monkeypatch.setenv(CONFIG_VARIABLE, raw)
    assert ServeConfig.from_env().key_digests() == (key_digest(KEY),)


def test_error_bodies_carry_a_request_id_and_no_node_address(served_alias):
    dead = f"http://127.0.0.1:{free_port()}"
    with ServiceProcess(["--index", served_alias], env={"OPENSEARCH_URL": dead, "MMRAG_API_KEYS": ""}) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:
        for response in (http.post("/search", json={"query": "cells"}), http.get("/status"), http.get("/readyz")):
            assert response.status_code == 503, response.text
            assert dead.split("//")[1] not in response.text and "connection refused" in response.text
        body = http.post("/search", json={"query": "cells"}).json()
        assert body["request_id"] in running.log() and dead.split("//")[1] in running.log()
    assert public_message(OpenSearchRequestError(f"OpenSearch at {dead} refused: query_shard_exception"), 502, "a") \
        == "OpenSearch refused the request; the service log has its reasons under the request id"


def test_the_openapi_schema_says_what_runs(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    search = spec["paths"]["/search"]["post"]
    for code in ("400", "404", "413", "422", "502", "503"):
        assert search["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    request = schemas["SearchRequest"]["properties"]
    assert request["size"]["maximum"] == 50 and request["query"]["maxLength"] == 2000 and request["query"]["pattern"]
    assert request["passages"]["type"] == "boolean" and request["rerank"]["const"] is False
    assert schemas["Filters"]["properties"]["categories"]["maxItems"] == 1024
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    papers = spec["paths"]["/papers"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert (papers["minItems"], papers["maxItems"]) == (1, 5)
    assert "securitySchemes" not in spec["components"]  # this service runs without keys


def test_with_keys_the_schema_has_both_security_schemes(served_alias, opensearch_url):
    with ServiceProcess(["--index", served_alias], env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": KEY}) as running, \
            httpx.Client(base_url=running.url, timeout=60, headers={"X-API-Key": KEY}) as http:
        spec = http.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"] == {
            "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer KEY`"},
            "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: KEY`"}}
        for path, methods in spec["paths"].items():
            for method, operation in methods.items():
                expected = [] if path == "/healthz" else [{"HTTPBearer": []}, {"APIKeyHeader": []}]
                assert operation.get("security", []) == expected, (method, path)
                assert ("401" in operation["responses"]) == (path != "/healthz")
        denied = httpx.post(f"{running.url}/search", json={"query": "x"})
        assert denied.status_code == 401 and json.loads(denied.text)["request_id"] == denied.headers["x-request-id"]
