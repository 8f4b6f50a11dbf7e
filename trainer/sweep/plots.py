"""A sweep's plots: dev accuracy against one swept dimension, one panel per benchmark on a grid with no empty slot
where one exists (4 benchmarks: 2x2), and a y axis that starts below 0 so a point or line at 0 stays visible."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.sweep.labels import DIMENSION_TITLES, DIMENSIONS, display, short, value_order


def panel_grid(count: int, max_columns: int = 5) -> tuple[int, int]:
    """(rows, columns) for `count` panels: a grid with no empty slot where one of at most `max_columns` columns exists
    (4 -> 2x2, 5 -> 1x5, 6 -> 2x3, 9 -> 3x3), else the fewest empty slots (7 -> 2x4, the legend takes the spare one);
    among equals the squarest, then the wider."""
    if count <= 3:
        return 1, max(count, 1)
    options = [
        (rows * columns - count, abs(columns - rows), -columns, rows, columns)
        for columns in range(2, max_columns + 1)
        for rows in [math.ceil(count / columns)]
    ]
    _, _, _, rows, columns = min(options)
    return rows, columns


Y_LIMITS = (-0.06, 1.06)  # below 0: a cell, base model or test point at 0 accuracy is drawn above the axis, not on it


def dimension_figure(table: list[dict[str, Any]], dim: str, benchmarks: list[tuple[str, str]], title: str) -> Any:
    """Dev accuracy (95% CI error bars, a marker on every point) against one dimension, one panel per benchmark, one
    line per combination of the other swept dimensions; the base model dashed (dev) and dotted (test), a thin line at
    0, the selected cell starred and named by its cell id, and its test accuracy as an open diamond. Returns the
    Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dev = [row for row in table if row["partition"] == "dev" and row["accuracy"] is not None]
    others = [d for d in DIMENSIONS if d != dim and len({json.dumps(row[d]) for row in table}) > 1]
    values = sorted({json.dumps(row[dim]) for row in table}, key=lambda v: value_order(dim, json.loads(v)))
    x_of = {value: i for i, value in enumerate(values)}
    rows_n, columns = panel_grid(len(benchmarks))
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows_n + 0.6))
    FigureCanvasAgg(figure)
    legend: dict[str, Any] = {}
    for index, (name, bench_title) in enumerate(benchmarks):
        axes = figure.add_subplot(rows_n, columns, index + 1)
        axes.axhline(0, color="black", linewidth=0.6, zorder=1)
        points = [row for row in dev if row["benchmark"] == name]
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in points:
            key = ", ".join(f"{short(d)} {display(d, row[d])}" for d in others) or "cells"
            groups.setdefault(key, []).append(row)
        # In a one-at-a-time design, cells that vary another dimension are single points here: leave them out.
        if any(len(group) > 1 for group in groups.values()):
            groups = {key: group for key, group in groups.items() if len(group) > 1}
        for g, (label, group) in enumerate(sorted(groups.items())):
            group.sort(key=lambda row: x_of[json.dumps(row[dim])])
            offset = (g - (len(groups) - 1) / 2) * 0.06
            xs = [x_of[json.dumps(row[dim])] + offset for row in group]
            errors = [
                [max(0.0, row["accuracy"] - row["ci_low"]) for row in group],
                [max(0.0, row["ci_high"] - row["accuracy"]) for row in group],
            ]
            axes.errorbar(
                xs,
                [row["accuracy"] for row in group],
                yerr=errors,
                marker="o",
                markersize=5,
                capsize=3,
                label=label,
                zorder=3,
            )
            for x, row in zip(xs, group, strict=True):
                if row["selected"]:
                    axes.plot(
                        [x],
                        [row["accuracy"]],
                        marker="*",
                        markersize=16,
                        color="gold",
                        markeredgecolor="black",
                        zorder=5,
                        linestyle="none",
                        label="selected on dev",
                    )
                    axes.annotate(
                        row["cell_id"],
                        (x, row["accuracy"]),
                        textcoords="offset points",
                        xytext=(7, 7),
                        fontsize=7,
                        zorder=6,
                    )
                    test = next(
                        (
                            t
                            for t in table
                            if t["partition"] == "test" and t["cell_id"] == row["cell_id"] and t["benchmark"] == name
                        ),
                        None,
                    )
                    if test and test["accuracy"] is not None:
                        axes.plot(
                            [x + 0.12],
                            [test["accuracy"]],
                            marker="D",
                            markersize=7,
                            fillstyle="none",
                            color="black",
                            linestyle="none",
                            label="selected cell on test",
                            zorder=5,
                        )
        for partition, style in (("dev", "--"), ("test", ":")):
            base = next(
                (
                    row["base_accuracy"]
                    for row in table
                    if row["benchmark"] == name and row["partition"] == partition and row["base_accuracy"] is not None
                ),
                None,
            )
            if base is not None:
                axes.axhline(
                    base, linestyle=style, color="gray", linewidth=1.2, label=f"base model ({partition})", zorder=2
                )
        axes.set_xticks(range(len(values)), [display(dim, json.loads(v)) for v in values])
        axes.set_xlim(-0.5, len(values) - 0.5)
        axes.set_ylim(*Y_LIMITS)
        axes.set_title(bench_title, fontsize=10)
        axes.set_xlabel(DIMENSION_TITLES[dim])
        if index % columns == 0:
            axes.set_ylabel("dev accuracy (95% bootstrap CI)")
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)  # each entry once, whichever panel drew it
    if rows_n * columns > len(benchmarks):  # the spare slot holds the legend: no empty panel
        spare = figure.add_subplot(rows_n, columns, len(benchmarks) + 1)
        spare.axis("off")
        spare.legend(legend.values(), legend.keys(), loc="center", fontsize=8, frameon=False)
    elif legend:
        figure.axes[0].legend(legend.values(), legend.keys(), fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_dimension(
    table: list[dict[str, Any]], dim: str, benchmarks: list[tuple[str, str]], path: Path, title: str
) -> None:
    """`dimension_figure` saved as a PNG."""
    dimension_figure(table, dim, benchmarks, title).savefig(path, dpi=110)
