"""Chunking: papers split into overlapping word windows, each embedded with the paper's title."""

from __future__ import annotations

from typing import NamedTuple

from .paper import Paper

WORDS_PER_TOKEN = 0.7  # about 1.3 tokens a word, and room left for the title in front of each window


class Chunk(NamedTuple):
    position: int  # index of the window's first word in the paper's body
    text: str  # what the index stores and returns as a passage
    embed_text: str  # what the model reads: title + window


def chunking_for(max_tokens: int) -> tuple[int, int]:
    """(words per window, overlap in words) for a model that reads `max_tokens` tokens."""
    words = max(32, int(max_tokens * WORDS_PER_TOKEN))
    return words, max(8, words // 6)


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


def chunk_paper(paper: Paper, words: int, overlap: int) -> list[Chunk]:
    """The chunks of a paper; a paper without body is one title chunk."""
    windows = word_windows(paper.body, words, overlap) or [(0, paper.title)]
    prefix = f"{paper.title}. " if paper.title and paper.body else ""
    return [Chunk(position, text, prefix + text) for position, text in windows]
