"""How much of a known text an extraction got back: the measure of tests/test_pdf.py and benchmarks/bench_pdf.py."""

from __future__ import annotations

import re
from collections import Counter


def word_recall(text: str, truth: str) -> float:
    """Share of the truth's words (lowercased runs of letters and digits, with multiplicity) found in `text`."""
    def words(s: str) -> Counter[str]:
        return Counter(re.findall(r"[a-z0-9]+", s.lower()))

    got, want = words(text), words(truth)
    return sum(min(got[w], n) for w, n in want.items()) / max(1, sum(want.values()))
