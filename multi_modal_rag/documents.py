"""Papers: the record type, the readers for input files, content hashes and chunking.

Readers yield a `Paper` for every good record and a `RecordError` (naming file and line)
for every bad one, so one bad line never stops the rest of a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from .errors import InputError

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "jsonl", "beir", "folder"]


@dataclass
class Paper:
    """One paper as the index stores it (vectors are added at indexing time)."""

    id: str | None = None
    title: str = ""
    abstract: str = ""
    content: str = ""
    authors: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    year: int | None = None
    published: str | None = None
    source: str | None = None
    url: str | None = None
    origin: str = ""  # where it was read from ("file:line"), for messages; not indexed

    @property
    def body(self) -> str:
        """Abstract and full text, the part that is chunked."""
        return "\n\n".join(part for part in (self.abstract, self.content) if part.strip())

    def content_hash(self) -> str:
        """A stable hash of everything indexed, so unchanged papers can be skipped."""
        data = asdict(self)
        data.pop("origin")
        data.pop("id")
        encoded = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(encoded).hexdigest()

    def doc_id(self) -> str:
        """The paper's own id, else a hash of its content: re-indexing never duplicates."""
        return self.id or self.content_hash()[:32]


@dataclass(frozen=True)
class RecordError:
    """A record that could not be read, with where it is and why."""

    origin: str
    reason: str
    doc_id: str | None = None

    def __str__(self) -> str:
        who = f" (id {self.doc_id})" if self.doc_id else ""
        return f"{self.origin}{who}: {self.reason}"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()] if "," in value else [value.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return [str(value)]


def _year(record: dict[str, Any]) -> int | None:
    year = record.get("year")
    if year is None and isinstance(record.get("published"), str) and record["published"][:4].isdigit():
        year = record["published"][:4]
    try:
        return int(year) if year is not None and str(year).strip() else None
    except (TypeError, ValueError):
        return None


def paper_from_record(record: Any, origin: str) -> Paper | RecordError:
    """Build a Paper from a JSON object (our format or a BEIR corpus line)."""
    if not isinstance(record, dict):
        return RecordError(origin, f"expected a JSON object, got {type(record).__name__}")
    raw_id = record.get("id", record.get("_id", record.get("paper_id")))
    doc_id = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else None
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    title = str(record.get("title") or "").strip()
    abstract = str(record.get("abstract") or record.get("text") or "").strip()
    content = str(record.get("content") or record.get("body") or "").strip()
    if not (title or abstract or content):
        has_keys = any(key in record for key in ("title", "abstract", "text", "content"))
        reason = "title and text are empty or whitespace" if has_keys else "record has no title and no text"
        return RecordError(origin, reason, doc_id)
    return Paper(
        id=doc_id,
        title=title,
        abstract=abstract,
        content=content,
        authors=_as_list(record.get("authors")),
        categories=_as_list(record.get("categories")),
        year=_year(record),
        published=str(record["published"]) if record.get("published") else None,
        source=record.get("source") or metadata.get("source"),
        url=record.get("url") or metadata.get("url"),
        origin=origin,
    )


def read_jsonl(path: Path) -> Iterator[Paper | RecordError]:
    """Papers from a JSON Lines file (ours or a BEIR corpus.jsonl), one record a line."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            origin = f"{path}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RecordError(origin, f"invalid UTF-8 at byte {exc.start}")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RecordError(origin, f"malformed JSON: {exc.msg} (column {exc.colno})")
                continue
            yield paper_from_record(record, origin)


def read_folder(path: Path) -> Iterator[Paper | RecordError]:
    """Papers from a folder of .txt files (first line is the title) and .json files."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".json", ".jsonl"})
    for file in files:
        if file.suffix.lower() == ".jsonl":
            yield from read_jsonl(file)
            continue
        origin = str(file)
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RecordError(origin, f"invalid UTF-8 at byte {exc.start}")
            continue
        if file.suffix.lower() == ".txt":
            title, _, rest = text.strip().partition("\n")
            yield paper_from_record({"id": file.stem, "title": title, "content": rest}, origin)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RecordError(f"{origin}:{exc.lineno}", f"malformed JSON: {exc.msg}")
            continue
        records = record if isinstance(record, list) else [record]
        for i, item in enumerate(records):
            item_origin = origin if len(records) == 1 else f"{origin}[{i}]"
            if isinstance(item, dict):
                item.setdefault("id", file.stem if len(records) == 1 else None)
            yield paper_from_record(item, item_origin)


def read_papers(path: str | Path, fmt: InputFormat = "auto") -> Iterator[Paper | RecordError]:
    """Papers from a JSONL file, a BEIR corpus (file or its folder), or a folder of files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if fmt == "beir" or (fmt == "auto" and corpus.is_file()):
            return read_jsonl(corpus)
        return read_folder(path)
    return read_jsonl(path)


def word_windows(text: str, size: int, overlap: int) -> list[tuple[int, str]]:
    """Split text into windows of `size` words, each sharing `overlap` words with the last.

    Returns (position of the first word, window text) pairs; nothing is dropped.
    """
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    words = text.split()
    if not words:
        return []
    step = size - overlap
    windows = []
    for start in range(0, len(words), step):
        windows.append((start, " ".join(words[start : start + size])))
        if start + size >= len(words):
            break
    return windows


def iter_unique(items: Iterable[Paper | RecordError]) -> Iterator[Paper | RecordError]:
    """Pass records through, turning a repeated id into a RecordError naming the first place."""
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item, Paper):
            doc_id = item.doc_id()
            if doc_id in seen:
                yield RecordError(item.origin, f"duplicate id, already read at {seen[doc_id]}; skipped", doc_id)
                continue
            seen[doc_id] = item.origin
        yield item
