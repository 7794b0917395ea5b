"""Fine-tuning an embedding model on the user's own relevance judgments (`mmrag tune`).

A BEIR folder gives the queries and the judgments (`qrels/{split}.tsv`); the papers' text comes from the user's
index, built as the indexer embeds a chunk (title in front, cut where the model stops reading). Each judged pair
becomes a training row (query, relevant paper, N hard negatives), the negatives being the best BM25 hits of the
query in that index that are not judged relevant. sentence-transformers' own trainer fits the model with
MultipleNegativesRankingLoss: every other paper in the batch is a negative too (in-batch negatives), and the
NO_DUPLICATES batch sampler keeps a paper from being a negative of the query it answers. Where queries are judged
relevant to dozens of papers (NFCorpus), many of those negatives are relevant but unjudged: `--loss gist` (GISTEmbedLoss)
drops each negative a frozen guide model scores above the positive, and `--pairs-per-query` keeps such queries from
filling the batches. The rows themselves are built in `training_data`.

Held-out queries (an `eval_split`, or a seeded fraction of the training queries kept out of training) are scored
before and after with InformationRetrievalEvaluator over a small corpus: their relevant papers plus each one's BM25
top-`candidates` from the index. That is a rerank-style estimate, quick on a CPU, not a whole-corpus figure.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from .errors import IndexNotFoundError, InputError, MMRagError
from .evaluation import Qrels, load_qrels, load_queries
from .models import build_embedder, canonical_name, max_tokens, resolve_device
from .training_data import bm25_rankings, build_triples, fetch_texts, held_out_corpus, split_held_out, truncate_texts

if TYPE_CHECKING:
    from .connection import ConnectionSettings
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

REPORT_FILE = "mmrag_tune.json"
TrainDevice = Literal["auto", "cpu", "cuda"]
TrainLoss = Literal["mnrl", "gist"]


@dataclass
class TuneConfig:
    """The hyper-parameters of a run (CPU-friendly defaults: SciFact's 809 training queries in minutes)."""

    epochs: float = 2.0  # SciFact: 1 epoch gave hybrid test NDCG@10 0.738, 2 gave 0.765 (README, Tuning the model)
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    hard_negatives: int = 1
    skip_top: int = 0  # BM25 ranks (of non-relevant papers) passed over before the hard negatives are taken
    pairs_per_query: int = 0  # 0: every judged pair; N: a seeded N per query, so that a query judged 500 times weighs as one
    loss: TrainLoss = "mnrl"  # gist: GISTEmbedLoss, negatives the guide finds closer than the positive are not used
    guide: str | None = None  # the guide model of `gist` (default: the base model, frozen)
    max_steps: int | None = None  # stop after this many steps (overrides epochs)
    held_out: float = 0.1  # fraction of the training queries kept out, when there is no eval_split
    eval_split: str | None = None
    candidates: int = 10  # BM25 hits per held-out query in the held-out corpus
    seed: int = 42

    def validate(self) -> None:
        checks = [
            (self.epochs > 0, f"--epochs {self.epochs}: must be more than 0"),
            (self.batch_size >= 2, f"--batch-size {self.batch_size}: must be 2 or more (the other rows are the negatives)"),
            (self.learning_rate > 0, f"--lr {self.learning_rate}: must be more than 0"),
            (0 <= self.warmup_ratio < 1, f"warmup ratio {self.warmup_ratio}: must be in [0, 1)"),
            (self.hard_negatives >= 0, f"--hard-negatives {self.hard_negatives}: must be 0 or more"),
            (self.skip_top >= 0, f"skip_top {self.skip_top}: must be 0 or more"),
            (self.pairs_per_query >= 0, f"--pairs-per-query {self.pairs_per_query}: must be 0 (all) or more"),
            (self.loss in ("mnrl", "gist"), f"--loss {self.loss}: must be mnrl or gist"),
            (self.guide is None or self.loss == "gist", f"--guide {self.guide}: only used with --loss gist"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps {self.max_steps}: must be 1 or more"),
            (0 <= self.held_out < 1, f"--held-out {self.held_out}: must be a fraction in [0, 1)"),
            (self.candidates >= 1, f"candidates {self.candidates}: must be 1 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TuneConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class TuneReport:
    """What `tune` did: written to `mmrag_tune.json` in the model folder, and printed by `mmrag tune --json`."""

    base: str
    out: str
    data: str
    split: str
    index: str
    device: str
    config: TuneConfig
    counts: dict[str, int] = field(default_factory=dict)
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)  # "base"/"tuned" -> metric -> value
    held_out_source: str = ""
    steps: int = 0
    train_loss: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TuneReport":
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields_, "config": TuneConfig.from_dict(data.get("config", {}))})


# ---- training ----------------------------------------------------------------------------


def held_out_metrics(model: "SentenceTransformer", queries: Mapping[str, str], qrels: Qrels, corpus: Mapping[str, str],
                     batch_size: int) -> dict[str, float]:
    """NDCG@10, MRR@10 and Recall@100 of `model` (sentence-transformers' InformationRetrievalEvaluator)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    relevant = {q: {d for d, rel in qrels[q].items() if rel > 0 and d in corpus} for q in queries}
    evaluator = InformationRetrievalEvaluator(
        dict(queries), dict(corpus), relevant, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1],
        precision_recall_at_k=[100], map_at_k=[100], batch_size=batch_size, name="held-out", write_csv=False,
    )
    scores = evaluator(model)
    wanted = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100"}
    prefix = f"held-out_{evaluator.primary_metric.split('_')[-2]}_"  # held-out_cosine_ndcg@10 -> the score function
    return {name: round(float(scores[prefix + key]), 4) for key, name in wanted.items()}


def _step_callback(on_step: Callable[[int, int], None]):
    from transformers import TrainerCallback

    class StepCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            on_step(0, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            on_step(state.global_step, state.max_steps)

    return StepCallback()


def training_loss(model: "SentenceTransformer", config: TuneConfig, base: str, device: str):
    """MultipleNegativesRankingLoss, or GISTEmbedLoss: the same in-batch and hard negatives, less those a frozen guide
    model scores above the query's positive (likely unjudged relevant papers, common when queries are judged dozens
    of times)."""
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss

    if config.loss == "mnrl":
        return MultipleNegativesRankingLoss(model)
    guide = build_embedder(config.guide or base, device, "fp32")
    guide.requires_grad_(False)
    return GISTEmbedLoss(model, guide)


def train(model: "SentenceTransformer", columns: dict[str, list[str]], config: TuneConfig, device: str,
          on_step: Callable[[int, int], None] | None = None, *, base: str = "") -> tuple[int, float]:
    """Fit `model` in place on the columns with the configured loss; returns (steps, mean training loss)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import PrinterCallback

    with tempfile.TemporaryDirectory(prefix="mmrag-tune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio, batch_sampler=BatchSamplers.NO_DUPLICATES, seed=config.seed,
            fp16=device == "cuda", use_cpu=device == "cpu", save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to="none", disable_tqdm=True, push_to_hub=False,
        )
        class Trainer(SentenceTransformerTrainer):
            def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
                pass  # no model card is written (save_model), so no widget examples computed for one

        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                          loss=training_loss(model, config, base, device),
                          callbacks=[_step_callback(on_step)] if on_step else None)
        trainer.remove_callback(PrinterCallback)  # it prints the trainer's log dicts to stdout
        output = trainer.train()
    return output.global_step, round(float(output.training_loss), 4)


def check_out_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out}: the folder is not empty; choose another or pass --overwrite")


def save_model(model: "SentenceTransformer", report: TuneReport, out: Path) -> None:
    """The model and `mmrag_tune.json` written to a sibling folder first, then moved to `out` (replacing it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(staging), create_model_card=False)
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def tune(
    base: str,
    beir_dir: str | Path,
    out: str | Path,
    *,
    settings: "ConnectionSettings | None" = None,
    index: str = "papers",
    split: str = "train",
    config: TuneConfig | None = None,
    device: TrainDevice = "auto",
    overwrite: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] = logger.info,
) -> TuneReport:
    """Fine-tune `base` on the judgments of `beir_dir`/qrels/`split` with texts and hard negatives from `index`;
    save it to `out` (with `mmrag_tune.json`) and return the report."""
    from . import store
    from .connection import ConnectionSettings, make_client

    settings = settings or ConnectionSettings.from_env()
    config = config or TuneConfig()
    config.validate()
    beir_dir, out = Path(beir_dir), Path(out)
    if not beir_dir.is_dir():
        raise InputError(f"--train {beir_dir}: not a folder (expected a BEIR folder with queries.jsonl and qrels/)")
    if config.eval_split == split:
        raise InputError(f"--eval-split {split}: is the training split; name another, or use --held-out")
    check_out_folder(out, overwrite)
    started = time.perf_counter()
    queries, qrels = load_queries(beir_dir), load_qrels(beir_dir, split)
    if config.eval_split:
        held_qrels = load_qrels(beir_dir, config.eval_split)
        held_ids = sorted(q for q in held_qrels if q in queries)
        train_ids = sorted(q for q in qrels if q in queries and q not in held_qrels)
        source = f"split {config.eval_split}"
    else:
        held_qrels = qrels
        train_ids, held_ids = split_held_out([q for q in qrels if q in queries], config.held_out, config.seed)
        source = f"{config.held_out:g} of {split} (seed {config.seed})"

    client = make_client(settings)
    with store.translated(settings.safe_url, f"tune from {index}"):
        target = store.resolve_alias(client, index)
        if target is None:
            raise IndexNotFoundError(f"--index {index}: no such alias or index; index the corpus first "
                                     f"(mmrag index {beir_dir / 'corpus.jsonl'} --index {index})")
        on_phase(f"BM25 hard negatives for {len(train_ids)} queries from {target}")
        most_relevant = max((len(qrels[q]) for q in train_ids), default=0)
        rankings = bm25_rankings(client, target, {q: queries[q] for q in train_ids},
                                 max(10, min(100, config.skip_top + config.hard_negatives + most_relevant + 5)))
        held_rankings = bm25_rankings(client, target, {q: queries[q] for q in held_ids}, config.candidates)
        wanted = {d for q in train_ids for d in qrels[q]} | {d for r in rankings.values() for d in r}
        pool = held_out_corpus(held_ids, held_qrels, held_rankings, config.candidates)
        texts = fetch_texts(client, target, sorted(wanted | pool))

    train_queries, train_qrels = {q: queries[q] for q in train_ids}, {q: qrels[q] for q in train_ids}
    options = {"hard_negatives": config.hard_negatives, "skip_top": config.skip_top,
               "pairs_per_query": config.pairs_per_query, "seed": config.seed}
    counts = build_triples(train_queries, train_qrels, texts, rankings, **options)[1]
    if counts["pairs"] == 0:
        raise MMRagError(f"no usable training pairs in {beir_dir}/qrels/{split}.tsv: {len(train_ids)} queries, "
                         f"{counts['missing_docs']} judged papers missing from {index}, "
                         f"{counts['pairs_short_of_negatives']} pairs short of hard negatives")
    if counts["missing_docs"]:
        logger.warning("%d judged papers are not in %s; their pairs are left out", counts["missing_docs"], index)
    resolved = resolve_device(device)
    # build_embedder, not load_embedder: training changes the model in place, and load_embedder's is shared
    model = build_embedder(base, resolved, "fp32")
    ids = list(texts)
    texts = dict(zip(ids, truncate_texts([texts[i] for i in ids], model.tokenizer, max_tokens(model))))
    columns = build_triples(train_queries, train_qrels, texts, rankings, **options)[0]
    corpus = {d: texts[d] for d in pool if d in texts}
    held_queries = {q: queries[q] for q in held_ids if any(r > 0 and d in corpus for d, r in held_qrels[q].items())}
    counts.update(train_queries=len(train_ids), held_out_queries=len(held_queries), held_out_corpus=len(corpus))
    seconds = {"mine": round(time.perf_counter() - started, 1)}

    report = TuneReport(base=canonical_name(base), out=str(out.resolve()), data=str(beir_dir.resolve()), split=split,
                        index=index, device=resolved, config=config, counts=counts,
                        held_out_source=f"{source}; corpus: relevant papers + BM25 top {config.candidates} each")
    if held_queries:
        on_phase(f"scoring the base model on {len(held_queries)} held-out queries")
        mark = time.perf_counter()
        report.held_out["base"] = held_out_metrics(model, held_queries, held_qrels, corpus, config.batch_size)
        seconds["eval_base"] = round(time.perf_counter() - mark, 1)
    on_phase(f"training on {counts['pairs']} pairs")
    mark = time.perf_counter()
    report.steps, report.train_loss = train(model, columns, config, resolved, on_step, base=base)
    seconds["train"] = round(time.perf_counter() - mark, 1)
    if held_queries:
        on_phase("scoring the tuned model")
        mark = time.perf_counter()
        report.held_out["tuned"] = held_out_metrics(model, held_queries, held_qrels, corpus, config.batch_size)
        seconds["eval_tuned"] = round(time.perf_counter() - mark, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    report.seconds = seconds
    save_model(model, report, out)
    return report
