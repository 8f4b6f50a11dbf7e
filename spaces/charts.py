"""Bars that read on their own: every bar carries its value, and a zero bar is drawn as a short stub with its "0"
label instead of vanishing into the axis (a bar of height 0 is invisible, and "0" differs from "not measured").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

STUB = 0.012  # a zero bar's stub, as a fraction of the y range
LABEL_SIZE = 8


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def labelled_bars(
    axes: Any,
    xs: Sequence[float],
    values: Sequence[float | None],
    width: float,
    *,
    fmt: Callable[[float], str],
    label: str | None = None,
    color: str | None = None,
    yerr: Any = None,
) -> Any:
    """Draw one bar per x with its value written above it; a zero bar gets a stub just above the axis, a missing
    value (None/NaN) no bar and the label "n/a". Returns the BarContainer. Call `floor_below_zero` after drawing."""
    heights = [0.0 if _missing(v) else float(v) for v in values]
    bars = axes.bar(xs, heights, width, yerr=yerr, capsize=3 if yerr is not None else 0, label=label, color=color)
    color = bars.patches[0].get_facecolor() if bars.patches else color
    for x, value, bar in zip(xs, values, bars.patches, strict=True):
        if _missing(value):
            text = "n/a"
        else:
            text = fmt(float(value))
            if value == 0:
                # A zero bar: a thick line in the bar's color at y=0, above the axis (the y range starts below 0).
                axes.plot(
                    [x - width / 2, x + width / 2],
                    [0, 0],
                    color=color,
                    linewidth=3,
                    solid_capstyle="butt",
                    zorder=bar.get_zorder() + 1,
                )
        axes.annotate(
            text,
            (x, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=LABEL_SIZE,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            zorder=5,
        )
    return bars


def floor_below_zero(axes: Any, top: float | None = None) -> None:
    """Start the y axis a little below 0, so that zero stubs stand clear of it, and draw the zero line."""
    _, high = axes.get_ylim()
    high = top if top is not None else high * 1.12  # room for the labels above the tallest bar
    axes.set_ylim(-(high * STUB * 3), high)
    axes.axhline(0, color="grey", linewidth=0.8, zorder=0)
