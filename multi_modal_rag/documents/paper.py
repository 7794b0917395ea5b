"""The paper record: what the index stores about a paper, its content hash and its `_source` round trip."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Iterator


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
        data = {name: getattr(self, name) for name in STORED_FIELDS}
        # surrogatepass: a lone surrogate (readers replace them, library callers may not) must not crash the hash
        encoded = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return hashlib.sha256(encoded).hexdigest()

    def doc_id(self) -> str:
        """The paper's own id, else a hash of its content: re-indexing never duplicates."""
        return self.id or self.content_hash()[:32]

    def to_source(self) -> dict[str, Any]:
        """The paper's part of an index document: id, stored fields and content hash (no vectors)."""
        return {"paper_id": self.doc_id(), **{name: getattr(self, name) for name in STORED_FIELDS},
                "content_hash": self.content_hash()}

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> "Paper":
        """A Paper rebuilt from an index document's `_source` (vectors and bookkeeping ignored)."""
        stored = {name: source[name] for name in STORED_FIELDS if source.get(name) is not None}
        return cls(id=source.get("paper_id"), **stored, origin=f"paper {source.get('paper_id')}")


# The paper's own fields in an index document, besides `paper_id`; everything else there is bookkeeping.
STORED_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Paper) if f.name not in ("id", "origin"))
# What a scan must read to rebuild papers and compare their content.
SOURCE_FIELDS: list[str] = ["paper_id", *STORED_FIELDS, "content_hash"]


@dataclass(frozen=True)
class RecordError:
    """A record that could not be read, with where it is and why."""

    origin: str
    reason: str
    doc_id: str | None = None

    def __str__(self) -> str:
        who = f" (id {self.doc_id})" if self.doc_id else ""
        return f"{self.origin}{who}: {self.reason}"


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
