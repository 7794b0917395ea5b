"""One JSON record (ours, a BEIR corpus line, a `POST /papers` item) to a `Paper`, field by field.

The text fields (title, abstract, content) must be text: anything else fails the record, named with its origin.
The secondary fields (authors, categories, year, published, source, url) are cleaned instead: a value that cannot
be used is left out with a warning naming the origin and the field, and the paper is still indexed.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from .paper import Paper, RecordError

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("title", "abstract", "content")
# What the index's `published` date field accepts (index_templates/papers.json): yyyy, yyyy-MM, or ISO 8601.
_YEAR_MONTH = re.compile(r"\d{4}(-(0[1-9]|1[0-2]))?")
_ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d(T\d\d(:\d\d(:\d\d([.,]\d+)?)?)?(Z|[+-]\d\d:?\d\d)?)?")
_FREE_TEXT_YEAR = re.compile(r"(?<!\d)(1[5-9]\d\d|2\d\d\d)(?!\d)")


class FieldError(ValueError):
    """A text field that is not text; fails the record."""


def clean_text(value: str) -> str:
    """`value` with lone UTF-16 surrogates (from JSON escapes like "\\ud800") replaced by U+FFFD.

    Such a string cannot be encoded as UTF-8, so it would fail the content hash and the bulk request.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _text_field(record: dict[str, Any], *keys: str) -> str:
    """The first present, non-empty of `keys` as text; numbers are written out, objects and lists fail."""
    for key in keys:
        value = record.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            kind = "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a boolean"
            raise FieldError(f"field {key!r} is {kind}, expected text")
        return clean_text(str(value)).strip()
    return ""


def _as_list(value: Any) -> list[str] | None:
    """Authors or categories: a list of strings, or a comma-separated string; None when unusable."""
    if value is None:
        return []
    if isinstance(value, str):
        return [clean_text(part).strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, (str, int, float)) for item in value):
        return [clean_text(str(item)).strip() for item in value if str(item).strip()]
    return None


def _optional_str(value: Any) -> str | None:
    """A short keyword-like field (source, url): text or a number, else None."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = clean_text(str(value)).strip()
        return text or None
    return None


def _published(value: Any) -> tuple[str | None, int | None]:
    """(published, its year) when the index's date field accepts `value`; else (None, a year found in the text)."""
    text = _optional_str(value)
    if text is None:
        return None, None
    if _YEAR_MONTH.fullmatch(text):
        return text, int(text[:4])
    if _ISO_DATE.fullmatch(text):
        try:
            return text, datetime.fromisoformat(text).year
        except ValueError:  # 2021-02-30
            pass
    match = _FREE_TEXT_YEAR.search(text)
    return None, int(match.group(1)) if match else None


def _year(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        year = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return year if 0 < year < 10000 else None


def record_id(record: dict[str, Any]) -> str | None:
    """The record's own id: `id`, else BEIR's `_id`, else `paper_id`; None when it has none."""
    for key in ("id", "_id", "paper_id"):
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return clean_text(str(value)).strip()
    return None


def paper_from_record(record: Any, origin: str, *, default_id: str | None = None) -> Paper | RecordError:
    """Build a Paper from a JSON object (our format or a BEIR corpus line); `default_id` when it has no id."""
    if not isinstance(record, dict):
        return RecordError(origin, f"expected a JSON object, got {type(record).__name__}")
    doc_id = record_id(record) or default_id
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    try:
        title = _text_field(record, "title")
        abstract = _text_field(record, "abstract", "text")
        content = _text_field(record, "content", "body")
    except FieldError as exc:
        return RecordError(origin, str(exc), doc_id)
    if not (title or abstract or content):
        has_keys = any(key in record for key in ("title", "abstract", "text", "content"))
        reason = "title and text are empty or whitespace" if has_keys else "record has no title and no text"
        return RecordError(origin, reason, doc_id)

    dropped: list[str] = []

    def keep(name: str, value: Any, cleaned: Any) -> Any:
        if cleaned is None and value not in (None, ""):
            dropped.append(name)
        return cleaned

    published_raw = record.get("published")
    published, published_year = _published(published_raw)
    keep("published", published_raw, published)
    year_raw = record.get("year")
    year = keep("year", year_raw, _year(year_raw)) if year_raw is not None else published_year
    source_raw = record.get("source") or metadata.get("source")
    url_raw = record.get("url") or metadata.get("url")
    paper = Paper(
        id=doc_id,
        title=title,
        abstract=abstract,
        content=content,
        authors=keep("authors", record.get("authors"), _as_list(record.get("authors"))) or [],
        categories=keep("categories", record.get("categories"), _as_list(record.get("categories"))) or [],
        year=year,
        published=published,
        source=keep("source", source_raw, _optional_str(source_raw)),
        url=keep("url", url_raw, _optional_str(url_raw)),
        origin=origin,
    )
    for name in dropped:
        logger.warning("%s%s: field %r has an unusable value; left out", origin, f" (id {doc_id})" if doc_id else "", name)
    return paper
