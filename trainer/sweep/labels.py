"""How a sweep's settings and scores read in its tables, plots and card: the swept dimensions and their titles, a
setting in words (L3-L4, complexity 2-3 / all, failed first / build order), a cell's label, accuracies as percentages.
"""

from __future__ import annotations

import json
import math
from typing import Any

DIMENSIONS = ("quality_levels", "complexity_levels", "size", "prefer_defender_failed")

DIMENSION_TITLES = {
    "quality_levels": "reasoning-quality band",
    "complexity_levels": "judge-rated complexity",
    "size": "dataset size (rows requested)",
    "prefer_defender_failed": "ranking",
}


def display(dim: str, value: Any) -> str:
    """How a setting reads in tables and plots: L3-L4, complexity 2-3 / all, 50, failed first / build order."""
    if dim == "quality_levels":
        return _levels(value, "L")
    if dim == "complexity_levels":
        return "all" if value is None else _levels(value, "")
    if dim == "prefer_defender_failed":
        return "failed first" if value else "build order"
    return str(value)


def _levels(levels: list[int], prefix: str) -> str:
    if len(levels) > 1 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"{prefix}{levels[0]}-{prefix}{levels[-1]}" if prefix else f"{levels[0]}-{levels[-1]}"
    return ",".join(f"{prefix}{level}" for level in levels)


def short(dim: str) -> str:
    return {
        "quality_levels": "quality",
        "complexity_levels": "complexity",
        "size": "size",
        "prefer_defender_failed": "ranking",
    }[dim]


def cell_label(settings: Any) -> str:
    return ", ".join(f"{short(dim)} {display(dim, getattr(settings, dim))}" for dim in DIMENSIONS)


def value_order(dim: str, value: Any) -> tuple:
    if dim in ("quality_levels", "complexity_levels"):
        return (1, ()) if value is None else (0, tuple(value))
    return (0, value)


def swept_dimensions(records: list[dict[str, Any]]) -> list[str]:
    """The dimensions that take more than one value across the cells."""
    return [dim for dim in DIMENSIONS if len({json.dumps(r["settings"][dim]) for r in records}) > 1]


def percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def score_text(score: dict[str, Any] | None) -> str:
    return (
        "–"
        if not score or score.get("accuracy") is None
        else f"{percent(score['accuracy'])} [{percent(score['ci_low'])}, {percent(score['ci_high'])}]"
    )


def delta_text(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return ""
    interval = (
        f" [{100 * comparison['ci_low']:+.1f}, {100 * comparison['ci_high']:+.1f}]"
        if comparison.get("ci_low") is not None
        else ""
    )
    return f"{100 * comparison['delta']:+.1f}{interval} points"
