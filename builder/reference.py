"""The reference set decontamination checks against: the questions (and options) of an evaluation recipe's
benchmarks as items, their n-gram indexes and cached embeddings, and the text normalisation rows and items share."""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoflux.errors import NanoFluxError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_PROBE = "NanoFlux decontamination: which model embeds this sentence?"
_LABEL = re.compile(r"(?:(?<=\s)|^)\(?[A-Ja-j][.)](?=\s)")  # option labels: "(A) ", "b. ", "C) "
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NOT_WORD = re.compile(r"[^\w\s]|_")
OPTION_LETTERS = "ABCDEFGHIJ"


class DecontaminationError(NanoFluxError, RuntimeError):
    """The reference benchmarks cannot be loaded; the message names the benchmark, what failed and the fix."""


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
        found = [self.holders[lo:hi] for lo, hi in zip(left, right, strict=True) if hi > lo]
        if not found:
            return {}
        items, counts = np.unique(np.concatenate(found), return_counts=True)
        return dict(zip(items.tolist(), counts.tolist(), strict=True))


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
