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

import io
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoflux.errors import NanoFluxError

logger = logging.getLogger(__name__)

DETECTORS = ("ngram", "numbers", "embedding")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NGRAM = 8
BLOCK_ELEMENTS = 1 << 24  # similarities computed at once (64 MB of float32)
CACHE_PROBE = "NanoFlux decontamination: which model embeds this sentence?"

_LABEL = re.compile(r"(?:(?<=\s)|^)\(?[A-Ja-j][.)](?=\s)")  # option labels: "(A) ", "b. ", "C) "
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NOT_WORD = re.compile(r"[^\w\s]|_")
OPTION_LETTERS = "ABCDEFGHIJ"


class DecontaminationError(NanoFluxError, RuntimeError):
    """The reference benchmarks cannot be loaded; the message names the benchmark, what failed and the fix."""


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


# --- reference set -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceItem:
    """One benchmark question: the raw question text and its options (empty when inline or none)."""

    benchmark: str
    item_id: str
    question: str
    options: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Question and lettered options, laid out as a NanoFlux row's question is."""
        options = " ".join(
            f"({OPTION_LETTERS[i]}) {option}" for i, option in enumerate(self.options[: len(OPTION_LETTERS)])
        )
        return f"{self.question} {options}" if options else self.question


@dataclass
class BenchmarkSource:
    """Where a benchmark's reference questions came from (for provenance and cards)."""

    name: str
    path: str
    subset: str | None
    split: str
    revision: str | None
    questions: int


@dataclass
class GramIndex:
    """N-gram hashes (sorted) with the item holding each: compact (12 bytes an n-gram) and searched with numpy."""

    hashes: np.ndarray
    holders: np.ndarray
    sizes: list[int]
    """N-grams per item (a duplicate item: its first copy's)."""

    @classmethod
    def build(
        cls, hashes: np.ndarray, holders: np.ndarray, sizes: list[int], boilerplate_items: int | None
    ) -> GramIndex:
        """Sort by hash; drop n-grams held by more than `boilerplate_items` items (stock phrasing)."""
        order = np.lexsort((holders, hashes))
        hashes, holders = hashes[order], holders[order]
        if boilerplate_items is not None and len(hashes):
            _, counts = np.unique(hashes, return_counts=True)
            keep = np.repeat(counts <= boilerplate_items, counts)
            logger.debug(
                "Ignoring %d boilerplate n-gram(s) (in more than %d benchmark questions)",
                int(np.sum(counts > boilerplate_items)),
                boilerplate_items,
            )
            hashes, holders = hashes[keep], holders[keep]
        return cls(hashes, holders, sizes)

    def shared(self, grams: set[str]) -> dict[int, int]:
        """{item: how many of `grams` it holds}."""
        if not grams or not len(self.hashes):
            return {}
        query = np.fromiter(map(hash, grams), dtype=np.int64, count=len(grams))
        left, right = np.searchsorted(self.hashes, query, "left"), np.searchsorted(self.hashes, query, "right")
        found = [self.holders[lo:hi] for lo, hi in zip(left, right) if hi > lo]
        if not found:
            return {}
        items, counts = np.unique(np.concatenate(found), return_counts=True)
        return dict(zip(items.tolist(), counts.tolist()))


@dataclass
class Reference:
    """The reference questions of an evaluation recipe, with lazily built lookups (reused across checks)."""

    items: list[ReferenceItem]
    benchmarks: list[BenchmarkSource]
    recipe: str | None = None
    _indexes: dict[tuple[int, bool, int | None], GramIndex] = field(default_factory=dict, repr=False)
    _embeddings: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _masked: dict[str, int] | None = field(default=None, repr=False)

    @property
    def texts(self) -> list[str]:
        """Each benchmark question with its options: what the embedding detector compares, and what
        `seed_novelty_bank` adds to a build's novelty bank."""
        return [item.text for item in self.items]

    def index(self, n: int, masked: bool, boilerplate_items: int | None) -> GramIndex:
        """The n-gram index of the items (built once per setting). Duplicate questions (same normalised text) count
        once, under the first item, so that a benchmark's repeats do not make its n-grams look like boilerplate."""
        key = (n, masked, boilerplate_items)
        if key not in self._indexes:
            hashes: list[int] = []
            holders: list[int] = []
            sizes: list[int] = []
            first: dict[str, int] = {}
            for i, item in enumerate(self.items):
                tokens = words(item.text, numbers=masked)
                text = " ".join(tokens)
                if text in first:
                    sizes.append(sizes[first[text]])
                    continue
                first[text] = i
                grams = ngrams(tokens, n)
                sizes.append(len(grams))
                hashes += map(hash, grams)
                holders += [i] * len(grams)
            self._indexes[key] = GramIndex.build(
                np.array(hashes, dtype=np.int64), np.array(holders, dtype=np.int64), sizes, boilerplate_items
            )
        return self._indexes[key]

    def masked(self) -> dict[str, int]:
        """{number-masked normalised text: first item with it}, for exact number-swap matches."""
        if self._masked is None:
            self._masked = {}
            for i, item in enumerate(self.items):
                self._masked.setdefault(" ".join(words(item.text, numbers=True)), i)
        return self._masked

    def embeddings(self, embedder: Any) -> np.ndarray:
        """Unit-norm embeddings of `texts`: computed once per embedder, and kept on disk under
        `$NANOFLUX_CACHE/decontamination/` (a benchmark of thousands of questions takes minutes on a CPU)."""
        if id(embedder) not in self._embeddings:
            self._embeddings[id(embedder)] = _cached_embeddings(embedder, self.texts)
        return self._embeddings[id(embedder)]


def _cached_embeddings(embedder: Any, texts: list[str]) -> np.ndarray:
    """embed(embedder, texts) through a file cache keyed by the texts and the model (identified by what it makes of
    a probe sentence, so that any change of model or weights misses the cache)."""
    import hashlib

    from builder.novelty import embed
    from nanoflux.models import cache_root
    from nanoflux.runfolder import write_atomic

    if not texts:
        return embed(embedder, texts)
    digest = hashlib.sha256(np.round(embed(embedder, [CACHE_PROBE]), 4).tobytes())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = cache_root() / "decontamination" / f"{digest.hexdigest()}.npy"
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
        except (OSError, ValueError):
            logger.warning("Ignoring an unreadable embedding cache file %s", path)
    logger.info("Embedding %d benchmark question(s) for decontamination (cached in %s)", len(texts), path.parent)
    vectors = embed(embedder, texts)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as err:  # a read-only home: work on without the cache
        logger.warning("Could not cache benchmark embeddings in %s (%s)", path, err)
    return vectors


def load_reference(recipe: str | Path) -> Reference:
    """The benchmark questions (raw question plus options) of evaluation recipe `recipe`: local files offline, Hub
    ids online (`datasets` cache honoured). Raises DecontaminationError when a benchmark cannot be read."""
    from nanoflux.benchmarks import load_rows, recipe_benchmarks

    items: list[ReferenceItem] = []
    sources = []
    for bench in recipe_benchmarks(recipe):
        try:
            rows = load_rows(bench.path, subset=bench.subset, split=bench.split, revision=bench.revision)
        except Exception as err:  # datasets raises many types (not found, offline, bad file): all end here
            raise DecontaminationError(
                f"decontamination.eval_recipe: benchmark {bench.name}"
                f" ({bench.path}{f' {bench.subset}' if bench.subset else ''} [{bench.split}]) from {recipe} could not"
                f" be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). Fix: run"
                " online once to cache it, point decontamination.eval_recipe at local files (e.g."
                " configs/eval/local.yaml), or set decontamination.enabled: false"
            ) from err
        bench_items = benchmark_items(rows, bench)
        items += bench_items
        sources.append(
            BenchmarkSource(bench.name, bench.path, bench.subset, bench.split, bench.revision, len(bench_items))
        )
        logger.info(
            "Decontamination reference %s: %d questions from %s [%s]",
            bench.name,
            len(bench_items),
            bench.path,
            bench.split,
        )
    return Reference(items, sources, _label(Path(recipe)))


def _label(path: Path) -> str:
    """A recipe path as records show it: relative to the project (configs/eval/medical.yaml) when inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def benchmark_items(rows: Any, bench: Any) -> list[ReferenceItem]:
    """A benchmark's rows (in its own schema, mapped by `bench.columns`) -> ReferenceItems; rows without a
    question are skipped. Every row counts, labelled or not: an unlabelled test question is still a test question."""
    columns = bench.columns
    available = list(rows.column_names)
    for name in filter(None, [columns.question, columns.id, columns.options, *(columns.option_columns or [])]):
        if name not in available:
            raise DecontaminationError(
                f"{bench.name}: column {name!r} is not in {bench.path} (has: {available}). "
                "Fix: map it with benchmarks[].columns in the evaluation recipe"
            )
    items = []
    for index, row in enumerate(rows):
        question = str(row[columns.question] or "").strip()
        if not question:
            continue
        options: list[Any] = []
        if columns.options:
            value = row[columns.options]
            options = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])
        elif columns.option_columns:
            options = [row[c] for c in columns.option_columns]
        item_id = str(row[columns.id]) if columns.id else str(index)
        items.append(ReferenceItem(bench.name, item_id, question, tuple(str(o) for o in options if o is not None)))
    return items


# --- text ----------------------------------------------------------------------------------------------------


def words(text: str, *, numbers: bool = False) -> list[str]:
    """Normalised words: NFKC, option labels dropped, (numbers masked as `0`), lowercase, punctuation removed."""
    text = _LABEL.sub(" ", unicodedata.normalize("NFKC", text))
    if numbers:
        text = _NUMBER.sub("0", text)
    return _NOT_WORD.sub(" ", text.lower()).split()


def ngrams(tokens: Sequence[str], n: int) -> set[str]:
    """Word n-grams of `tokens`; a text shorter than n words is one gram (compared whole)."""
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def row_text(row: dict[str, Any]) -> str:
    """What is checked of a row: its question, and its options when the row has an `options` list."""
    options = row.get("options")
    if isinstance(options, (list, tuple)) and options:
        return f"{row['question']} " + " ".join(
            f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options[: len(OPTION_LETTERS)])
        )
    return str(row["question"])


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
    """For each text: (best item, shared n-grams / n-grams of the shorter of the two), or None when nothing is shared."""
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


def check(
    rows: list[dict[str, Any]], reference: Reference, config: DecontaminationConfig, embedder: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean rows, contaminated rows), each in input order. Clean rows are returned as they are; a contaminated row is
    a copy with a `contamination` list (one Match per detector that fired, as dicts). The embedding detector needs
    `embedder` (the build's novelty embedder, `builder.novelty.load_embedder`)."""
    if not config.enabled or not rows or not reference.items:
        return list(rows), []
    if config.embedding_threshold is not None and embedder is None:
        raise ValueError(
            "decontamination: the embedding detector needs an embedder (builder.novelty.load_embedder(model)); pass"
            " one, or set embedding_threshold: null"
        )
    texts = [row_text(row) for row in rows]
    n = config.ngram or DEFAULT_NGRAM
    matches: list[list[Match]] = [[] for _ in rows]

    def record(detector: str, found: Iterable[tuple[int, float] | None], flagged: Callable[[float], bool]) -> None:
        for hits, result in zip(matches, found):
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
        for text, overlap in zip(texts, masked):
            same = exact.get(" ".join(words(text, numbers=True)))
            found.append((same, 1.0) if same is not None else overlap)
        record("numbers", found, lambda score: score >= config.numbers_overlap)
    if config.embedding_threshold is not None:
        record("embedding", _nearest(texts, reference, embedder), lambda score: score >= config.embedding_threshold)

    clean, contaminated = [], []
    for row, hits in zip(rows, matches):
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
    else:
        logger.info(
            "Decontamination: none of %d row(s) matches the %d benchmark question(s)", len(rows), len(reference.items)
        )
    return clean, contaminated


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
) -> Decontamination:
    """Check `rows` against the benchmarks `config` names for `domain` (the reference is loaded unless given: pass
    one to reuse it across calls). A disabled config returns every row as clean, with `skipped` saying so."""
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
    clean, contaminated = check(rows, reference, config, embedder)
    return Decontamination(clean, contaminated, config, reference)
