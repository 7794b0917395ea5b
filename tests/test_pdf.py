"""PDF input: real PDFs made by pdflatex and qpdf from known text (data/pdfs/make_pdfs.py), and the cleaning steps."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from multi_modal_rag.documents import Paper, RecordError, count_records, read_papers
from multi_modal_rag.devtools.recall import word_recall
from multi_modal_rag.documents.pdf import cut_references, join_lines, read_pdf, split_abstract, strip_running_lines

PDFS = Path(__file__).resolve().parent.parent / "data" / "pdfs"


def _all_text(paper: Paper) -> str:
    return " ".join((paper.title, paper.abstract, paper.content))


# ---- cleaning steps -------------------------------------------------------------------------------------------


def test_words_hyphenated_at_line_ends_are_joined_and_real_hyphens_kept():
    pages = [["Dense retrieval is effi-", "cient for state-of-the-", "art and long-", "Term work."]]
    assert join_lines(pages) == "Dense retrieval is efficient for state-of-the-art and long- Term work."


def test_running_headers_footers_and_page_numbers_are_dropped():
    words = ["alpha", "beta", "gamma", "delta"]
    pages = [["Dense Retrieval 2026", f"{w} begins here.", f"then {w} goes on.", f"and {w} ends.", str(i)]
             for i, w in enumerate(words, start=1)]
    pages[0].insert(0, "A Title Only On Page One")
    kept = strip_running_lines(pages)
    assert kept[0] == ["A Title Only On Page One", "alpha begins here.", "then alpha goes on.", "and alpha ends."]
    assert kept[3] == ["delta begins here.", "then delta goes on.", "and delta ends."]


def test_the_reference_list_is_cut_only_in_the_second_half():
    text = "References to earlier work appear early. " + "body " * 50 + "References [1] A. Author. Title. 2009."
    assert cut_references(text).endswith("body") and cut_references(text).startswith("References to")


def test_the_abstract_runs_to_the_first_section_heading():
    abstract, rest = split_abstract("A Title Ann Author Abstract Short summary here. 1 Introduction The body.")
    assert abstract == "Short summary here."
    assert rest.startswith("A Title Ann Author") and "1 Introduction The body." in rest


# ---- real PDFs ---------------------------------------------------------------------------------------------------


def test_a_two_column_latex_paper_comes_back_whole():
    paper = read_pdf(PDFS / "twocolumn.pdf", doc_id="p1")
    assert isinstance(paper, Paper), paper
    assert (paper.id, paper.source, paper.title) == ("p1", "pdf", "Efficient Dense Retrieval for Scientific Literature Workflows")
    assert paper.abstract.startswith("Finding the first relevant paper")
    text = _all_text(paper)
    assert word_recall(text, (PDFS / "twocolumn.words").read_text()) >= 0.97
    assert not re.search("[\ufb00-\ufb06\u00ad\x02]", text)  # ligatures expanded, soft hyphens gone
    assert "efficient" in text and "workflow" in text and "difficult" in text
    assert text.count("Dense Retrieval for Scientific Literature") <= 1  # the running header, not once a page
    assert "Probabilistic relevance frameworks" not in text  # the reference list is cut


def test_twenty_pages_come_back_whole():
    import pypdfium2 as pdfium

    with pdfium.PdfDocument(str(PDFS / "long20.pdf")) as document:
        assert len(document) == 20
    paper = read_pdf(PDFS / "long20.pdf")
    assert isinstance(paper, Paper) and paper.id is None
    assert paper.title == "A Long Report on Retrieval Experiments"
    assert word_recall(_all_text(paper), (PDFS / "long20.words").read_text()) >= 0.97


@pytest.mark.parametrize("name, reason", [
    ("encrypted.pdf", "encrypted PDF (needs a password)"),
    ("scanned.pdf", "no text layer"),
    ("corrupt.pdf", "not a readable PDF"),
])
def test_pdfs_without_usable_text_are_per_file_failures(name, reason):
    error = read_pdf(PDFS / name, doc_id="x")
    assert isinstance(error, RecordError) and reason in error.reason, error
    assert (error.origin, error.doc_id) == (str(PDFS / name), "x")


def test_a_folder_of_pdfs_reads_the_good_ones_and_reports_the_rest(tmp_path):
    for name in ("twocolumn.pdf", "long20.pdf", "encrypted.pdf", "scanned.pdf", "corrupt.pdf"):
        shutil.copy(PDFS / name, tmp_path / name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.pdf").write_text("this is a text file named .pdf\n")
    items = list(read_papers(tmp_path))
    assert count_records(tmp_path) == len(items) == 6
    papers = {i.id for i in items if isinstance(i, Paper)}
    errors = {Path(i.origin).name: i.reason for i in items if isinstance(i, RecordError)}
    assert papers == {"twocolumn", "long20"}
    assert set(errors) == {"encrypted.pdf", "scanned.pdf", "corrupt.pdf", "notes.pdf"}
    assert errors["notes.pdf"].startswith("not a readable PDF")
    [single] = list(read_papers(PDFS / "twocolumn.pdf"))
    assert single.id == "twocolumn" and count_records(PDFS / "twocolumn.pdf") == 1
