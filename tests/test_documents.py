"""Readers, content hashes and chunking (no I/O beyond temp files)."""

import json

import pytest

from multi_modal_rag.documents import STORED_FIELDS, Paper, RecordError, count_records, iter_unique, read_papers, word_windows
from multi_modal_rag.errors import InputError


def _write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_bad_records_are_reported_with_file_and_line_and_the_rest_is_read(tmp_path):
    path = _write_lines(
        tmp_path / "papers.jsonl",
        [
            json.dumps({"id": "a", "title": "Good paper", "abstract": "Text."}).encode(),
            b'{"id": "b", "title": "broken',
            json.dumps({"id": "c"}).encode(),
            json.dumps({"id": "d", "title": "  ", "abstract": "\t\n"}).encode(),
            b'{"id": "e", "title": "bad \xff\xfe bytes"}',
            json.dumps(["not", "an", "object"]).encode(),
            json.dumps({"id": "f", "title": "Another good one", "year": "2021"}).encode(),
        ],
    )
    items = list(read_papers(path))
    papers = [i for i in items if isinstance(i, Paper)]
    errors = {e.origin: e.reason for e in items if isinstance(e, RecordError)}
    assert [p.id for p in papers] == ["a", "f"]
    assert papers[1].year == 2021
    assert errors[f"{path}:2"].startswith("malformed JSON")
    assert errors[f"{path}:3"] == "record has no title and no text"
    assert errors[f"{path}:4"] == "title and text are empty or whitespace"
    assert errors[f"{path}:5"].startswith("invalid UTF-8")
    assert errors[f"{path}:6"].startswith("expected a JSON object")


def test_beir_corpus_folder_maps_text_to_abstract(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "7", "title": "T", "text": "Body words.", "metadata": {"url": "u"}}) + "\n")
    [paper] = list(read_papers(tmp_path))
    assert (paper.id, paper.title, paper.abstract, paper.url) == ("7", "T", "Body words.", "u")


def test_folder_of_txt_and_json(tmp_path):
    (tmp_path / "one.txt").write_text("A title\nsome content here")
    (tmp_path / "two.json").write_text(json.dumps({"title": "Json paper", "abstract": "abc", "authors": "Ann, Bob"}))
    (tmp_path / "bad.json").write_text("{nope")
    items = {getattr(i, "id", None) or i.origin: i for i in read_papers(tmp_path)}
    assert items["one"].title == "A title" and items["one"].content == "some content here"
    assert items["two"].authors == ["Ann", "Bob"]
    assert isinstance(items[f"{tmp_path / 'bad.json'}:1"], RecordError)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_papers(tmp_path / "missing.jsonl")


def test_word_windows_cover_every_word_with_overlap():
    words = [f"w{i}" for i in range(1000)]
    windows = word_windows(" ".join(words), size=180, overlap=30)
    seen = [w for _, text in windows for w in text.split()]
    assert set(seen) == set(words)
    assert windows[1][0] == 150
    assert windows[0][1].split()[-30:] == windows[1][1].split()[:30]
    assert windows[-1][1].split()[-1] == "w999"


def test_word_windows_short_and_empty_text():
    assert word_windows("three short words", 180, 30) == [(0, "three short words")]
    assert word_windows("   ", 180, 30) == []
    with pytest.raises(ValueError):
        word_windows("x", 10, 10)


def test_ids_are_stable_and_duplicates_are_reported():
    a = Paper(title="Same", abstract="text", origin="f:1")
    b = Paper(title="Same", abstract="text", origin="f:2")
    assert a.doc_id() == b.doc_id() and len(a.doc_id()) == 32
    assert Paper(title="Other", abstract="text").doc_id() != a.doc_id()
    out = list(iter_unique([a, b, Paper(id="x", title="t", origin="f:3")]))
    assert isinstance(out[1], RecordError) and "already read at f:1" in out[1].reason
    assert [type(o).__name__ for o in out] == ["Paper", "RecordError", "Paper"]


def test_count_records_agrees_with_read_papers_on_every_input_kind(tmp_path):
    folder = tmp_path / "papers"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Title A\nbody")
    (folder / "b.json").write_text(json.dumps({"title": "B", "abstract": "x"}))
    (folder / "sub" / "c.jsonl").write_text("\n".join(json.dumps({"id": f"c{i}", "title": f"C{i}"}) for i in range(5)) + "\n\n")
    (folder / "notes.md").write_text("not a paper")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": str(i), "title": "t", "text": "x"}) for i in range(7)))
    for path in (folder, beir, beir / "corpus.jsonl", folder / "sub" / "c.jsonl"):
        assert count_records(path) == len(list(read_papers(path))), path
    assert count_records(tmp_path / "missing") is None


def test_a_paper_survives_the_round_trip_through_an_index_document():
    paper = Paper(id="p1", title="T", abstract="A", content="C", authors=["X Y"], categories=["cs.IR"], year=2020,
                  published="2020-05", source="arxiv", url="https://example.org/p1", origin="file.jsonl:3")
    source = paper.to_source()
    assert set(source) == {"paper_id", "content_hash", *STORED_FIELDS}
    back = Paper.from_source(source | {"embedding": [0.1], "model": "m", "chunks": []})
    assert back.content_hash() == paper.content_hash() == source["content_hash"] and back.doc_id() == "p1"


# ---- records that must never abort a run (issue 12) ------------------------------------------


def test_a_lone_surrogate_is_replaced_and_the_paper_hashes_and_serializes(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [b'{"id": "s", "title": "bad \\ud800 char", "abstract": "ok \\ud83d\\ude00"}'])
    [paper] = list(read_papers(path))
    assert paper.title == "bad \ufffd char" and paper.abstract == "ok \U0001F600"
    assert len(paper.content_hash()) == 64
    json.dumps(paper.to_source(), ensure_ascii=False).encode("utf-8")
    # a library caller's Paper with a surrogate still hashes
    assert Paper(id="x", title="a \ud800").content_hash()


def test_deeply_nested_json_is_a_record_error_and_the_next_line_is_read(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    path = _write_lines(tmp_path / "p.jsonl", [deep, json.dumps({"id": "next", "title": "T"}).encode()])
    items = list(read_papers(path))
    assert isinstance(items[0], RecordError) and items[0].origin == f"{path}:1" and "nested too deeply" in items[0].reason
    assert items[1].id == "next"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "deep.json").write_bytes(deep)
    [error] = list(read_papers(tmp_path / "folder"))
    assert "nested too deeply" in error.reason


def test_json_records_in_a_folder_keep_their_beir_ids(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"_id": "beir-1", "title": "One"}))
    (tmp_path / "many.json").write_text(json.dumps([{"_id": "beir-2", "title": "Two"}, {"paper_id": "p3", "title": "Three"},
                                                    {"title": "No id"}]))
    papers = [p for p in read_papers(tmp_path) if isinstance(p, Paper)]
    assert sorted(p.id or "hash" for p in papers) == ["beir-1", "beir-2", "hash", "p3"]


def test_unusable_secondary_fields_are_left_out_with_a_warning_and_the_paper_kept(tmp_path, caplog):
    record = {"id": "m", "title": "T", "source": {"name": "arxiv"}, "url": ["u1", "u2"], "published": "Spring 2020",
              "authors": [{"name": "Ann"}], "categories": "cs.IR, cs.CL"}
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps(record).encode()])
    with caplog.at_level("WARNING"):
        [paper] = list(read_papers(path))
    assert isinstance(paper, Paper)
    assert (paper.source, paper.url, paper.published, paper.year, paper.authors) == (None, None, None, 2020, [])
    assert paper.categories == ["cs.IR", "cs.CL"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("source", "url", "published", "authors"):
        assert f"'{name}'" in warned
    assert f"{path}:1 (id m)" in warned


def test_published_dates_the_index_accepts_are_kept():
    from multi_modal_rag.documents import paper_from_record

    for value, year in (("2021", 2021), ("2021-03", 2021), ("2021-03-04", 2021), ("2021-03-04T10:00:00Z", 2021)):
        paper = paper_from_record({"title": "T", "published": value}, "x")
        assert (paper.published, paper.year) == (value, year)
    for bad in ("2021-13", "20210304", "2021-02-30", "2021-03-04 10:00"):
        assert paper_from_record({"title": "T", "published": bad}, "x").published is None
    assert paper_from_record({"title": "T", "year": "1999", "published": "2021"}, "x").year == 1999


def test_a_non_text_title_or_abstract_fails_that_record_only(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "d", "title": {"en": "English title"}}).encode(),
        json.dumps({"id": "l", "title": "T", "abstract": ["a", "b"]}).encode(),
        json.dumps({"id": "n", "title": 1984}).encode(),
    ])
    items = list(read_papers(path))
    assert isinstance(items[0], RecordError) and items[0].reason == "field 'title' is an object, expected text"
    assert items[0].doc_id == "d" and items[0].origin == f"{path}:1"
    assert isinstance(items[1], RecordError) and "'abstract' is a list" in items[1].reason
    assert items[2].title == "1984"


def test_equal_file_names_in_different_subfolders_get_different_ids(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.txt").write_text(f"Title {folder}\nbody")
    (tmp_path / "top.txt").write_text("Top\nbody")
    ids = sorted(p.id for p in read_papers(tmp_path))
    assert ids == ["a/x", "b/x", "top"]


def test_a_single_txt_or_json_file_is_read_as_one_record(tmp_path):
    (tmp_path / "note.txt").write_text("A title\nthe body")
    [paper] = list(read_papers(tmp_path / "note.txt"))
    assert (paper.id, paper.title) == ("note", "A title")
    assert count_records(tmp_path / "note.txt") == 1
