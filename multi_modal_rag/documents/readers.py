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
from .records import paper_from_record

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "jsonl", "beir", "folder"]
FOLDER_SUFFIXES = {".txt", ".json", ".jsonl", ".pdf"}
SINGLE_FILE_SUFFIXES = {".txt", ".json", ".pdf"}  # a file named on its own with any other suffix is read as JSONL


def _parse_json(text: str, origin: str, *, whole_file: bool = False) -> tuple[Any, RecordError | None]:
    """(value, None) for good JSON, (None, the error naming `origin`, and the line for a whole file) for bad."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if whole_file else ""
        return None, RecordError(f"{origin}{line}", f"malformed JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return None, RecordError(origin, "JSON nested too deeply to read")


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
            record, error = _parse_json(text, origin)
            yield error or paper_from_record(record, origin)


def read_folder(path: Path) -> Iterator[Paper | RecordError]:
    """Papers from a folder (and its subfolders) of .txt, .json, .jsonl and .pdf files.

    A file's default id is its path below `path` without the suffix (`a/x.txt` is `a/x`), so equal names in
    different subfolders stay apart; a JSON record's own `id`/`_id` wins over it.
    """
    for file in _folder_files(path):
        yield from _read_file(file, file.relative_to(path).with_suffix("").as_posix())


def _read_file(file: Path, file_id: str) -> Iterator[Paper | RecordError]:
    """The records of one file of a folder, by its suffix; `file_id` is the default id of a one-record file."""
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        yield from read_jsonl(file)
        return
    if suffix == ".pdf":
        from .pdf import read_pdf  # pypdfium2 is loaded only when there are PDFs

        yield read_pdf(file, doc_id=file_id)
        return
    origin = str(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        yield RecordError(origin, f"invalid UTF-8 at byte {exc.start}")
        return
    if suffix == ".txt":
        title, _, rest = text.strip().partition("\n")
        yield paper_from_record({"title": title, "content": rest}, origin, default_id=file_id)
        return
    record, error = _parse_json(text, origin, whole_file=True)
    if error:
        yield error
    elif not isinstance(record, list):
        yield paper_from_record(record, origin, default_id=file_id)
    else:
        for i, item in enumerate(record):
            yield paper_from_record(item, f"{origin}[{i}]")


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)


def _input_file(path: Path, fmt: InputFormat) -> Path | None:
    """The one JSONL file behind `path`, or None for a folder of files."""
    if not path.is_dir():
        return path
    corpus = path / "corpus.jsonl"
    return corpus if fmt == "beir" or (fmt == "auto" and corpus.is_file()) else None


def read_papers(path: str | Path, fmt: InputFormat = "auto") -> Iterator[Paper | RecordError]:
    """Papers from a JSONL file, a BEIR corpus (file or its folder), a folder of files, or one .pdf/.txt/.json file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return _read_file(path, path.stem)
    file = _input_file(path, fmt)
    return read_jsonl(file) if file is not None else read_folder(path)


def count_records(path: str | Path, fmt: InputFormat = "auto") -> int | None:
    """How many records `read_papers` will yield (non-blank JSONL lines, files), for progress bars; None if unknown.

    A .json file holding a list counts as one: close enough for a progress bar, and it costs no parsing.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return 1
    try:
        file = _input_file(path, fmt)
        files = [file] if file is not None else _folder_files(path)
        return sum(_count_lines(f) if f.suffix.lower() == ".jsonl" or f is file else 1 for f in files)
    except OSError:
        return None


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
