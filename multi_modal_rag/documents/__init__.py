"""Papers: the record type, the readers for input files, and chunking."""

from .chunking import Chunk, ChunkUnit, chunk_paper, chunk_paper_in_tokens, chunking_for, token_windows, word_windows
from .paper import SOURCE_FIELDS, STORED_FIELDS, Paper, RecordError, iter_unique
from .readers import InputFormat, count_records, read_folder, read_jsonl, read_papers
from .records import clean_text, paper_from_record

__all__ = [
    "Chunk", "ChunkUnit", "InputFormat", "Paper", "RecordError", "SOURCE_FIELDS", "STORED_FIELDS", "chunk_paper", "chunk_paper_in_tokens", "chunking_for",
    "clean_text", "count_records", "iter_unique", "paper_from_record", "read_folder", "read_jsonl", "read_papers", "token_windows", "word_windows",
]
