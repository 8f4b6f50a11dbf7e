"""Choosing sweep cells on the dev partition (`trainer/sweep_select.py`).

Every cell is evaluated on each benchmark's dev rows; the selected cell of a benchmark is the one with the highest dev
accuracy (then fewer rows: cheaper, then the earlier cell), and the overall selected cell the one with the highest
macro-mean dev accuracy over the benchmarks. Each selection is compared with its runner-up (the next cell trained on
other rows) on the same dev examples: a paired bootstrap CI of the accuracy difference and McNemar's exact test
(`trainer.scoring`), or, when the per-example results are missing, whether the two 95% CIs overlap. A difference
whose CI includes 0 (or overlapping CIs) is reported as "no significant difference". Only the selected cells are then
evaluated on the test rows, so test accuracy never takes part in the choice.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

Correct = Callable[[dict[str, Any], str], "list[tuple[str, bool]] | None"]
"""(cell record, benchmark name) -> the cell's per-example (id, correct) on that benchmark's dev rows, or None."""


def _accuracy(record: dict[str, Any], name: str) -> float | None:
    value = (record["scores"].get(name) or {}).get("accuracy")
    return None if value is None or math.isnan(value) else value


def _ranked(records: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float | None]) -> list[dict[str, Any]]:
    """Scored records, best first: higher score, then fewer rows (cheaper), then the earlier cell."""
    scored = [(i, r, s) for i, r in enumerate(records) if (s := score(r)) is not None]
    return [r for _, r, _ in sorted(scored, key=lambda item: (-item[2], item[1]["dataset"]["rows"], item[0]))]


def _runner_up(ranked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best cell trained on other rows than the selected one (a cell with the same rows is the same adapter)."""
    best = ranked[0]
    return next((r for r in ranked[1:] if r["dataset"]["fingerprint"] != best["dataset"]["fingerprint"]), None)


def _paired(a: list[tuple[str, bool]] | None, b: list[tuple[str, bool]] | None) -> tuple[list[bool], list[bool]] | None:
    if a is None or b is None or [i for i, _ in a] != [i for i, _ in b]:
        return None
    return [c for _, c in a], [c for _, c in b]


def compare(best: dict[str, Any], runner: dict[str, Any], name: str, correct: Correct, *, samples: int, seed: int) -> dict[str, Any]:
    """The selected cell against its runner-up on one benchmark's dev rows (difference = selected - runner-up)."""
    from trainer.scoring import paired_comparison

    pair = _paired(correct(best, name), correct(runner, name))
    if pair is not None:
        stats = paired_comparison(*pair, samples=samples, seed=seed)
        return {"method": "paired bootstrap + McNemar", **stats, "significant": bool(stats["ci_low"] > 0)}
    a, b = best["scores"][name], runner["scores"][name]
    return {"method": "95% CI overlap", "n": a["n"], "delta": a["accuracy"] - b["accuracy"], "ci_low": None, "ci_high": None,
            "p_value": None, "significant": bool(a["ci_low"] > b["ci_high"])}  # fmt: skip


def compare_overall(best: dict[str, Any], runner: dict[str, Any], names: Sequence[str], correct: Correct, *, samples: int, seed: int) -> dict[str, Any] | None:
    """Macro-mean dev accuracy of the selected cell against its runner-up: a stratified paired bootstrap over the
    benchmarks' per-example differences; None when some per-example results are missing."""
    from trainer.scoring import aggregate, mcnemar_exact

    pairs = [_paired(correct(best, name), correct(runner, name)) for name in names]
    if any(pair is None for pair in pairs):
        return None
    stats = aggregate([[float(x) - float(y) for x, y in zip(a, b)] for a, b in pairs], samples=samples, seed=seed)
    wins = sum(x and not y for a, b in pairs for x, y in zip(a, b))
    losses = sum(y and not x for a, b in pairs for x, y in zip(a, b))
    return {"method": "stratified paired bootstrap (macro) + McNemar", "n": stats["n"], "delta": stats["macro"], "ci_low": stats["macro_ci_low"],
            "ci_high": stats["macro_ci_high"], "wins": wins, "losses": losses, "p_value": mcnemar_exact(wins, losses),
            "significant": bool(stats["macro_ci_low"] > 0)}  # fmt: skip


def select_cells(records: Sequence[dict[str, Any]], benchmarks: Sequence[tuple[str, str]], correct: Correct, *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The cells chosen on dev: per benchmark and overall, each with its runner-up comparison, and `test_cells` (the
    cells to evaluate on the test rows: the overall choice first, then each benchmark's)."""
    names = [name for name, _ in benchmarks]
    chosen: dict[str, Any] = {"benchmarks": {}, "overall": None, "test_cells": []}
    for name in names:
        ranked = _ranked(records, lambda r, name=name: _accuracy(r, name))
        if not ranked:
            continue
        runner = _runner_up(ranked)
        chosen["benchmarks"][name] = {
            "cell": ranked[0]["cell_id"],
            "dev_accuracy": _accuracy(ranked[0], name),
            "runner_up": runner["cell_id"] if runner else None,
            "comparison": compare(ranked[0], runner, name, correct, samples=samples, seed=seed) if runner else None,
        }

    def macro(record: dict[str, Any]) -> float | None:
        values = [_accuracy(record, name) for name in names]
        return None if any(v is None for v in values) else sum(values) / len(values)

    ranked = _ranked(records, macro)
    if ranked:
        runner = _runner_up(ranked)
        chosen["overall"] = {
            "cell": ranked[0]["cell_id"],
            "dev_macro_accuracy": macro(ranked[0]),
            "runner_up": runner["cell_id"] if runner else None,
            "comparison": compare_overall(ranked[0], runner, names, correct, samples=samples, seed=seed) if runner else None,
        }
    order = ([chosen["overall"]["cell"]] if chosen["overall"] else []) + [c["cell"] for c in chosen["benchmarks"].values()]
    chosen["test_cells"] = list(dict.fromkeys(order))
    return chosen


def verdict(choice: dict[str, Any]) -> str:
    """A selection's comparison with its runner-up, in words."""
    comparison = choice.get("comparison")
    if choice.get("runner_up") is None:
        return "no other cell to compare with"
    if comparison is None:
        return "not compared with the runner-up (per-example dev results missing)"
    if comparison["significant"]:
        return "better than the runner-up" + (f" (McNemar p = {comparison['p_value']:.2g})" if comparison.get("p_value") is not None else " (95% CIs apart)")
    return "no significant difference from the runner-up"
