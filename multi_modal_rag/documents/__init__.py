"""Papers: the record type, the readers for input files, and chunking."""

from .chunking import Chunk, chunk_paper, chunking_for, word_windows
from .paper import SOURCE_FIELDS, STORED_FIELDS, Paper, RecordError, iter_unique
from .readers import InputFormat, count_records, paper_from_record, read_folder, read_jsonl, read_papers

__all__ = [
    "Chunk", "InputFormat", "Paper", "RecordError", "SOURCE_FIELDS", "STORED_FIELDS", "chunk_paper", "chunking_for",
    "count_records", "iter_unique", "paper_from_record", "read_folder", "read_jsonl", "read_papers", "word_windows",
]
