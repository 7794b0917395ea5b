"""The `mmrag` commands, run in-process against the real node."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path


from cli_output import json_out
from multi_modal_rag.cli import run

# A small BEIR folder cut from SciFact (data/SOURCE.md): 15 test judgments over 14 queries, the 12 documents
# they judge and 40 others. Its qrels end lines in CRLF, like BEIR's.
BEIR_MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"


def _first_lines(path: Path, n: int) -> str:
    with path.open(encoding="utf-8") as handle:
        return "".join(itertools.islice(handle, n))


def test_index_search_status_round_trip(capsys, settings, index_name, tmp_path, sample_path):
    papers = tmp_path / "papers.jsonl"
    papers.write_text(_first_lines(sample_path, 30) + '{"id": "bad", \n')
    url = ["--url", settings.url]
    summary = json_out(capsys, ["index", str(papers), "--index", index_name, "--model", "minilm", "--json", *url])
    assert (summary["created"], summary["failed"]) == (30, 1)
    assert summary["failures"][0]["origin"] == f"{papers}:31"

    again = json_out(capsys, ["index", str(papers), "--index", index_name, "--model", "minilm", "--pending", "--json", *url])
    assert (again["skipped"], again["created"], again["updated"]) == (30, 0, 0)

    first = json.loads(_first_lines(sample_path, 1))
    hits = json_out(capsys, ["search", first["title"], "--index", index_name, "--mode", "hybrid", "--size", "3", "--json", *url])
    assert hits[0]["id"] == first["id"] and hits[0]["passage"]
    hits = json_out(capsys, ["search", first["title"], "--index", index_name, "--mode", "bm25", "--filter", "source=scifact", "--json", *url])
    assert hits[0]["id"] == first["id"]

    status = json_out(capsys, ["status", "--index", index_name, "--json", *url])
    assert (status["index"], status["documents"], status["dimension"]) == (f"{index_name}-v1", 30, 384)

    assert run(["search", first["title"], "--index", index_name, *url]) == 0
    assert first["id"] in capsys.readouterr().out  # the table shows the ids


def test_eval_prints_metrics_per_mode(capsys, settings, index_name):
    assert b"\r\n" in (BEIR_MINI / "qrels" / "test.tsv").read_bytes()  # CRLF like BEIR's own qrels, and read as such
    report = json_out(capsys, ["eval", str(BEIR_MINI), "--index", index_name, "--modes", "bm25,knn,hybrid,rrf,bool", "--json", "--url", settings.url])
    assert set(report) == {"bm25", "knn", "hybrid", "rrf", "bool"}
    for metrics in report.values():
        assert set(metrics) == {"NDCG@10", "MRR@10", "Recall@100"}
        assert metrics["NDCG@10"] > 0.5  # small corpus, judged documents present: retrieval must work
        assert metrics["Recall@100"] > 0.9
    cut = json_out(capsys, ["eval", str(BEIR_MINI), "--index", index_name, "--modes", "bm25", "--k", "1,10", "--json",
                             "--url", settings.url])
    assert set(cut["bm25"]) == {"NDCG@1", "MRR@1", "Recall@1", "NDCG@10", "MRR@10", "Recall@10"}
    assert cut["bm25"]["NDCG@10"] == report["bm25"]["NDCG@10"] and cut["bm25"]["Recall@1"] <= cut["bm25"]["Recall@10"]


def test_errors_are_one_line_without_traceback(settings, index_name, sample_path, tmp_path):
    def mmrag(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "multi_modal_rag", *argv], capture_output=True, text=True, timeout=300)

    dead = mmrag("status", "--index", "papers", "--url", "http://127.0.0.1:1")
    assert dead.returncode == 1 and "Cannot reach OpenSearch at http://127.0.0.1:1" in dead.stderr
    assert "Traceback" not in dead.stderr

    secret = mmrag("status", "--index", "papers", "--url", "http://admin:s3cret-pw@127.0.0.1:1")
    assert "s3cret-pw" not in secret.stderr + secret.stdout

    small = tmp_path / "one.jsonl"
    small.write_text(_first_lines(sample_path, 1))
    assert mmrag("index", str(small), "--index", index_name, "--url", settings.url).returncode == 0
    mismatch = mmrag("index", str(small), "--index", index_name, "--model", "mpnet", "--url", settings.url)
    assert mismatch.returncode == 1 and "dimension: index has 384, this run uses 768" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr

    missing = mmrag("index", str(tmp_path / "nope.jsonl"), "--index", index_name, "--url", settings.url)
    assert missing.returncode == 1 and "no such file" in missing.stderr

    bad_filter = mmrag("search", "x", "--index", index_name, "--filter", "colour=red", "--url", settings.url)
    assert bad_filter.returncode == 1 and "unknown key" in bad_filter.stderr

    empty = mmrag("search", "   ", "--index", index_name, "--url", settings.url)
    assert empty.returncode == 1 and "the query is empty" in empty.stderr


def test_shards_and_replicas_of_a_new_index_and_replicas_changed_in_place(capsys, settings, client, index_name, tmp_path,
                                                                          sample_path):
    papers = tmp_path / "papers.jsonl"
    papers.write_text(_first_lines(sample_path, 6))
    url = ["--url", settings.url]
    base = ["index", str(papers), "--index", index_name, "--model", "minilm", "--json", *url]
    assert json_out(capsys, [*base, "--shards", "3"])["created"] == 6
    index_settings = client.indices.get_settings(index=f"{index_name}-v1")[f"{index_name}-v1"]["settings"]["index"]
    assert (index_settings["number_of_shards"], index_settings["number_of_replicas"]) == ("3", "0")
    hits = json_out(capsys, ["search", json.loads(_first_lines(sample_path, 1))["title"], "--index", index_name, "--json", *url])
    assert hits[0]["id"] == json.loads(_first_lines(sample_path, 1))["id"]  # searches span the shards

    assert json_out(capsys, [*base, "--pending", "--replicas", "1"])["skipped"] == 6  # in place: one node leaves it unassigned
    replicas = client.indices.get_settings(index=f"{index_name}-v1")[f"{index_name}-v1"]["settings"]["index"]["number_of_replicas"]
    assert replicas == "1"
    client.indices.put_settings(index=f"{index_name}-v1", body={"index": {"number_of_replicas": 0}})

    assert run([*base, "--pending", "--shards", "2"]) == 1
    error = capsys.readouterr().err
    assert "3 primary shard(s), not 2" in error and "mmrag migrate" in error and "Traceback" not in error


def test_awkward_records_and_nested_folders_index_on_the_node(capsys, settings, client, index_name, tmp_path):
    """Every record the readers clean reaches the node intact; the ones they refuse are reported, not fatal."""
    folder = tmp_path / "in"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "x.txt").write_text(f"Paper from {sub}\nbody of {sub}")
    (folder / "beir.json").write_text(json.dumps([{"_id": "b-1", "title": "Keyed by _id", "text": "t"}]))
    lines = [
        '{"id": "sur", "title": "lone \\ud800 surrogate", "abstract": "text"}',
        json.dumps({"id": "meta", "title": "Odd metadata", "source": {"n": 1}, "url": ["u"], "published": "Spring 2020"}),
        json.dumps({"id": "dates", "title": "Month date", "published": "2020-05"}),
        json.dumps({"id": "dict-title", "title": {"en": "x"}}),
        "[" * 50_000 + "]" * 50_000,
    ]
    (folder / "papers.jsonl").write_text("\n".join(lines) + "\n")
    summary = json_out(capsys, ["index", str(folder), "--index", index_name, "--json", "--url", settings.url])
    assert (summary["created"], summary["failed"]) == (6, 2), summary
    reasons = {f["origin"]: f["reason"] for f in summary["failures"]}
    assert reasons[f"{folder / 'papers.jsonl'}:4"] == "field 'title' is an object, expected text"
    assert "nested too deeply" in reasons[f"{folder / 'papers.jsonl'}:5"]
    client.indices.refresh(index=index_name)
    docs = {hit["_id"]: hit["_source"] for hit in client.search(index=index_name, body={"size": 20})["hits"]["hits"]}
    assert {docs[i]["paper_id"] for i in docs} == {"a/x", "b/x", "b-1", "sur", "meta", "dates"}
    assert docs["sur"]["title"] == "lone \ufffd surrogate"
    assert (docs["meta"]["year"], docs["meta"].get("published"), docs["meta"].get("source")) == (2020, None, None)
    assert docs["dates"]["published"] == "2020-05"


def test_a_folder_of_pdfs_is_indexed_and_searchable(capsys, settings, index_name):
    pdfs = Path(__file__).resolve().parent.parent / "data" / "pdfs"
    summary = json_out(capsys, ["index", str(pdfs), "--index", index_name, "--json", "--url", settings.url])
    assert (summary["created"], summary["failed"]) == (2, 3), summary
    reasons = sorted(Path(f["origin"]).name + ": " + f["reason"].split(" (")[0] for f in summary["failures"])
    assert reasons[0].startswith("corrupt.pdf: not a readable PDF") and reasons[1].startswith("encrypted.pdf: encrypted PDF")
    assert reasons[2].startswith("scanned.pdf: no text layer")
    for mode in ("bm25", "knn", "hybrid"):
        hits = json_out(capsys, ["search", "closing the vocabulary gap between questions and passages", "--index", index_name,
                                  "--mode", mode, "--size", "2", "--json", "--url", settings.url])
        assert hits[0]["id"] == "twocolumn" and hits[0]["title"] == "Efficient Dense Retrieval for Scientific Literature Workflows"


def test_vector_encoding_sq8_for_a_new_index_and_as_a_migration_target(capsys, settings, client, index_name, tmp_path, sample_path):
    papers = tmp_path / "papers.jsonl"
    papers.write_text(_first_lines(sample_path, 12))
    url = ["--url", settings.url]
    json_out(capsys, ["index", str(papers), "--index", index_name, "--vector-encoding", "sq8", "--json", *url])
    json_out(capsys, ["index", str(papers), "--index", f"{index_name}-plain", "--json", *url])
    first = json.loads(_first_lines(sample_path, 1))

    def encoder_of(alias: str):
        index = next(iter(client.indices.get_alias(name=alias)))
        mapping = client.indices.get_mapping(index=index)[index]["mappings"]
        encoder = mapping["properties"]["chunks"]["properties"]["embedding"]["method"]["parameters"].get("encoder") or {}
        return encoder.get("name"), mapping["_meta"]

    assert encoder_of(index_name)[0] == "sq"
    assert encoder_of(index_name)[1]["multi_modal_rag"]["vector_encoding"] == "sq8"
    state = json_out(capsys, ["migrate", "--index", f"{index_name}-plain", "--to-model", "minilm", "--vector-encoding", "sq8",
                               "--json", *url])
    assert state["status"] == "swapped"
    assert encoder_of(f"{index_name}-plain")[0] == "sq"
    for alias in (index_name, f"{index_name}-plain"):
        hits = json_out(capsys, ["search", first["title"], "--index", alias, "--mode", "knn", "--size", "3", "--json", *url])
        assert hits[0]["id"] == first["id"]
    client.delete(index="mmrag-migrations", id=f"{index_name}-plain", params={"ignore": 404})
