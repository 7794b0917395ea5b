"""Chunking: papers split into overlapping windows, each embedded with the paper's title in front.

Windows are counted in the model's own tokens (`token_windows`), so that title + window fits what the
model reads and no end of a chunk is cut off unseen. Indexes made before that counted words
(`word_windows`, 0.7 words a token); their `_meta` says `chunk_unit: words` and writers keep to it.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from .paper import Paper

ChunkUnit = Literal["words", "tokens"]
WORDS_PER_TOKEN = 0.7  # words chunking: about 1.3 tokens a word, and room left for the title in front of each window


class Chunk(NamedTuple):
    position: int  # index of the window's first word (or token) in the paper's body
    text: str  # what the index stores and returns as a passage
    embed_text: str  # what the model reads: title + window
    tokens: int | None = None  # about how many tokens the model reads (token windows only): batches are cut by it


def chunking_for(max_tokens: int, unit: ChunkUnit = "tokens") -> tuple[int, int]:
    """(window size, overlap) in `unit`s for a model that reads `max_tokens` tokens.

    In tokens the window is the longest the model reads; each paper's window is then shortened by its
    title (see `token_windows`' callers).
    """
    size = max(32, int(max_tokens * WORDS_PER_TOKEN) if unit == "words" else max_tokens - 2)
    return size, max(8, size // 6)


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


def token_windows(text: str, tokenizer: Any, size: int, overlap: int) -> list[tuple[int, str]]:
    """Split text into windows of `size` tokens of `tokenizer` (a Hugging Face fast tokenizer), each sharing
    `overlap` tokens with the last. Window texts are spans of `text` itself, cut at token boundaries.

    Returns (position of the first token, window text) pairs; nothing is dropped.
    """
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return windows_at_offsets(text, offsets, size, overlap)


def windows_at_offsets(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, str]]:
    """`token_windows` for a text already tokenized: `offsets` are its tokens' (start, end) characters."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    step = size - overlap
    windows = []
    for start in range(0, len(offsets), step):
        end = min(start + size, len(offsets))
        windows.append((start, text[offsets[start][0] : offsets[end - 1][1]]))
        if end >= len(offsets):
            break
    return windows


def title_prefix(paper: Paper) -> str:
    """What goes in front of every window of the paper when it is embedded."""
    return f"{paper.title}. " if paper.title and paper.body else ""


def chunk_paper(paper: Paper, words: int, overlap: int) -> list[Chunk]:
    """The chunks of a paper in word windows; a paper without body is one title chunk."""
    windows = word_windows(paper.body, words, overlap) or [(0, paper.title)]
    return [Chunk(position, text, title_prefix(paper) + text) for position, text in windows]


def chunk_paper_in_tokens(paper: Paper, tokenizer: Any, size: int, overlap: int,
                          offsets: list[tuple[int, int]] | None = None) -> list[Chunk]:
    """The chunks of a paper in token windows; a paper without body is one title chunk.

    `offsets`: the body's token offsets, when the caller tokenized many bodies in one call.
    """
    if offsets is None:
        windows = token_windows(paper.body, tokenizer, size, overlap)
    else:
        windows = windows_at_offsets(paper.body, offsets, size, overlap)
    return [Chunk(position, text, title_prefix(paper) + text) for position, text in windows or [(0, paper.title)]]
