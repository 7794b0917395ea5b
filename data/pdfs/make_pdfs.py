"""Make the test PDFs of tests/test_pdf.py from real text, with pdflatex (Debian: texlive-latex-base,
texlive-latex-extra for fancyhdr) and qpdf. The PDFs are committed: CI machines have no LaTeX.

    cd data/pdfs && python make_pdfs.py

Writes, for each of twocolumn and long20, NAME.tex, NAME.pdf and NAME.words (the words a reader should get
back: title, abstract and sections, not the running header, the page numbers or the references); and
encrypted.pdf (qpdf, user password "secret"), scanned.pdf (a page of drawn boxes, no text layer) and
corrupt.pdf (the first 40% of twocolumn.pdf's bytes).
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent

TITLE = "Efficient Dense Retrieval for Scientific Literature Workflows"
SHORT_TITLE = "Dense Retrieval for Scientific Literature"
ABSTRACT = (
    "Finding the first relevant paper in a large scientific collection remains difficult for researchers who "
    "work offline or under tight time budgets. We study an efficient workflow that combines lexical matching "
    "with dense sentence embeddings, and we show that hybrid fusion of the two signals outperforms either "
    "signal alone on benchmark collections of biomedical claims and nutrition questions. We further describe "
    "how the embedding model can be replaced without interrupting service, and how fine-tuning on a small "
    "number of in-domain judgments affects effectiveness."
)
SECTIONS = {
    "Introduction": [
        "Scientific literature grows faster than any reader can follow. A typical research assistant indexes "
        "thousands of newly collected papers every week and answers questions about them throughout the day. "
        "Classical keyword search is reliable and transparent, but it fails when the question and the relevant "
        "passage share few terms. Dense retrieval closes this vocabulary gap by embedding questions and passages "
        "into the same vector space, where semantic similarity becomes geometric proximity.",
        "The difficulty is that neither approach dominates. Lexical matching excels at rare identifiers such as "
        "gene names, chemical formulas and dataset titles, while dense representations capture paraphrase and "
        "topical relatedness. Practitioners therefore combine both signals, yet the configuration of that "
        "combination is often chosen by intuition rather than measurement. In this paper we examine the "
        "configuration space systematically and report which choices generalize across collections.",
    ],
    "Background": [
        "Sentence embedding models map a passage of text to a fixed-length vector. Models distilled from larger "
        "cross-encoders reach good effectiveness at modest computational cost, which makes them attractive for "
        "indexing large collections on commodity hardware. Approximate nearest neighbour structures such as "
        "hierarchical navigable small world graphs then answer similarity queries in logarithmic time.",
        "Score fusion must reconcile two incompatible scales. Lexical scores are unbounded and depend on document "
        "length and term statistics, whereas cosine similarities lie in a narrow interval. Normalization methods "
        "rescale each list before a weighted combination; reciprocal rank fusion avoids scores altogether and "
        "combines ranks. Both families have parameters whose influence is rarely reported in sufficient detail.",
        "Long documents pose a further challenge. Encoders read a bounded number of tokens, so full texts are "
        "split into overlapping windows, each embedded separately with the title in front. A document then "
        "matches through its best passage, and the passage itself becomes evidence that a reader can verify.",
    ],
    "Method": [
        "Our workflow indexes every paper twice within a single document: once as analysed fields for lexical "
        "matching and once as nested chunk vectors for dense matching. Queries are embedded with the same model "
        "and executed as a hybrid query whose subqueries are normalized and combined on the search node itself.",
        "To change the embedding model safely, the system scans the live index at a fixed point in time, embeds "
        "every paper with the new model into a fresh index, verifies counts and vectors, catches up with writes "
        "that arrived during the copy, and finally swaps the alias atomically. Readers never observe a partial "
        "state, and acknowledged writes are never lost during the transition.",
        "Fine-tuning uses the judgments that users already provide. Positive pairs come from relevance labels, "
        "and hard negatives are mined from the lexical index, which supplies passages that look relevant but are "
        "not. A few epochs over several hundred queries suffice to adapt a compact model to a new domain.",
    ],
    "Experiments": [
        "We evaluate on two public collections with graded or binary judgments. Effectiveness is measured by the "
        "normalized discounted cumulative gain at rank ten and by recall at rank one hundred. All parameters are "
        "chosen on training or development queries, and test queries are used exactly once for the final report.",
        "Hybrid fusion improved ranking quality on both collections compared with either lexical or dense "
        "retrieval alone. The improvement was largest for questions phrased in everyday language, where the "
        "vocabulary gap between question and abstract is widest. Reciprocal rank fusion was more robust to the "
        "choice of its single parameter than normalization with weights, whose best setting differed between "
        "collections.",
        "Replacing the embedding model in a live deployment caused no failed searches during our trials, and the "
        "verification step detected every deliberately corrupted vector we introduced. Indexing throughput stayed "
        "within a few percent of a bare encoding loop, since nearly all of the computation is spent inside the "
        "neural network rather than in bookkeeping or communication with the search engine.",
    ],
    "Conclusion": [
        "Combining lexical and dense retrieval is a sound default for scientific search, provided the fusion is "
        "measured rather than assumed. Safe model replacement and lightweight fine-tuning turn the embedding model "
        "from a fixed decision into a parameter that can be revisited as collections and questions evolve. Future "
        "work will examine multilingual collections and affiliations between figures and their captions.",
    ],
}
REFERENCES = [
    "A. Author and B. Writer. Probabilistic relevance frameworks revisited. Journal of Retrieval, 2009.",
    "C. Scholar. Sentence embeddings with siamese networks. Proceedings of the Conference, 2019.",
    "D. Reader and E. Critic. Reciprocal rank fusion outperforms individual systems. Workshop Notes, 2009.",
]

SUBJECTS = ["The encoder", "Our index", "The cluster", "A reviewer", "The benchmark", "Every migration", "The query planner",
            "This workflow", "The tokenizer", "A researcher"]
VERBS = ["evaluates", "compresses", "retrieves", "summarizes", "distinguishes", "normalizes", "reconstructs",
         "approximates", "classifies", "investigates"]
OBJECTS = ["heterogeneous collections of biomedical abstracts", "overlapping windows of scientific prose",
           "approximate nearest neighbour graphs", "thousands of unlabelled conference proceedings",
           "the influence of normalization on fused rankings", "long documents with complicated structure",
           "interdisciplinary questions about climate measurements", "affiliations between figures and captions"]
TAILS = ["under strict memory constraints", "without interrupting the service", "with remarkable consistency",
         "before the alias is swapped", "across several independent replications", "on commodity hardware"]


def _escape(text: str) -> str:
    return text.replace("%", r"\%").replace("&", r"\&")


def twocolumn_tex() -> tuple[str, str]:
    body = []
    for number, (heading, paragraphs) in enumerate(SECTIONS.items(), start=1):
        body.append(f"\\section{{{heading}}}\n" + "\n\n".join(_escape(p) for p in paragraphs))
    refs = "\n".join(f"\\bibitem{{r{i}}} {_escape(r)}" for i, r in enumerate(REFERENCES))
    tex = rf"""\documentclass[twocolumn,10pt]{{article}}
\usepackage{{fancyhdr}}
\pagestyle{{fancy}}
\fancyhf{{}}
\fancyhead[C]{{\small {SHORT_TITLE}}}
\fancyfoot[C]{{\thepage}}
\title{{{TITLE}}}
\author{{Ada Example \and Ben Sample}}
\date{{}}
\begin{{document}}
\maketitle
\thispagestyle{{fancy}}
\begin{{abstract}}
{_escape(ABSTRACT)}
\end{{abstract}}
{chr(10).join(body)}
\begin{{thebibliography}}{{9}}
{refs}
\end{{thebibliography}}
\end{{document}}
"""
    words = " ".join([TITLE, ABSTRACT] + [f"{h} {' '.join(ps)}" for h, ps in SECTIONS.items()])
    return tex, words


def long20_tex() -> tuple[str, str]:
    rng = random.Random(20)
    sections, words = [], ["A Long Report on Retrieval Experiments"]
    for number in range(1, 21):
        paragraphs = []
        for _ in range(4):
            sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
                         for _ in range(4)]
            paragraphs.append(" ".join(sentences))
        heading = f"Experiment number {number}"
        sections.append(f"\\section*{{{heading}}}\n" + "\n\n".join(paragraphs) + "\n\\clearpage")
        words.append(heading + " " + " ".join(paragraphs))
    tex = rf"""\documentclass[11pt]{{article}}
\title{{A Long Report on Retrieval Experiments}}
\author{{Cy Tester}}
\date{{}}
\begin{{document}}
\maketitle
\thispagestyle{{empty}}
{chr(10).join(sections)}
\end{{document}}
"""
    return tex, " ".join(words)


def scanned_tex() -> str:
    boxes = "\n".join(r"\noindent\rule{0.9\textwidth}{0.6em}\par\vspace{0.8em}" for _ in range(30))
    return rf"""\documentclass{{article}}
\pagestyle{{empty}}
\begin{{document}}
{boxes}
\end{{document}}
"""


def _pdflatex(name: str) -> None:
    for _ in range(2):
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"], cwd=HERE,
                       check=True, stdout=subprocess.DEVNULL)
    for suffix in (".aux", ".log"):
        (HERE / f"{name}{suffix}").unlink(missing_ok=True)


def main() -> None:
    for name, (tex, words) in {"twocolumn": twocolumn_tex(), "long20": long20_tex()}.items():
        (HERE / f"{name}.tex").write_text(tex)
        (HERE / f"{name}.words").write_text(re.sub(r"\s+", " ", words).strip() + "\n")
        _pdflatex(name)
    (HERE / "scanned.tex").write_text(scanned_tex())
    _pdflatex("scanned")
    subprocess.run(["qpdf", "--encrypt", "secret", "owner-secret", "256", "--", "twocolumn.pdf", "encrypted.pdf"],
                   cwd=HERE, check=True)
    data = (HERE / "twocolumn.pdf").read_bytes()
    (HERE / "corrupt.pdf").write_bytes(data[: len(data) * 2 // 5])


if __name__ == "__main__":
    main()
