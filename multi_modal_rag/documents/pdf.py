"""Papers from PDF files, with pypdfium2 (Google's PDFium, the engine of Chrome's PDF viewer).

Why PDFium: it is the fastest of the three common choices here (a 20-page LaTeX paper in well under a second,
where pdfminer.six takes several and pypdf about one), it keeps LaTeX's two-column reading order and maps
ligature glyphs back to letters, and its wheels carry the native library for Linux, macOS and Windows
(Apache-2.0/BSD-3-Clause, no system packages). pypdf is pure Python but slower and weaker on layout;
pdfminer.six is MIT but an order of magnitude slower; PyMuPDF is AGPL.

`read_pdf` never raises for a bad file: an encrypted PDF, one without a text layer (a scan) and a corrupt or
truncated file each give a `RecordError` with the reason. The text is cleaned for retrieval: words hyphenated at
line ends joined, ligatures expanded, running headers, footers and page numbers dropped, the reference list cut.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from .paper import Paper, RecordError
from .records import clean_text

logger = logging.getLogger(__name__)

LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
# a word broken at a line end: PDFium itself turns LaTeX's hyphenation into U+FFFE (dropped with the control
# characters); other producers leave a plain or soft hyphen before the line break
_LINE_END_HYPHEN = re.compile(r"(\S*[a-z\u00df-\u00ff])([-\u00ad])\n([a-z\u00df-\u00ff])")
_PAGE_NUMBER = re.compile(r"(page\s+)?\d{1,4}(\s*(/|of)\s*\d{1,4})?", re.IGNORECASE)
_TITLE_JUNK = re.compile(r"^(untitled|microsoft word\b.*|.*\.(dvi|tex|docx?|pdf))$", re.IGNORECASE)
MAX_TITLE = 300


def read_pdf(path: Path, *, doc_id: str | None = None) -> Paper | RecordError:
    """A Paper from the PDF at `path` (source "pdf"); a RecordError saying why when it has no usable text."""
    import pypdfium2 as pdfium

    origin = str(path)
    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            return RecordError(origin, "encrypted PDF (needs a password); skipped", doc_id)
        return RecordError(origin, f"not a readable PDF: {exc}", doc_id)
    try:
        pages, first_page_sizes = _page_texts(document)
        metadata = document.get_metadata_dict(skip_empty=True)
    except pdfium.PdfiumError as exc:
        return RecordError(origin, f"not a readable PDF: {exc}", doc_id)
    finally:
        document.close()
    if not any(page.strip() for page in pages):
        return RecordError(origin, f"no text layer in {len(pages)} page(s) (a scanned PDF?); OCR is not supported", doc_id)
    lines = [_clean_lines(page) for page in pages]
    title = _metadata_title(metadata.get("Title")) or _title_from_sizes(first_page_sizes) or _first_line(lines)
    body = cut_references(join_lines(strip_running_lines(lines)))
    abstract, content = split_abstract(body)
    if title and content.startswith(title):
        content = content[len(title):].strip()
    year = re.match(r"D:(\d{4})", metadata.get("CreationDate", ""))
    return Paper(
        id=doc_id,
        title=clean_text(title)[:MAX_TITLE],
        abstract=clean_text(abstract),
        content=clean_text(content),
        authors=[a.strip() for a in re.split(r",|;|\band\b", metadata.get("Author", "")) if a.strip()],
        year=int(year.group(1)) if year else None,
        source="pdf",
        origin=origin,
    )


def _page_texts(document) -> tuple[list[str], list[tuple[str, float]]]:
    """Each page's text, and page 1's lines with the largest font size on each (for the title)."""
    import pypdfium2.raw as raw

    texts: list[str] = []
    first: list[tuple[str, float]] = []
    for number in range(len(document)):
        page = document[number]
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_range()
            if number == 0:
                sizes = [raw.FPDFText_GetFontSize(textpage.raw, i) for i in range(len(text))]
                first = _lines_with_sizes(text, sizes)
        finally:
            textpage.close()
            page.close()
        texts.append(text)
    return texts, first


def _lines_with_sizes(text: str, sizes: list[float]) -> list[tuple[str, float]]:
    lines, start = [], 0
    for match in re.finditer(r"\r?\n|$", text):
        line = text[start:match.start()]
        if line.strip():
            lines.append((line.strip(), max(sizes[start:match.start()] or [0.0])))
        start = match.end()
        if match.end() >= len(text):
            break
    return lines


def _clean_lines(page: str) -> list[str]:
    """A page's lines: ligatures expanded, control characters dropped (PDFium writes \\x02 for a soft hyphen)."""
    for ligature, letters in LIGATURES.items():
        page = page.replace(ligature, letters)
    page = page.replace("\x02", "\u00ad")
    page = _CONTROL.sub("", page.replace("\r\n", "\n").replace("\r", "\n"))
    return [line.strip() for line in page.split("\n")]


def strip_running_lines(pages: list[list[str]], edge: int = 3) -> list[list[str]]:
    """Pages without running headers and footers: among the first and last `edge` lines of each page, those
    that (digits aside) recur on at least half the pages, and bare page numbers."""
    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.lower()).strip()

    recurring: Counter[str] = Counter()
    for lines in pages:
        kept = [line for line in lines if line]
        recurring.update({key(line) for line in kept[:edge] + kept[-edge:]})
    threshold = max(2, (len(pages) + 1) // 2)
    running = {k for k, count in recurring.items() if count >= threshold and k}
    result = []
    for lines in pages:
        kept = [line for line in lines if line]
        top = kept[:edge]
        bottom = kept[max(len(top), len(kept) - edge):]
        middle = kept[len(top):len(kept) - len(bottom)]
        drop = lambda line: key(line) in running or bool(_PAGE_NUMBER.fullmatch(line))  # noqa: E731
        result.append([l for l in top if not drop(l)] + middle + [l for l in bottom if not drop(l)])
    return result


def join_lines(pages: list[list[str]]) -> str:
    """One text: lines joined with spaces, and a word hyphenated across a line end (or a page end) made whole."""
    text = "\n".join(line for lines in pages for line in lines)
    text = _LINE_END_HYPHEN.sub(_join_hyphenated, text)
    return re.sub(r"\s+", " ", text.replace("\u00ad", "")).strip()


def _join_hyphenated(match: re.Match[str]) -> str:
    """"effi-" + "cient" is one word; "state-of-the-" + "art" keeps its hyphen (the word had one already)."""
    head, hyphen, tail = match.groups()
    return head + ("-" if hyphen == "-" and "-" in head else "") + tail


def cut_references(text: str) -> str:
    """The text without its reference list: from the last "References"/"Bibliography" heading in its second half."""
    last = None
    for match in re.finditer(r"(?:(?<=\s)|^)(\d+\.?\s+)?(References|REFERENCES|Bibliography|BIBLIOGRAPHY)(?=\s|$)", text):
        if match.start() >= len(text) // 2:
            last = match
    return text[: last.start()].rstrip() if last else text


def split_abstract(text: str) -> tuple[str, str]:
    """(abstract, rest): the abstract runs from an "Abstract" heading near the start to the first section heading."""
    start = re.search(r"\b(abstract|ABSTRACT|Abstract)\b\s*[.:\u2014\u2013-]?\s*", text[:4000])
    if not start:
        return "", text
    after = text[start.end():]
    end = re.search(r"\s(1\.?|I\.)\s+(Introduction|INTRODUCTION|[A-Z][a-z]+)\b|\s(Introduction|INTRODUCTION|Keywords|Index Terms)\b", after)
    cut = end.start() if end else min(len(after), 3000)
    return after[:cut].strip(), (text[:start.start()] + " " + after[cut:]).strip()


def _metadata_title(title: str | None) -> str:
    title = (title or "").strip()
    return "" if not title or _TITLE_JUNK.match(title) else title


def _title_from_sizes(lines: list[tuple[str, float]]) -> str:
    """The first run of lines, among page 1's first ten, set in the largest font there."""
    head = lines[:10]
    if not head:
        return ""
    largest = max(size for _, size in head)
    if largest <= 0:
        return ""
    picked: list[str] = []
    for line, size in head:
        if size >= largest - 0.5:
            picked.append(line)
        elif picked:
            break
    for ligature, letters in LIGATURES.items():
        picked = [line.replace(ligature, letters) for line in picked]
    return " ".join(picked)[:MAX_TITLE]


def _first_line(pages: list[list[str]]) -> str:
    return next((line for lines in pages for line in lines if line), "")[:MAX_TITLE]
