"""Evaluation results as `nanoflux eval` writes them: `results.json` (accuracy with a bootstrap CI per benchmark and
variant: base, adapter, baseline; paired differences between variants on the same questions; the MultiMedQA
aggregate; the training-compute ratios) and `details/<benchmark>-<variant>.jsonl` (every prompt, output and gold).

The Space shows the scores and the paired comparisons as tables and a chart, and offers the benchmark questions of
the details files in Compare, with their gold answers. Older results.json files (without paired comparisons, or with
the compute estimate only) are shown as they are.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

VARIANT_LABELS = {
    "base": "base",
    "adapter": "base + NanoFlux adapter",
    "baseline": "base + full-benchmark adapter (baseline)",
}
PAIR_LABELS = {
    "adapter-vs-base": "NanoFlux adapter − base",
    "adapter-vs-baseline": "NanoFlux adapter − full-benchmark baseline",
    "baseline-vs-base": "full-benchmark baseline − base",
}
PAIRED_COLUMNS = [
    "benchmark",
    "comparison",
    "n",
    "Δ accuracy (points)",
    "95% CI (points)",
    "wins / losses",
    "McNemar p",
]
QUESTIONS_PER_BENCHMARK = 25


class ResultsError(RuntimeError):
    """Results that cannot be read; the message says why and what to do."""


def results_file(path: str | Path) -> Path:
    """`results.json` itself, or the one inside an evaluation's output folder."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def load_results(path: str | Path | None) -> dict[str, Any]:
    """The parsed results.json (checked for the fields the Space reads)."""
    if not path:
        raise ResultsError(
            "No evaluation results are configured. Fix: set NANOFLUX_RESULTS, or deploy with `--results"
            " outputs/eval-local`"
        )
    file = results_file(path)
    if not file.is_file():
        raise ResultsError(
            f"No evaluation results at {path}. Fix: run `nanoflux eval --config configs/eval/local.yaml` first, or set"
            " NANOFLUX_RESULTS"
        )
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ResultsError(
            f"{file} is not a results.json ({type(err).__name__}). Fix: point NANOFLUX_RESULTS at what `nanoflux eval`"
            " wrote"
        ) from None
    missing = [key for key in ("benchmarks", "variants", "results") if key not in results]
    if missing:
        raise ResultsError(
            f"{file} lacks {', '.join(missing)}. Fix: point NANOFLUX_RESULTS at what `nanoflux eval` wrote"
        )
    return results


def _pct(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 1)


def _signed(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 1)


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}" if value >= 0.001 else "<0.001"


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    """One line per benchmark and variant: n, correct, accuracy and its 95% CI (%), unparseable outputs; then the
    aggregates (MultiMedQA macro and micro accuracy) per variant."""
    data = []
    for bench in results["benchmarks"]:
        for variant in results["variants"]:
            r = results["results"].get(bench["name"], {}).get(variant)
            if r is not None:
                data.append(
                    [
                        bench.get("title") or bench["name"],
                        VARIANT_LABELS.get(variant, variant),
                        r["n"],
                        r["correct"],
                        _pct(r["accuracy"]),
                        f"{_pct(r['ci_low'])} – {_pct(r['ci_high'])}",
                        r.get("unparseable"),
                    ]
                )
    for agg in (results.get("aggregates") or {}).values():
        for variant, r in agg.get("variants", {}).items():
            for kind in ("macro", "micro"):
                data.append(
                    [
                        f"{agg.get('title', 'aggregate')} ({kind})",
                        VARIANT_LABELS.get(variant, variant),
                        r["n"],
                        None,
                        _pct(r[kind]),
                        f"{_pct(r[f'{kind}_ci_low'])} – {_pct(r[f'{kind}_ci_high'])}",
                        None,
                    ]
                )
    return pd.DataFrame(
        data, columns=["benchmark", "variant", "n", "correct", "accuracy (%)", "95% CI (%)", "unparseable"]
    )


def paired_table(results: dict[str, Any]) -> pd.DataFrame:
    """One line per benchmark and compared pair of variants (on the same questions): the accuracy difference with its
    paired bootstrap 95% CI (points), the questions only one of the two got right, McNemar's exact p-value."""
    titles = {b["name"]: b.get("title") or b["name"] for b in results["benchmarks"]}
    data = []
    for name, pairs in (results.get("paired") or {}).items():
        for key, r in pairs.items():
            data.append(
                [
                    titles.get(name, name),
                    PAIR_LABELS.get(key, key),
                    r["n"],
                    _signed(r["delta"]),
                    f"{_signed(r['ci_low'])} – {_signed(r['ci_high'])}",
                    f"{r['wins']} / {r['losses']}",
                    _p(r["p_value"]),
                ]
            )
    for agg in (results.get("aggregates") or {}).values():
        for key, r in agg.get("paired", {}).items():
            for kind in ("macro", "micro"):
                data.append(
                    [
                        f"{agg.get('title', 'aggregate')} ({kind})",
                        PAIR_LABELS.get(key, key),
                        r["n"],
                        _signed(r[f"{kind}_delta"]),
                        f"{_signed(r[f'{kind}_ci_low'])} – {_signed(r[f'{kind}_ci_high'])}",
                        f"{r['wins']} / {r['losses']}",
                        _p(r["p_value"]) if kind == "micro" else "–",
                    ]
                )
    return pd.DataFrame(data, columns=PAIRED_COLUMNS)


def _code(text: Any) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def results_summary(results: dict[str, Any]) -> str:
    """What was evaluated and how, and the training-compute comparison when there is one (markdown)."""
    gen = results.get("generation") or {}
    lines = [
        f"Base model {_code(results.get('model'))}"
        + (f", adapter {_code(results['adapter'])}" if results.get("adapter") else ", no adapter")
        + (f", baseline adapter {_code(results['baseline_adapter'])}" if results.get("baseline_adapter") else "")
        + "."
    ]
    if gen:
        lines.append(
            f"Greedy decoding, max {gen.get('max_new_tokens')} new tokens,"
            f" {'step-by-step reasoning' if gen.get('reasoning') else 'final answer only'}; accuracy with a 95%"
            " bootstrap CI, unparseable outputs count as wrong."
        )
    if results.get("partition") == "dev":
        lines.append(
            "**Dev partition**: these are the rows settings are chosen on, not the test rows a result is reported on."
        )
    lines += _compute_lines(results.get("compute") or {})
    return "\n\n".join(lines)


def _times(value: Any) -> str:
    return f"**{value:.1f}×**" if isinstance(value, (int, float)) else "n/a"


def _compute_lines(compute: dict[str, Any]) -> list[str]:
    """The compute ratios (baseline / NanoFlux): measured from the training runs, then the labelled estimate."""
    lines = []
    measured = compute.get("measured")
    if measured:
        ratios = measured.get("ratios") or {}
        lines.append(
            f"Training compute, measured (baseline / NanoFlux training run): {_times(ratios.get('train_tokens'))}"
            f" training tokens, {_times(ratios.get('steps'))} optimizer steps, {_times(ratios.get('device_seconds'))}"
            " device seconds." + "".join(f" Note: {note}." for note in measured.get("notes") or [])
        )
    generation = compute.get("generation")
    if generation:
        lines.append(
            f"Generating the NanoFlux data took {generation.get('total_tokens')} tokens (prompt and completion, every"
            " role)."
        )
    estimate = compute.get("estimate") or (
        compute if compute.get("ratio") and "nanoflux" in compute else None
    )  # older results.json: the estimate only
    if estimate and estimate.get("ratio"):
        lines.append(
            f"Training compute, estimated from token counts: the full benchmark processes {_times(estimate['ratio'])}"
            f" the training tokens of the NanoFlux data ({estimate['baseline']['tokens']} vs"
            f" {estimate['nanoflux']['tokens']} per epoch)."
        )
    return lines


def _pct_label(value: float) -> str:
    return f"{100 * value:.0f}%"


def results_figure(results: dict[str, Any]) -> Any:
    """Accuracy per benchmark, one labelled bar per variant (base, tuned, baseline), the bootstrap CI as error bars;
    a 0% bar shows as a stub labelled 0%, a variant not evaluated on a benchmark as "n/a". Beside it, when variants
    were compared, each paired difference (points) with its paired bootstrap CI, its value in the label."""
    from charts import floor_below_zero, labelled_bars
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks, variants = results["benchmarks"], results["variants"]
    paired = paired_table(results)
    left = max(5.0, 1.6 * len(benchmarks) + 2)
    figure = Figure(
        figsize=(left + (6.0 if len(paired) else 0), max(4.8, 0.55 * len(paired) + 1.5)), layout="constrained"
    )
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, 2, width_ratios=[left, 6.0]) if len(paired) else figure.add_gridspec(1, 1)
    axes = figure.add_subplot(grid[0, 0])
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        rows = [results["results"].get(b["name"], {}).get(variant) for b in benchmarks]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(benchmarks))]
        accuracy = [None if r is None or math.isnan(r["accuracy"]) else r["accuracy"] for r in rows]
        low = [
            max(0.0, a - r["ci_low"]) if a is not None and not math.isnan(r["ci_low"]) else 0.0
            for a, r in zip(accuracy, rows, strict=True)
        ]
        high = [
            max(0.0, r["ci_high"] - a) if a is not None and not math.isnan(r["ci_high"]) else 0.0
            for a, r in zip(accuracy, rows, strict=True)
        ]
        labelled_bars(
            axes,
            xs,
            accuracy,
            width,
            fmt=_pct_label,
            yerr=[low, high],
            label=VARIANT_LABELS.get(variant, variant),
            color=f"C{j}",
        )
    axes.set_xticks(
        range(len(benchmarks)), [textwrap.fill(b.get("title") or b["name"], 16) for b in benchmarks], fontsize="small"
    )
    floor_below_zero(axes, top=1.15)
    axes.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    axes.set_ylabel("accuracy (95% bootstrap CI)")
    axes.set_title("Accuracy per benchmark", fontsize="medium")
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    if len(paired):
        _plot_deltas(figure.add_subplot(grid[0, 1]), results)
    return figure


def _plot_deltas(axes: Any, results: dict[str, Any]) -> None:
    titles = {b["name"]: b.get("title") or b["name"] for b in results["benchmarks"]}
    points = [
        (titles.get(name, name), key, r["delta"], r["ci_low"], r["ci_high"])
        for name, pairs in (results.get("paired") or {}).items()
        for key, r in pairs.items()
    ]
    points += [
        (f"{agg.get('title', 'aggregate')} (macro)", key, r["macro_delta"], r["macro_ci_low"], r["macro_ci_high"])
        for agg in (results.get("aggregates") or {}).values()
        for key, r in agg.get("paired", {}).items()
    ]
    colors = {key: f"C{i}" for i, key in enumerate(PAIR_LABELS)}
    ys = list(range(len(points)))[::-1]
    for y, (_, key, delta, low, high) in zip(ys, points, strict=True):
        axes.errorbar(
            [100 * delta],
            [y],
            xerr=[[max(0.0, 100 * (delta - low))], [max(0.0, 100 * (high - delta))]],
            fmt="o",
            capsize=3,
            color=colors.get(key, "C3"),
        )
    axes.axvline(0, color="grey", linewidth=0.8)
    labels = [
        f"{textwrap.shorten(title, 28, placeholder='…')}\n{PAIR_LABELS.get(key, key)}: {100 * delta:+.1f}"
        for title, key, delta, *_ in points
    ]
    axes.set_yticks(ys, labels, fontsize="small")
    axes.set_xlabel("Δ accuracy, points (paired bootstrap 95% CI)")
    axes.set_title("Paired differences (same questions)", fontsize="medium")


def benchmark_questions(
    path: str | Path, results: dict[str, Any], *, per_benchmark: int = QUESTIONS_PER_BENCHMARK
) -> list[dict[str, Any]]:
    """The first questions of each benchmark as the evaluation asked them (prompt with options and instructions),
    with the gold answer, from `details/<benchmark>-base.jsonl` next to results.json (none when it is absent)."""
    details = results_file(path).parent / "details"
    questions = []
    for bench in results["benchmarks"]:
        file = details / f"{bench['name']}-base.jsonl"
        if not file.is_file():
            continue
        with file.open(encoding="utf-8") as f:
            lines = [line for line in f if line.strip()][:per_benchmark]
        for line in lines:
            row = json.loads(line)
            gold = row.get("gold")
            gold = (
                str(int(gold)) if isinstance(gold, float) and gold.is_integer() else str(gold)
            )  # 9867630, never 9.86763e+06
            questions.append(
                {
                    "benchmark": bench["name"],
                    "title": bench.get("title") or bench["name"],
                    "id": str(row.get("id")),
                    "prompt": str(row.get("prompt") or ""),
                    "gold": gold,
                }
            )
    return questions
