"""`mmrag serve` for real: a uvicorn process on a free port, the real node, the real MiniLM, HTTP from outside."""

from __future__ import annotations

import re
import ssl
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from multi_modal_rag import Migrator, OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings, make_client
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.devtools.service import ServiceProcess
from multi_modal_rag.documents import read_papers

KEY = "test-key-0123456789abcdef"


def _papers(sample_path: Path, n: int):
    papers = list(read_papers(sample_path))[:n]
    for i, paper in enumerate(papers):
        paper.year = 2015 + i % 5
    return papers


@pytest.fixture(scope="module")
def served_alias(opensearch_url: str, sample_path: Path) -> Iterator[str]:
    alias = f"serve-{uuid.uuid4().hex[:8]}"
    manager = OpenSearchManager(alias, "minilm", ConnectionSettings(url=opensearch_url))
    manager.index_all(_papers(sample_path, 40))
    yield alias
    make_client(ConnectionSettings(url=opensearch_url)).indices.delete(index=f"{alias}*", expand_wildcards="all",
                                                                       ignore_unavailable=True)


@pytest.fixture(scope="module")
def service(served_alias: str, opensearch_url: str) -> Iterator[ServiceProcess]:
    with ServiceProcess(["--index", served_alias, "--max-papers", "5", "--max-size", "50"],
                        env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": ""}) as running:
        yield running


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60) as client:
        yield client


def test_search_in_every_mode_finds_the_paper_by_its_title(http, sample_path):
    target = _papers(sample_path, 40)[7]
    for mode in ("bm25", "knn", "hybrid", "rrf", "bool"):
        response = http.post("/search", json={"query": target.title, "mode": mode, "size": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["mode"] == mode and body["index"].startswith(body["index"].rsplit("-v", 1)[0])
        assert body["hits"][0]["id"] == target.id, mode
        assert body["hits"][0]["passage"], mode
        if mode in ("bm25", "knn"):
            assert body["hits"][0]["retrievers"] == {mode: {"rank": 1, "score": body["hits"][0]["score"]}}
        assert ("embed" in body["timings_ms"]) == (mode != "bm25")


def test_explain_gives_each_retrievers_rank_and_score(http, sample_path):
    target = _papers(sample_path, 40)[3]
    body = http.post("/search", json={"query": target.title, "size": 3, "explain": True}).json()
    top = body["hits"][0]
    assert top["id"] == target.id
    assert top["retrievers"]["bm25"]["rank"] == 1 and top["retrievers"]["knn"]["rank"] == 1
    assert top["retrievers"]["bm25"]["score"] > 0


def test_filters_and_weights_apply(http, sample_path):
    papers = _papers(sample_path, 40)
    body = http.post("/search", json={"query": "cells", "mode": "bm25", "size": 50,
                                      "filters": {"year_from": 2017, "year_to": 2017}}).json()
    assert body["hits"] and all(hit["year"] == 2017 for hit in body["hits"])
    assert len(body["hits"]) < len(http.post("/search", json={"query": "cells", "mode": "bm25", "size": 50}).json()["hits"])
    only_bm25 = http.post("/search", json={"query": papers[0].title, "weights": {"bm25": 1, "knn": 0}}).json()
    assert only_bm25["hits"][0]["id"] == papers[0].id


def test_papers_are_indexed_and_deleted_through_the_alias_with_per_paper_results(http):
    new_id = f"svc-{uuid.uuid4().hex[:6]}"
    papers = [
        {"id": new_id, "title": "Quasicrystal lattices in rapidly cooled aluminium manganese alloys",
         "abstract": "Electron diffraction shows icosahedral symmetry forbidden for periodic crystals."},
        {"id": f"{new_id}-empty", "title": "  ", "abstract": ""},
        "not an object",
    ]
    response = http.post("/papers", json=papers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["created"], body["failed"]) == (1, 2)
    assert [r["position"] for r in body["results"]] == [0, 1, 2]
    assert body["results"][0]["outcome"] == "created" and body["results"][0]["id"] == new_id
    assert "empty" in body["results"][1]["reason"] and "JSON object" in body["results"][2]["reason"]
    hits = http.post("/search", json={"query": "icosahedral quasicrystal alloys", "size": 1}).json()["hits"]
    assert hits[0]["id"] == new_id
    assert http.delete(f"/papers/{new_id}").status_code == 200
    missing = http.delete(f"/papers/{new_id}")
    assert missing.status_code == 404 and new_id in missing.json()["error"]
    assert all(h["id"] != new_id for h in http.post("/search", json={"query": "icosahedral quasicrystal"}).json()["hits"])


BAD_SEARCHES = [
    ({"query": "x", "mode": "fuzzy"}, 422, "mode"),
    ({"query": "x", "size": 0}, 422, "size"),
    ({"query": "x", "size": 51}, 422, "size"),
    ({"query": "x" * 2001}, 422, "query"),
    ({"query": "   "}, 422, "query"),
    ({"query": "x", "filters": {"colour": "red"}}, 422, "filters.colour"),
    ({"query": "x", "weights": {"bm25": 0, "knn": 0}}, 422, "weights"),
    ({"query": "x", "rerank": True}, 422, "rerank"),
    ({"querry": "x"}, 422, "query"),
    ({"query": "x", "size": "ten"}, 422, "size"),
]


@pytest.mark.parametrize("body,status,field", BAD_SEARCHES, ids=[f for _, _, f in BAD_SEARCHES])
def test_bad_search_requests_get_a_4xx_naming_the_field(http, body, status, field):
    response = http.post("/search", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and field.split(".")[-1] in error["error"]
    assert "Traceback" not in response.text


def test_malformed_json_oversized_bodies_and_too_many_papers_are_refused(http, service):
    malformed = http.post("/search", content=b'{"query": "x",', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    big = http.post("/papers", content=b"[" + b" " * (11 * 1024 * 1024) + b"]", headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit" in big.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
        yield b"["
        for _ in range(12):
            yield b" " * (1024 * 1024)
        yield b"]"

    chunked = http.post("/papers", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    too_many = http.post("/papers", json=[{"title": f"t{i}"} for i in range(6)])
    assert too_many.status_code == 422 and "at most 5" in too_many.json()["error"]
    not_a_list = http.post("/papers", json={"title": "x"})
    assert not_a_list.status_code == 422
    assert http.get("/nowhere").status_code == 404
    assert "Traceback" not in service.log()


def test_concurrent_queries_share_encode_calls_and_get_their_own_vectors(http, sample_path):
    papers = _papers(sample_path, 40)
    queries = [p.title for p in papers[:24]]
    alone = {q: http.post("/search", json={"query": q, "mode": "knn", "size": 3}).json()["hits"] for q in queries}
    before = _metric(http.get("/metrics").text, "mmrag_encode_batch_size_count")
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda q: http.post("/search", json={"query": q + " ", "mode": "knn", "size": 3}), queries))
    assert all(r.status_code == 200 for r in together)
    for query, response in zip(queries, together):
        assert [h["id"] for h in response.json()["hits"]] == [h["id"] for h in alone[query]]
    calls = _metric(http.get("/metrics").text, "mmrag_encode_batch_size_count") - before
    assert calls < len(queries), f"{calls} encode calls for {len(queries)} concurrent queries: nothing was batched"


def test_metrics_count_requests_stages_and_cache_hits(http, sample_path):
    query = _papers(sample_path, 40)[1].title
    for _ in range(2):
        assert http.post("/search", json={"query": query}).status_code == 200
    http.post("/search", json={"query": "x", "size": 0})
    text = http.get("/metrics").text
    assert _metric(text, 'mmrag_requests_total{mode="hybrid",route="/search",status="200"}') >= 2
    assert _metric(text, 'mmrag_requests_total{mode="hybrid",route="/search",status="422"}') >= 1
    assert _metric(text, 'mmrag_query_cache_lookups_total{result="hit"}') >= 1
    for stage in ("embed", "opensearch"):
        assert _metric(text, f'mmrag_search_stage_seconds_count{{stage="{stage}"}}') >= 2
    assert 'mmrag_request_seconds_bucket{le="0.05",route="/search"}' in text


def test_status_healthz_and_readyz(http, served_alias):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["index"] == f"{served_alias}-v1"
    status = http.get("/status").json()
    assert status["alias"] == served_alias and status["documents"] >= 40
    assert status["service"]["query_model"] == "sentence-transformers/all-MiniLM-L6-v2@fp32"
    assert "/search" in http.get("/openapi.json").json()["paths"] and http.get("/docs").status_code == 200


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux /proc): uvicorn's workers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


# ---- API keys -------------------------------------------------------------------------------------------------


def test_with_api_keys_every_route_but_healthz_needs_one(served_alias, opensearch_url, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the app's key\n{KEY}\n")
    with ServiceProcess(["--index", served_alias, "--api-keys-file", str(keys_file)],
                        env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": ""}) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:
        assert http.get("/healthz").status_code == 200
        for method, path in [("POST", "/search"), ("POST", "/papers"), ("DELETE", "/papers/x"), ("GET", "/status"),
                             ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"),
                             ("GET", "/nowhere")]:
            for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": KEY[:-1]},
                            {"Authorization": KEY}):
                response = http.request(method, path, headers=headers, json={"query": "x"} if method == "POST" else None)
                assert response.status_code == 401, (method, path, headers)
                assert KEY not in response.text
        ok = http.post("/search", json={"query": "cells"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["hits"]
        assert http.get("/status", headers={"X-API-Key": KEY}).status_code == 200
        bad = http.post("/search", json={"query": "x", "size": -1}, headers={"X-API-Key": KEY})
        assert bad.status_code == 422 and KEY not in bad.text
    assert KEY not in running.log() and "wrong-key" not in running.log()


def test_keys_shorter_than_16_characters_are_refused_at_startup(served_alias, opensearch_url):
    with pytest.raises(RuntimeError, match="at least 16 characters"):
        with ServiceProcess(["--index", served_alias], env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": "short"}):
            pass


def test_tls_through_uvicorns_options(served_alias, opensearch_url, tmp_path):
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with ServiceProcess(["--index", served_alias, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                        env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": ""}, scheme="https") as running:
        with httpx.Client(base_url=running.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=60) as http:
            assert http.post("/search", json={"query": "cells", "mode": "bm25"}).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain http to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{running.port}/healthz", timeout=5).raise_for_status()


# ---- the node stopped and back; a migration while serving -------------------------------------------------------


@pytest.mark.node
def test_node_stopped_gives_503_with_the_reason_and_the_service_recovers(dedicated_url, sample_path):
    from conftest import DEDICATED_HEAP, DEDICATED_PORT
    from multi_modal_rag import devtools as local_node

    alias = f"serve-{uuid.uuid4().hex[:8]}"
    OpenSearchManager(alias, "minilm", ConnectionSettings(url=dedicated_url)).index_all(_papers(sample_path, 10))
    title = _papers(sample_path, 10)[2].title
    with ServiceProcess(["--index", alias], env={"OPENSEARCH_URL": dedicated_url, "MMRAG_API_KEYS": ""}) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:
        assert http.post("/search", json={"query": title}).status_code == 200
        try:
            assert local_node.stop_node(port=DEDICATED_PORT)
            for path in ("/search", "/status", "/readyz"):
                response = http.post(path, json={"query": title}) if path == "/search" else http.get(path)
                assert response.status_code == 503, (path, response.text)
                assert "connection refused" in response.text and "Traceback" not in response.text
            assert http.get("/healthz").status_code == 200
        finally:
            local_node.start_node(port=DEDICATED_PORT, heap=DEDICATED_HEAP)
        assert http.get("/readyz").status_code == 200
        hits = http.post("/search", json={"query": title}).json()["hits"]
        assert hits[0]["id"] == _papers(sample_path, 10)[2].id
    make_client(ConnectionSettings(url=dedicated_url)).indices.delete(index=f"{alias}*", ignore_unavailable=True)


def test_a_migration_while_serving_switches_to_the_new_model_without_a_failed_search(
        settings, client, index_name, sample_path, tmp_path):
    papers = _papers(sample_path, 30)
    OpenSearchManager(index_name, "minilm", settings).index_all(papers)
    rotated = rotated_copy("minilm", tmp_path / "rotated-minilm")
    failures: list[str] = []
    done = threading.Event()
    searches = 0
    with ServiceProcess(["--index", index_name, "--query-cache", "0"],
                        env={"OPENSEARCH_URL": settings.url, "MMRAG_API_KEYS": ""}) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:

        def search_all_the_time() -> None:
            nonlocal searches
            while not done.is_set():
                paper = papers[searches % len(papers)]
                response = http.post("/search", json={"query": paper.title, "mode": "knn", "size": 3})
                searches += 1
                if response.status_code != 200 or response.json()["hits"][0]["id"] != paper.id:
                    failures.append(f"{paper.id}: {response.status_code} {response.text[:200]}")

        searcher = threading.Thread(target=search_all_the_time)
        searcher.start()
        try:
            Migrator(index_name, rotated, settings=settings).run()
        finally:
            done.set()
            searcher.join()
        status = http.get("/status").json()
        after = http.post("/search", json={"query": papers[5].title, "mode": "knn"}).json()
    assert not failures, failures[:5]
    assert searches > 5
    assert status["index"] == f"{index_name}-v2" and after["index"] == f"{index_name}-v2"
    assert status["service"]["query_model"] == f"{status['model']}@fp32"
    assert status["model"] != "sentence-transformers/all-MiniLM-L6-v2"
    assert after["hits"][0]["id"] == papers[5].id


def test_two_workers_serve_and_add_up_their_metrics(served_alias, opensearch_url, sample_path, tmp_path):
    title = _papers(sample_path, 40)[9].title
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEY)
    with ServiceProcess(["--index", served_alias, "--workers", "2", "--api-keys-file", str(keys_file)],
                        env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": ""}) as running, \
            httpx.Client(base_url=running.url, timeout=60, headers={"X-API-Key": KEY}) as http:
        workers = _children(running.process.pid)
        assert workers and all(KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes() for pid in workers)
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: http.post("/search", json={"query": title}), range(12)))
        assert all(r.status_code == 200 and r.json()["hits"][0]["id"] == _papers(sample_path, 40)[9].id for r in responses)
        assert _metric(http.get("/metrics").text, 'mmrag_requests_total{mode="hybrid",route="/search",status="200"}') == 12
        assert httpx.get(f"{running.url}/status", headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
    assert len(set(re.findall(r"Started server process \[(\d+)\]", running.log()))) == 2
