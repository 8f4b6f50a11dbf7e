"""What an evaluation writes and shows: results.json, results.md, results.png and the console table. Everything here
reads the results dict `trainer.evaluation.run.main` returns (the card's `model-index`: trainer.evaluation.model_card).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PAIR_TITLES = {
    "adapter-vs-base": "NanoFlux adapter − base",
    "adapter-vs-baseline": "NanoFlux adapter − full-benchmark baseline",
    "baseline-vs-base": "full-benchmark baseline − base",
}


def write_results(results: dict[str, Any], output_dir: str | Path) -> None:
    """`results.json`, `results.md` and `results.png` in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (output_dir / "results.md").write_text(results_markdown(results))
    plot_results(results, output_dir / "results.png")


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _signed(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:+.1f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}" if value >= 0.001 else "<0.001"


def results_table(results: dict[str, Any]) -> str:
    """One markdown row per benchmark × variant: n, correct, accuracy and its 95% CI (%), unparseable outputs."""
    lines = [
        "| benchmark | variant | n | correct | accuracy (%) | 95% CI (%) | unparseable |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench in results["benchmarks"]:
        for variant, r in results["results"].get(bench["name"], {}).items():
            lines.append(
                f"| {bench['title']} | {variant} | {r['n']} | {r['correct']} | {_pct(r['accuracy'])} | "
                f"{_pct(r['ci_low'])} – {_pct(r['ci_high'])} | {r['unparseable']} ({_pct(r['unparseable_rate'])}%) |"
            )
    return "\n".join(lines) + "\n"


def paired_table(results: dict[str, Any]) -> str:
    """One markdown row per benchmark × compared pair: n, the difference in accuracy with its paired bootstrap 95% CI
    (points), the discordant pairs and McNemar's exact p-value; then the aggregates' macro and micro differences."""
    lines = [
        "| benchmark | comparison | n | Δ accuracy (points) | 95% CI (points) | wins / losses | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    titles = {b["name"]: b["title"] for b in results["benchmarks"]}
    for name, pairs in (results.get("paired") or {}).items():
        for key, r in pairs.items():
            lines.append(
                f"| {titles.get(name, name)} | {PAIR_TITLES.get(key, key)} | {r['n']} | {_signed(r['delta'])} |"
                f" {_signed(r['ci_low'])} – {_signed(r['ci_high'])} | {r['wins']} / {r['losses']} |"
                f" {_p(r['p_value'])} |"
            )
    for agg in (results.get("aggregates") or {}).values():
        for key, r in agg["paired"].items():
            for kind in ("macro", "micro"):
                lines.append(
                    f"| {agg['title']} ({kind}) | {PAIR_TITLES.get(key, key)} | {r['n']} |"
                    f" {_signed(r[f'{kind}_delta'])} | {_signed(r[f'{kind}_ci_low'])} –"
                    f" {_signed(r[f'{kind}_ci_high'])} | {r['wins']} / {r['losses']} |"
                    f" {_p(r['p_value']) if kind == 'micro' else '–'} |"
                )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def aggregate_table(results: dict[str, Any]) -> str:
    """One markdown row per aggregate × variant: macro and micro accuracy with their stratified bootstrap CIs."""
    lines = [
        "| aggregate | variant | benchmarks | n | macro accuracy (%) | 95% CI (%) | micro accuracy (%) | 95% CI (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for agg in (results.get("aggregates") or {}).values():
        for variant, r in agg["variants"].items():
            lines.append(
                f"| {agg['title']} | {variant} | {len(agg['members'])} | {r['n']} | {_pct(r['macro'])} |"
                f" {_pct(r['macro_ci_low'])} – {_pct(r['macro_ci_high'])} | {_pct(r['micro'])} |"
                f" {_pct(r['micro_ci_low'])} – {_pct(r['micro_ci_high'])} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}×"


def compute_markdown(compute: dict[str, Any] | None) -> list[str]:
    """The compute section: measured ratios (every one computed), the data-generation cost, the labelled estimate."""
    if not compute:
        return []
    lines = ["## Training compute", ""]
    measured = compute.get("measured")
    if measured:
        nf, bl, ratios = measured["nanoflux"], measured["baseline"], measured["ratios"]
        lines += [
            "Measured from the two training runs (`training_summary.json`); ratio = baseline / NanoFlux.",
            "",
            (
                "| run | data | rows | training tokens | optimizer steps | training time (s) | devices | device"
                " seconds | hardware |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {label} | `{run['dataset']}` | {run['rows']} | {run['train_tokens']} | {run['steps']} |"
                f" {run['wall_time_s']} | {run['devices']} | {run['device_seconds']} | {run['hardware']} |"
                for label, run in (("NanoFlux", nf), ("baseline", bl))
            ),
            (
                f"| **ratio** | | {_ratio(_div(bl['rows'], nf['rows']))} | {_ratio(ratios['train_tokens'])} |"
                f" {_ratio(ratios['steps'])} | | | {_ratio(ratios['device_seconds'])} | |"
            ),
            "",
            *(f"- Note: {note}" for note in measured["notes"]),
        ]
        lines += [""] if measured["notes"] else []
    generation = compute.get("generation")
    if generation:
        lines += [
            "Data generation (the NanoFlux build, from its `summary.json`):",
            "",
            "| role | prompt tokens | completion tokens |",
            "|---|---|---|",
        ]
        lines += [
            f"| {role} | {t.get('prompt')} | {t.get('completion')} |" for role, t in generation["tokens"].items()
        ]
        sums = [sum(int(t.get(kind) or 0) for t in generation["tokens"].values()) for kind in ("prompt", "completion")]
        lines += [f"| **total** ({generation['total_tokens']} tokens) | {sums[0]} | {sums[1]} |", ""]
    estimate = compute.get("estimate") or (
        compute if "ratio" in compute and "nanoflux" in compute else None
    )  # older results.json
    if estimate:
        nf, bl = estimate["nanoflux"], estimate["baseline"]
        lines += [
            f"Estimate, not a measured run ({(estimate.get('label') or 'token counts').removeprefix('estimate: ')}):",
            "",
            "| data | rows | training tokens per epoch |",
            "|---|---|---|",
            f"| NanoFlux `{nf['data']}` | {nf['rows']} | {nf['tokens']} |",
            f"| full benchmark `{bl['data']}` [{bl['split']}] | {bl['rows']} | {bl['tokens']} |",
            f"| **ratio** | {_ratio(_div(bl['rows'], nf['rows']))} | {_ratio(estimate['ratio'])} |",
            "",
        ]
    return lines


def _div(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _selection_line(bench: dict[str, Any]) -> str:
    sel = bench.get("selection") or {}
    parts = [
        f"`{sel.get('path', bench['path'])}`"
        + (f" ({sel['subset']})" if sel.get("subset") else "")
        + f" [{sel.get('split', bench['split'])}]"
    ]
    if sel.get("ids_file"):
        parts.append(f"ids in `{sel['ids_file']}` ({sel.get('ids_missing', 0)} of {sel.get('ids_listed')} not found)")
    if sel.get("exclude_ids_file"):
        parts.append(f"without the {sel.get('excluded_by_ids')} ids in `{sel['exclude_ids_file']}`")
    if sel.get("sample"):
        parts.append(f"seeded sample of {sel['sample']['size']} (seed {sel['sample']['seed']})")
    if sel.get("excluded_dev_rows"):
        parts.append(f"without its {sel['excluded_dev_rows']} dev rows")
    if sel.get("limit"):
        parts.append(f"first {sel['limit']}")
    dropped = (sel.get("dropped") or {}).get("count")
    parts.append(f"{bench['rows']} rows" + (f", {dropped} dropped (no gold answer or options)" if dropped else ""))
    return f"- {bench['title']}: " + ", ".join(parts) + f"; scoring: {bench.get('scoring', 'exact match')}"


def results_markdown(results: dict[str, Any]) -> str:
    """`results.md`: what was evaluated, how, the scores, the paired comparisons, the aggregates and the compute."""
    gen = results["generation"]
    lines = [
        "# NanoFlux evaluation",
        "",
        f"- Base model: `{results['model']}`",
        f"- Adapter: `{results['adapter']}`" if results.get("adapter") else "- Adapter: none (base model only)",
    ]
    if results.get("baseline_adapter"):
        lines.append(f"- Baseline adapter (full-benchmark fine-tuning): `{results['baseline_adapter']}`")
    lines += [
        f"- Partition: **{results.get('partition', 'test')}**"
        + (" (dev rows: for choosing settings, not for reporting)" if results.get("partition") == "dev" else ""),
        (
            f"- Generation: greedy, chat template, max {gen['max_new_tokens']} new tokens, "
            f"{'step-by-step reasoning' if gen['reasoning'] else 'final answer only'}, {_engine_words(gen)}"
        ),
        (
            f"- Accuracy with a percentile bootstrap {int(100 * results['bootstrap']['level'])}% CI"
            f" ({results['bootstrap']['samples']} resamples, seed {results['bootstrap']['seed']}); unparseable outputs"
            " count as wrong"
        ),
        "",
        "## Data",
        "",
        *(_selection_line(b) for b in results["benchmarks"]),
        "",
        "## Accuracy",
        "",
        results_table(results),
    ]
    aggregates = aggregate_table(results)
    if aggregates:
        lines += [
            "## MultiMedQA",
            "",
            "Macro: the mean of the subset accuracies; micro: every question pooled (stratified bootstrap CIs).",
            "",
            aggregates,
        ]
    paired = paired_table(results)
    if paired:
        lines += [
            "## Paired comparisons",
            "",
            (
                "The same examples in both arms: Δ = accuracy difference with a paired bootstrap 95% CI (examples"
                " resampled, the same draws for both); wins / losses = examples only the first / only the second got"
                " right; McNemar's exact test (two-sided binomial on those)."
            ),
            "",
            paired,
        ]
    lines += compute_markdown(results.get("compute"))
    return "\n".join(lines)


def _engine_words(gen: dict[str, Any]) -> str:
    """How the answers were generated, in words: in-process batches, or the endpoint and its served names."""
    if gen.get("engine") == "endpoint":
        served = ", ".join(f"{variant} as `{name}`" for variant, name in gen["served_models"].items())
        return f"served by {gen['server']} ({served})"
    return f"batch {gen['batch_size']}, {gen['dtype']} on {gen['device']}"


def eval_summary(results: dict[str, Any], output_dir: str | Path) -> str:
    """What `nanoflux eval` prints at the end: how the answers were generated, the accuracy table with bootstrap 95%
    CIs, the paired differences between variants (paired bootstrap CI, McNemar p) and where the files are."""
    gen = results["generation"]
    rate = f", {gen['questions_per_s']:.2f} questions/s" if gen.get("questions_per_s") else ""
    replayed = f" ({gen['replayed']} more from the journal)" if gen.get("replayed") else ""
    how = (
        f"endpoint {gen['server']}"
        if gen.get("engine") == "endpoint"
        else f"in-process, {gen.get('dtype')} on {gen.get('device')}"
    )
    return "\n".join(
        [
            (
                f"Evaluation of {results['model']} ({', '.join(results['variants'])}) on the"
                f" {results.get('partition', 'test')} rows: {gen.get('asked', '?')} questions answered{replayed} by"
                f" {how}{rate}; {results['wall_time_s']:.0f} s in all"
            ),
            "Accuracy % [95% bootstrap CI]; paired differences in points [paired bootstrap 95% CI]:",
            console_table(results),
            f"Results in {output_dir}: results.json, results.md, results.png, details/",
        ]
    )


def console_table(results: dict[str, Any]) -> str:
    """A plain-text summary for the log: accuracy with CI per benchmark and variant, then every paired difference."""
    variants = results["variants"]
    name_width = max([len(b["title"]) for b in results["benchmarks"]] + [9])
    rows = [f"{'benchmark':<{name_width}}  {'n':>5}  " + "  ".join(f"{v:>22}" for v in variants)]
    for bench in results["benchmarks"]:
        scores = results["results"].get(bench["name"], {})
        cells = [
            (
                f"{_pct(s['accuracy']):>5} [{_pct(s['ci_low']):>5}, {_pct(s['ci_high']):>5}]"
                if (s := scores.get(v))
                else "–"
            )
            for v in variants
        ]
        rows.append(f"{bench['title']:<{name_width}}  {bench['rows']:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    for agg in (results.get("aggregates") or {}).values():
        cells = [
            (
                f"{_pct(s['macro']):>5} [{_pct(s['macro_ci_low']):>5}, {_pct(s['macro_ci_high']):>5}]"
                if (s := agg["variants"].get(v))
                else "–"
            )
            for v in variants
        ]
        n = next(iter(agg["variants"].values()))["n"] if agg["variants"] else 0
        rows.append(f"{agg['title'] + ' macro':<{name_width}}  {n:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    titles = {b["name"]: b["title"] for b in results["benchmarks"]}
    for name, pairs in (results.get("paired") or {}).items():
        for key, r in pairs.items():
            rows.append(
                f"  {titles.get(name, name)}: {key} Δ {_signed(r['delta'])} points [{_signed(r['ci_low'])},"
                f" {_signed(r['ci_high'])}], McNemar p {_p(r['p_value'])}"
            )
    for agg in (results.get("aggregates") or {}).values():
        for key, r in agg["paired"].items():
            rows.append(
                f"  {agg['title']} macro: {key} Δ {_signed(r['macro_delta'])} points [{_signed(r['macro_ci_low'])},"
                f" {_signed(r['macro_ci_high'])}], micro Δ {_signed(r['micro_delta'])}, McNemar p {_p(r['p_value'])}"
            )
    return "\n".join(rows)


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """Accuracy per benchmark and variant with the bootstrap CI as error bars; beside it, when variants were compared,
    the paired differences (points) with their paired bootstrap CIs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks, variants = results["benchmarks"], results["variants"]
    deltas = [
        (b["title"], key, r) for b in benchmarks for key, r in (results.get("paired") or {}).get(b["name"], {}).items()
    ]
    deltas += [
        (
            f"{a['title']} (macro)",
            key,
            {"delta": r["macro_delta"], "ci_low": r["macro_ci_low"], "ci_high": r["macro_ci_high"]},
        )
        for a in (results.get("aggregates") or {}).values()
        for key, r in a["paired"].items()
    ]
    figure = Figure(
        figsize=(max(6.0, 1.4 * len(benchmarks) + 2) + (6.0 if deltas else 0), max(4.5, 0.35 * len(deltas) + 1.5))
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2 if deltas else 1, 1)
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        rows = [results["results"][b["name"]].get(variant) for b in benchmarks]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(benchmarks))]
        accuracy = [r["accuracy"] if r else 0.0 for r in rows]
        errors = [
            [max(0.0, r["accuracy"] - r["ci_low"]) if r else 0.0 for r in rows],
            [max(0.0, r["ci_high"] - r["accuracy"]) if r else 0.0 for r in rows],
        ]
        axes.bar(xs, accuracy, width, yerr=errors, capsize=3, label=variant)
    axes.set_xticks(range(len(benchmarks)), [b["title"] for b in benchmarks], rotation=20, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (95% bootstrap CI)")
    axes.set_title(
        f"{results['model']}"
        + (f" + {results['adapter']}" if results.get("adapter") else "")
        + f" [{results.get('partition', 'test')}]",
        fontsize="small",
    )
    axes.legend()
    if deltas:
        right = figure.add_subplot(1, 2, 2)
        ys = list(range(len(deltas)))[::-1]
        values = [100 * r["delta"] for _, _, r in deltas]
        low = [max(0.0, 100 * (r["delta"] - r["ci_low"])) for _, _, r in deltas]
        high = [max(0.0, 100 * (r["ci_high"] - r["delta"])) for _, _, r in deltas]
        colors = {key: f"C{i}" for i, key in enumerate(PAIR_TITLES)}
        for y, value, lo, hi, (_, key, _) in zip(ys, values, low, high, deltas, strict=True):
            right.errorbar([value], [y], xerr=[[lo], [hi]], fmt="o", capsize=3, color=colors.get(key, "C3"))
        right.axvline(0, color="grey", linewidth=0.8)
        right.set_yticks(ys, [f"{title}: {key}" for title, key, _ in deltas], fontsize="small")
        right.set_xlabel("Δ accuracy, points (paired bootstrap 95% CI)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
