"""Decontamination: drop rows that copy, or nearly copy, a question of an evaluation benchmark.

The reference set is the benchmarks of an evaluation recipe (`configs/eval/medical.yaml`: MedQA, MedMCQA, PubMedQA and
the MMLU medical subjects; `configs/eval/local.yaml`: the offline fixtures): each benchmark question with its options,
read from the split the recipe evaluates on (every row of it: a row `limit` only shortens evaluation). Three
detectors, each a `DecontaminationConfig` setting:

- `ngram`: word n-gram overlap (8 words by default, as huggingface/open-r1's `scripts/decontaminate.py`; 13 as
  GPT-3 and OLMo). Texts are normalised (NFKC, lowercase, option labels and punctuation removed, whitespace
  collapsed) and a row is flagged when any n-gram of its question (and options) occurs in a benchmark question.
  An n-gram found in more than `boilerplate_items` distinct benchmark questions is the domain's stock phrasing
  ("which of the following is the most likely diagnosis" closes hundreds of MedQA questions), not a copy of one of
  them: it is ignored. A copied question still shares the n-grams that are its own.
- `numbers`: the same n-grams with every number replaced by one placeholder, which catches GSM-Hard-style number
  swaps (GSM-Hard is GSM8K with larger numbers): flagged on an exact match of the number-masked texts, or when at
  least `numbers_overlap` of the shorter text's masked n-grams are shared with one benchmark question.
- `embedding`: cosine similarity >= `embedding_threshold` with the novelty embedder (catches paraphrases).

Texts shorter than n words are compared whole. Every contaminated row carries a `contamination` list: for each
detector that fired, its best match (benchmark, detector, item id, the benchmark question, score).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.reference import DecontaminationError, Reference, load_reference, ngrams, row_text, words

logger = logging.getLogger(__name__)

DETECTORS = ("ngram", "numbers", "embedding")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NGRAM = 8
BLOCK_ELEMENTS = 1 << 24  # similarities computed at once (64 MB of float32)


@dataclass
class DecontaminationConfig:
    """Which benchmarks a dataset must not contain, and how a copy is recognised."""

    enabled: bool = True
    """Check rows against the benchmarks before curation, publishing and training."""
    eval_recipe: str | None = None
    """Evaluation recipe whose `benchmarks` are the reference sets (e.g. configs/eval/medical.yaml); null: the domain's
    recipe in this checkout, configs/eval/<domain>.yaml."""
    ngram: int | None = DEFAULT_NGRAM
    """Word n-gram size of the overlap detector (8 as open-r1, 13 as GPT-3 / OLMo); null turns that detector off."""
    boilerplate_items: int | None = 2
    """An n-gram found in more than this many (distinct) benchmark questions is stock phrasing, not a copy of one of
    them, and is ignored by the n-gram detectors; null: every n-gram counts (open-r1's rule)."""
    numbers: bool = True
    """The number-masked detector (GSM-Hard-style number swaps), on n-grams of `ngram` words (8 when null)."""
    numbers_overlap: float = 0.2
    """Share of the shorter text's number-masked n-grams that flags a row (an exact masked match always does)."""
    embedding_threshold: float | None = 0.9
    """Cosine similarity (novelty embedder) at or above which a row paraphrases a benchmark question; null: off."""
    seed_novelty_bank: bool = False
    """Also put the benchmark questions in the build's novelty bank, so near-copies are dropped before judging."""

    def validate(self, path: str = "decontamination", domain: str | None = None) -> None:
        """Check the fields (errors name the field, the value and the fix); with `domain`, that a recipe is found."""
        from nanoflux.recipe import check_range, fail

        if self.ngram is not None:
            check_range(f"{path}.ngram", self.ngram, 3, 50)
        if self.boilerplate_items is not None:
            check_range(f"{path}.boilerplate_items", self.boilerplate_items, 1, 1_000_000)
        check_range(f"{path}.numbers_overlap", self.numbers_overlap, 0.0, 1.0, low_open=True)
        if self.embedding_threshold is not None:
            check_range(f"{path}.embedding_threshold", self.embedding_threshold, 0.0, 1.0, low_open=True)
        if not self.enabled:
            return
        if not self.detectors:
            fail(
                path,
                {"ngram": self.ngram, "numbers": self.numbers, "embedding_threshold": self.embedding_threshold},
                "every detector is off",
                f"turn one on (e.g. {path}.ngram: 8), or set {path}.enabled: false",
            )
        if self.eval_recipe is not None and not Path(self.eval_recipe).is_file():
            fail(
                f"{path}.eval_recipe",
                self.eval_recipe,
                "file not found",
                f"point it at an evaluation recipe such as configs/eval/medical.yaml, or set {path}.enabled: false",
            )
        if self.eval_recipe is None and domain is not None and self.recipe_for(domain) is None:
            fail(
                f"{path}.eval_recipe",
                None,
                f"no evaluation recipe for domain {domain!r} in {PROJECT_ROOT / 'configs' / 'eval'}",
                f"set {path}.eval_recipe to an evaluation recipe naming the benchmarks, or set {path}.enabled: false",
            )

    @property
    def detectors(self) -> list[str]:
        """The detectors that are on, in the order they are reported."""
        on = {
            "ngram": self.ngram is not None,
            "numbers": self.numbers,
            "embedding": self.embedding_threshold is not None,
        }
        return [name for name in DETECTORS if on[name]]

    def recipe_for(self, domain: str) -> Path | None:
        """The evaluation recipe to use: `eval_recipe`, else configs/eval/<domain>.yaml when this checkout has it."""
        if self.eval_recipe is not None:
            return Path(self.eval_recipe)
        default = PROJECT_ROOT / "configs" / "eval" / f"{domain}.yaml"
        return default if default.is_file() else None


# --- detection -----------------------------------------------------------------------------------------------


@dataclass
class Match:
    """Why a row is contaminated: one detector's best match."""

    benchmark: str
    detector: str
    item_id: str
    item_question: str
    score: float
    """ngram / numbers: share of the shorter text's n-grams found in the item (1.0: exact); embedding: cosine."""


def _overlaps(
    texts: list[str], reference: Reference, n: int, *, masked: bool, boilerplate_items: int | None
) -> list[tuple[int, float] | None]:
    """For each text: (best item, shared n-grams / n-grams of the shorter of the two), or None if nothing is shared."""
    index = reference.index(n, masked, boilerplate_items)
    best: list[tuple[int, float] | None] = []
    for text in texts:
        grams = ngrams(words(text, numbers=masked), n)
        hits = index.shared(grams)
        scored = [(count / max(1, min(len(grams), index.sizes[i])), -i) for i, count in hits.items()]
        score, neg_i = max(scored, default=(0.0, 1))
        best.append((-neg_i, score) if hits else None)
    return best


def _nearest(texts: list[str], reference: Reference, embedder: Any) -> list[tuple[int, float]]:
    """For each text: (most similar item, cosine similarity)."""
    from builder.novelty import embed

    bank = reference.embeddings(embedder)
    vectors = embed(embedder, texts)
    if not len(bank) or not len(vectors):
        return [(0, 0.0)] * len(texts)
    step = max(1, BLOCK_ELEMENTS // len(bank))
    nearest = []
    for start in range(0, len(vectors), step):
        similarities = vectors[start : start + step] @ bank.T
        for row in similarities:
            i = int(np.argmax(row))
            nearest.append((i, float(row[i])))
    return nearest


def find_matches(
    rows: Sequence[dict[str, Any]], reference: Reference, config: DecontaminationConfig, embedder: Any = None
) -> list[list[Match]]:
    """Each row's matches (one per detector that fired), in input order. A row's matches depend on its own text only,
    so rows can be checked in any batches (`builder.screen` checks them while the build runs)."""
    if not config.enabled or not rows or not reference.items:
        return [[] for _ in rows]
    if config.embedding_threshold is not None and embedder is None:
        raise ValueError(
            "decontamination: the embedding detector needs an embedder (builder.novelty.load_embedder(model)); pass"
            " one, or set embedding_threshold: null"
        )
    texts = [row_text(row) for row in rows]
    n = config.ngram or DEFAULT_NGRAM
    matches: list[list[Match]] = [[] for _ in rows]

    def record(detector: str, found: Iterable[tuple[int, float] | None], flagged: Callable[[float], bool]) -> None:
        for hits, result in zip(matches, found, strict=True):
            if result is not None and flagged(result[1]):
                item = reference.items[result[0]]
                hits.append(Match(item.benchmark, detector, item.item_id, item.question, round(result[1], 4)))

    if config.ngram is not None:
        record(
            "ngram",
            _overlaps(texts, reference, n, masked=False, boilerplate_items=config.boilerplate_items),
            lambda score: score > 0,
        )
    if config.numbers:
        exact = reference.masked()
        masked = _overlaps(texts, reference, n, masked=True, boilerplate_items=config.boilerplate_items)
        found = []
        for text, overlap in zip(texts, masked, strict=True):
            same = exact.get(" ".join(words(text, numbers=True)))
            found.append((same, 1.0) if same is not None else overlap)
        record("numbers", found, lambda score: score >= config.numbers_overlap)
    if config.embedding_threshold is not None:
        record("embedding", _nearest(texts, reference, embedder), lambda score: score >= config.embedding_threshold)
    return matches


def split_rows(
    rows: Sequence[dict[str, Any]], matches: Sequence[list[Match]], reference: Reference
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean rows, contaminated rows), each in input order: a contaminated row is a copy with a `contamination` list
    (its matches, as dicts); clean rows are returned as they are."""
    clean, contaminated = [], []
    for row, hits in zip(rows, matches, strict=True):
        if hits:
            contaminated.append({**row, "contamination": [asdict(hit) for hit in hits]})
        else:
            clean.append(row)
    if contaminated:
        tally = counts(contaminated)
        logger.warning(
            "Decontamination: %d of %d row(s) match an evaluation benchmark (%s; %s)",
            len(contaminated),
            len(rows),
            _pairs(tally["by_benchmark"]),
            _pairs(tally["by_detector"]),
        )
    elif rows:
        logger.info(
            "Decontamination: none of %d row(s) matches the %d benchmark question(s)", len(rows), len(reference.items)
        )
    return clean, contaminated


def check(
    rows: list[dict[str, Any]], reference: Reference, config: DecontaminationConfig, embedder: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean rows, contaminated rows), each in input order (see `split_rows`). The embedding detector needs
    `embedder` (the build's novelty embedder, `builder.novelty.load_embedder`)."""
    if not config.enabled or not rows or not reference.items:
        return list(rows), []
    return split_rows(rows, find_matches(rows, reference, config, embedder), reference)


def _pairs(counter: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.items())


def counts(contaminated: list[dict[str, Any]]) -> dict[str, Any]:
    """Contaminated rows in all, per benchmark and per detector (a row counts once under each it matched)."""
    by_benchmark: Counter[str] = Counter()
    by_detector: Counter[str] = Counter()
    for row in contaminated:
        by_benchmark.update({match["benchmark"] for match in row["contamination"]})
        by_detector.update({match["detector"] for match in row["contamination"]})
    return {
        "rows": len(contaminated),
        "by_benchmark": dict(sorted(by_benchmark.items())),
        "by_detector": {name: by_detector[name] for name in DETECTORS if by_detector[name]},
    }


def report(contaminated: list[dict[str, Any]], *, texts: bool = True) -> bytes:
    """contaminated.jsonl: per row its id (and version), question and matches. `texts=False` leaves out the
    question and the benchmark question (for files that are published: they would spread the benchmark's text)."""
    lines = []
    for row in contaminated:
        record: dict[str, Any] = {"id": row.get("id")}
        if row.get("version"):
            record["version"] = row["version"]
        if texts:
            record["question"] = row.get("question")
        record["contamination"] = [
            match if texts else {k: v for k, v in match.items() if k != "item_question"}
            for match in row["contamination"]
        ]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines).encode()


def write_report(contaminated: list[dict[str, Any]], path: str | Path, *, texts: bool = True) -> Path:
    """Write `report(contaminated)` to `path` atomically."""
    from nanoflux.runfolder import write_atomic

    path = Path(path)
    write_atomic(path, report(contaminated, texts=texts))
    return path


# --- one call for builds, releases and training ---------------------------------------------------------------


@dataclass
class Decontamination:
    """The outcome of `decontaminate`: the rows split, and what they were checked against."""

    clean: list[dict[str, Any]]
    contaminated: list[dict[str, Any]]
    config: DecontaminationConfig
    reference: Reference | None = None
    """None when no check ran (see `skipped`)."""
    skipped: str | None = None
    """Why no check ran (disabled, or the build's config predates decontamination)."""

    def summary(self) -> dict[str, Any]:
        """For summary.json, provenance.json and dataset cards."""
        if self.reference is None:
            return {"checked": False, "reason": self.skipped, "settings": asdict(self.config)}
        return {
            "checked": True,
            "eval_recipe": self.reference.recipe,
            "benchmarks": [asdict(source) for source in self.reference.benchmarks],
            "detectors": self.config.detectors,
            "settings": asdict(self.config),
            "rows_checked": len(self.clean) + len(self.contaminated),
            "contaminated": counts(self.contaminated),
        }


def decontaminate(
    rows: list[dict[str, Any]],
    config: DecontaminationConfig,
    *,
    domain: str,
    embedder: Any = None,
    reference: Reference | None = None,
    matches: Sequence[list[Match]] | None = None,
) -> Decontamination:
    """Check `rows` against the benchmarks `config` names for `domain` (the reference is loaded unless given: pass
    one to reuse it across calls; `matches`: the rows' matches, already found against it, e.g. by `builder.screen`).
    A disabled config returns every row as clean, with `skipped` saying so."""
    if not config.enabled:
        return Decontamination(list(rows), [], config, skipped="decontamination.enabled is false")
    if reference is None:
        recipe = config.recipe_for(domain)
        if recipe is None:
            raise DecontaminationError(
                f"decontamination.eval_recipe: no evaluation recipe for domain {domain!r} (got None). Fix: set"
                " decontamination.eval_recipe to an evaluation recipe such as configs/eval/medical.yaml, or set"
                " decontamination.enabled: false"
            )
        reference = load_reference(recipe)
    if matches is None:
        clean, contaminated = check(rows, reference, config, embedder)
    else:
        clean, contaminated = split_rows(rows, matches, reference) if reference.items else (list(rows), [])
    return Decontamination(clean, contaminated, config, reference)
