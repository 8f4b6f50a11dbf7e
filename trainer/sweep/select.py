"""Choosing sweep cells on the dev partition, and saying what the dev data supports (`trainer/sweep_select.py`).

Every cell is evaluated on each benchmark's dev rows. The selected cell of a benchmark is the one with the highest dev
accuracy; on an exact tie, the one with fewer rows (cheaper to train and to publish), then the first cell id in
alphabetical order (`TIE_BREAK`: deterministic, and independent of the order the grid lists its values in). The
overall selected cell is chosen the same way on the macro-mean dev accuracy over the benchmarks.

A selection is then compared with *every* other trained cell on the same dev examples: a paired bootstrap CI of the
accuracy difference and McNemar's exact test (`nanoflux.scoring`, as `nanoflux eval` compares variants; for the overall
choice a stratified paired bootstrap over the benchmarks), or, when the per-example results are missing, whether the
two 95% CIs overlap. A cell whose difference CI includes 0 (or whose CI overlaps) is "not significantly different":
the report names every such cell, so a tie or a difference within the noise never reads as a winner. Cells that share
the selected cell's training (the same set of rows, `same_data_as`) are the same adapter: listed apart, never compared.
Only the selected cells are then evaluated on the test rows, so test accuracy never takes part in the choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Correct = Callable[[dict[str, Any], str], "list[tuple[str, bool]] | None"]
"""(cell record, benchmark name) -> the cell's per-example (id, correct) on that benchmark's dev rows, or None."""

TIE_BREAK = (
    "on an exact tie in dev accuracy, fewer rows (cheaper to train and to publish), then the first cell id in"
    " alphabetical order"
)
DECIDED_BY = {
    "accuracy": "the highest dev accuracy",
    "rows": "the tie-break: fewer rows",
    "cell_id": "the tie-break: the first cell id in alphabetical order",
}


def adapter_of(record: dict[str, Any]) -> str:
    """The cell whose training produced a record's adapter: itself, or the cell with the same rows it shares training
    with."""
    return record.get("same_data_as") or record["cell_id"]


def _accuracy(record: dict[str, Any], name: str) -> float | None:
    value = (record["scores"].get(name) or {}).get("accuracy")
    return None if value is None or math.isnan(value) else value


def _ranked(
    records: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float | None]
) -> list[tuple[dict[str, Any], float]]:
    """(record, score) of the scored records, selection order first: higher score, then fewer rows, then cell id."""
    scored = [(r, s) for r in records if (s := score(r)) is not None]
    return sorted(scored, key=lambda item: (-item[1], item[0]["dataset"]["rows"], item[0]["cell_id"]))


def _decided_by(ranked: list[tuple[dict[str, Any], float]]) -> str | None:
    """Which rule put the selected cell ahead of the next cell of another adapter: `accuracy`, `rows` or `cell_id`."""
    (best, score), chosen = ranked[0], adapter_of(ranked[0][0])
    other = next(((r, s) for r, s in ranked[1:] if adapter_of(r) != chosen), None)
    if other is None:
        return None
    if score != other[1]:
        return "accuracy"
    return "rows" if best["dataset"]["rows"] != other[0]["dataset"]["rows"] else "cell_id"


def _paired(
    a: list[tuple[str, bool]] | None, b: list[tuple[str, bool]] | None
) -> tuple[list[bool], list[bool]] | None:
    if a is None or b is None or [i for i, _ in a] != [i for i, _ in b]:
        return None
    return [c for _, c in a], [c for _, c in b]


def compare(
    best: dict[str, Any], other: dict[str, Any], name: str, correct: Correct, *, samples: int, seed: int
) -> dict[str, Any]:
    """The selected cell against another cell on one benchmark's dev rows (difference = selected - other)."""
    from nanoflux.scoring import paired_comparison

    pair = _paired(correct(best, name), correct(other, name))
    if pair is not None:
        stats = paired_comparison(*pair, samples=samples, seed=seed)
        return {"method": "paired bootstrap + McNemar", **stats, "significant": bool(stats["ci_low"] > 0)}
    a, b = best["scores"][name], other["scores"][name]
    return {
        "method": "95% CI overlap",
        "n": a["n"],
        "delta": a["accuracy"] - b["accuracy"],
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "significant": bool(a["ci_low"] > b["ci_high"]),
    }


def compare_overall(
    best: dict[str, Any], other: dict[str, Any], names: Sequence[str], correct: Correct, *, samples: int, seed: int
) -> dict[str, Any] | None:
    """Macro-mean dev accuracy of the selected cell against another cell: a stratified paired bootstrap over the
    benchmarks' per-example differences; None when some per-example results are missing."""
    from nanoflux.scoring import aggregate, mcnemar_exact

    pairs = [_paired(correct(best, name), correct(other, name)) for name in names]
    if any(pair is None for pair in pairs):
        return None
    stats = aggregate(
        [[float(x) - float(y) for x, y in zip(a, b, strict=True)] for a, b in pairs], samples=samples, seed=seed
    )
    wins = sum(x and not y for a, b in pairs for x, y in zip(a, b, strict=True))
    losses = sum(y and not x for a, b in pairs for x, y in zip(a, b, strict=True))
    return {
        "method": "stratified paired bootstrap (macro) + McNemar",
        "n": stats["n"],
        "delta": stats["macro"],
        "ci_low": stats["macro_ci_low"],
        "ci_high": stats["macro_ci_high"],
        "wins": wins,
        "losses": losses,
        "p_value": mcnemar_exact(wins, losses),
        "significant": bool(stats["macro_ci_low"] > 0),
    }


def _choice(
    ranked: list[tuple[dict[str, Any], float]],
    versus: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None],
) -> dict[str, Any]:
    """The selection from `ranked`, compared with the first cell of every other adapter (`versus(selected, other)`)."""
    best, score = ranked[0]
    chosen = adapter_of(best)
    comparisons: dict[str, dict[str, Any] | None] = {}
    seen = {chosen}
    for record, _ in ranked[1:]:
        if adapter_of(record) not in seen:  # one comparison per adapter: cells sharing training have the same results
            seen.add(adapter_of(record))
            comparisons[record["cell_id"]] = versus(best, record)
    runner = next(iter(comparisons), None)
    return {
        "cell": best["cell_id"],
        "score": score,
        "runner_up": runner,
        "comparison": comparisons[runner] if runner else None,
        "comparisons": comparisons,
        "decided_by": _decided_by(ranked),
        "tied": [r["cell_id"] for r, s in ranked[1:] if s == score and adapter_of(r) != chosen],
        "same_adapter": [r["cell_id"] for r, _ in ranked if adapter_of(r) == chosen and r is not best],
        "not_significant": [cell for cell, c in comparisons.items() if c is not None and not c["significant"]],
        "not_compared": [cell for cell, c in comparisons.items() if c is None],
    }


def select_cells(
    records: Sequence[dict[str, Any]],
    benchmarks: Sequence[tuple[str, str]],
    correct: Correct,
    *,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The cells chosen on dev: per benchmark and overall, each compared with every other trained cell, and
    `test_cells` (the cells to evaluate on the test rows: the overall choice first, then each benchmark's)."""
    names = [name for name, _ in benchmarks]
    chosen: dict[str, Any] = {"tie_break": TIE_BREAK, "benchmarks": {}, "overall": None, "test_cells": []}
    for name in names:
        ranked = _ranked(records, lambda r, name=name: _accuracy(r, name))
        if ranked:
            choice = _choice(
                ranked, lambda best, other, name=name: compare(best, other, name, correct, samples=samples, seed=seed)
            )
            chosen["benchmarks"][name] = {"dev_accuracy": choice.pop("score"), **choice}

    def macro(record: dict[str, Any]) -> float | None:
        values = [_accuracy(record, name) for name in names]
        return None if any(v is None for v in values) else sum(values) / len(values)

    ranked = _ranked(records, macro)
    if ranked:
        choice = _choice(
            ranked, lambda best, other: compare_overall(best, other, names, correct, samples=samples, seed=seed)
        )
        chosen["overall"] = {"dev_macro_accuracy": choice.pop("score"), **choice}
    order = ([chosen["overall"]["cell"]] if chosen["overall"] else []) + [
        c["cell"] for c in chosen["benchmarks"].values()
    ]
    chosen["test_cells"] = list(dict.fromkeys(order))
    return chosen


# --- in words --------------------------------------------------------------------------------------------


def _ids(cells: Sequence[str]) -> str:
    return ", ".join(f"`{cell}`" for cell in cells)


def _points(comparison: dict[str, Any]) -> str:
    interval = (
        f" [{100 * comparison['ci_low']:+.1f}, {100 * comparison['ci_high']:+.1f}]"
        if comparison.get("ci_low") is not None
        else ""
    )
    p_value = f", McNemar p = {comparison['p_value']:.2g}" if comparison.get("p_value") is not None else ""
    return f"{100 * comparison['delta']:+.1f}{interval} points{p_value}"


def verdict(choice: dict[str, Any]) -> str:
    """A selection against the other cells, in a few words (a table cell)."""
    if choice.get("runner_up") is None:
        return "no other trained cell to compare with"
    if choice.get("not_significant"):
        return f"no significant difference from {_ids(choice['not_significant'])}"
    if choice.get("not_compared"):
        return f"not compared with {_ids(choice['not_compared'])} (per-example dev results missing)"
    how = (
        "McNemar p = {:.2g}".format(choice["comparison"]["p_value"])
        if choice["comparison"].get("p_value") is not None
        else "95% CIs apart"
    )
    return f"significantly better than every other cell (runner-up `{choice['runner_up']}`: {how})"


def finding(choice: dict[str, Any], what: str, accuracy: float) -> str:
    """What the dev data supports about a selection, in a sentence or two: its margin over the runner-up with the
    paired CI, every cell it is not significantly different from, and which rule picked it (accuracy or the
    tie-break)."""
    cell = f"`{choice['cell']}`"
    shared = (
        f" ({_ids(choice['same_adapter'])} shares its training: the same rows)" if choice.get("same_adapter") else ""
    )
    if choice.get("runner_up") is None:
        return (
            f"{what}: {cell}{shared} is the only trained cell with a {100 * accuracy:.1f}% dev score; nothing to"
            " compare it with."
        )
    comparison, runner = choice["comparison"], f"`{choice['runner_up']}`"
    rule = DECIDED_BY[choice["decided_by"]]
    if choice["tied"]:
        head = (
            f"{what}: {cell}{shared} ties with {_ids(choice['tied'])} at {100 * accuracy:.1f}% on dev; it was chosen"
            f" by {rule}."
        )
    else:
        head = f"{what}: {cell}{shared} has the highest dev score ({100 * accuracy:.1f}%)."
    if comparison is None:
        return (
            f"{head} It was not compared with {runner} (per-example dev results missing), so the data do not show it"
            " is better."
        )
    if not choice["not_significant"] and not choice["not_compared"]:
        return (
            f"{head} It is significantly better than every other cell on dev (runner-up {runner}:"
            f" {_points(comparison)})."
        )
    lines = [head]
    if choice["not_significant"]:
        method = (
            "the paired 95% CI of the difference includes 0"
            if comparison["method"] != "95% CI overlap"
            else "the 95% CIs overlap"
        )
        cells = ", ".join(f"`{cell}` ({_points(choice['comparisons'][cell])})" for cell in choice["not_significant"])
        lines.append(
            f"**No significant difference** from {cells}: {method}, so the dev data do not single out one of these"
            " cells."
        )
    if choice["not_compared"]:
        lines.append(f"Not compared with {_ids(choice['not_compared'])} (per-example dev results missing).")
    return " ".join(lines)
