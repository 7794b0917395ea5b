"""Readers for input files: JSON Lines (ours or a BEIR corpus), BEIR folders, folders of .txt/.json/.jsonl.

Readers yield a `Paper` for every good record and a `RecordError` (naming file and line)
for every bad one, so one bad line never stops the rest of a file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Literal

from ..errors import InputError
from .paper import Paper, RecordError

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "jsonl", "beir", "folder"]
FOLDER_SUFFIXES = {".txt", ".json", ".jsonl"}


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
    for file in _folder_files(path):
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


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)


def _input_file(path: Path, fmt: InputFormat) -> Path | None:
    """The one JSONL file behind `path`, or None for a folder of files."""
    if not path.is_dir():
        return path
    corpus = path / "corpus.jsonl"
    return corpus if fmt == "beir" or (fmt == "auto" and corpus.is_file()) else None


def read_papers(path: str | Path, fmt: InputFormat = "auto") -> Iterator[Paper | RecordError]:
    """Papers from a JSONL file, a BEIR corpus (file or its folder), or a folder of files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    file = _input_file(path, fmt)
    return read_jsonl(file) if file is not None else read_folder(path)


def count_records(path: str | Path, fmt: InputFormat = "auto") -> int | None:
    """How many records `read_papers` will yield (non-blank JSONL lines, files), for progress bars; None if unknown.

    A .json file holding a list counts as one: close enough for a progress bar, and it costs no parsing.
    """
    path = Path(path)
    try:
        file = _input_file(path, fmt)
        files = [file] if file is not None else _folder_files(path)
        return sum(_count_lines(f) if f.suffix.lower() == ".jsonl" or f is file else 1 for f in files)
    except OSError:
        return None


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
