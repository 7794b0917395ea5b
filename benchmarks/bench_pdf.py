"""PDF extraction: pages, time (median of repeats) and words recovered, for each test PDF with a known text.

    python benchmarks/bench_pdf.py [--repeats 5] [--json] [--save FILE]

The PDFs and their ground-truth words are in data/pdfs/ (made by data/pdfs/make_pdfs.py with pdflatex). The
goals: >= 97% of the source words recovered, a 20-page PDF extracted in < 1 s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time

from _common import REPO, emit, save

from multi_modal_rag.devtools.recall import word_recall
from multi_modal_rag.documents import Paper
from multi_modal_rag.documents.pdf import read_pdf

PDFS = REPO / "data" / "pdfs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="extractions of each PDF; the median time is reported")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--save", metavar="FILE", help="also write the JSON to FILE")
    args = p.parse_args()
    import pypdfium2 as pdfium

    files: dict[str, dict] = {}
    for truth in sorted(PDFS.glob("*.words")):
        pdf = truth.with_name(truth.with_suffix(".pdf").name)
        times, paper = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            paper = read_pdf(pdf)
            times.append(time.perf_counter() - started)
        assert isinstance(paper, Paper), paper
        with pdfium.PdfDocument(str(pdf)) as document:
            pages = len(document)
        text = " ".join((paper.title, paper.abstract, paper.content))
        files[pdf.name] = {"pages": pages, "median_s": round(statistics.median(times), 4),
                           "words_recovered": round(word_recall(text, truth.read_text()), 4)}
    result = {"library": f"pypdfium2 {importlib.metadata.version('pypdfium2')}", "repeats": args.repeats, "files": files}

    def table(r: dict) -> None:
        print(f"{r['library']}, median of {r['repeats']} extractions")
        for name, f in r["files"].items():
            print(f"  {name:16s} {f['pages']:3d} pages  {f['median_s'] * 1000:7.1f} ms  {f['words_recovered']:.1%} of the words")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
