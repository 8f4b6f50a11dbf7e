"""Evaluation results as `nanoflux eval` writes them: `results.json` (accuracy with a bootstrap CI per benchmark and
variant: base, adapter, baseline) and `details/<benchmark>-<variant>.jsonl` (every prompt, output and gold answer).

The Space shows the scores as a table and a chart, and offers the benchmark questions of the details files in
Compare, with their gold answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

VARIANT_LABELS = {"base": "base", "adapter": "base + NanoFlux adapter", "baseline": "base + full-benchmark adapter (baseline)"}
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
        raise ResultsError("No evaluation results are configured. Fix: set NANOFLUX_RESULTS, or deploy with `--results outputs/eval-local`")
    file = results_file(path)
    if not file.is_file():
        raise ResultsError(f"No evaluation results at {path}. Fix: run `nanoflux eval --config configs/eval/local.yaml` first, or set NANOFLUX_RESULTS")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ResultsError(f"{file} is not a results.json ({type(err).__name__}). Fix: point NANOFLUX_RESULTS at what `nanoflux eval` wrote") from None
    missing = [key for key in ("benchmarks", "variants", "results") if key not in results]
    if missing:
        raise ResultsError(f"{file} lacks {', '.join(missing)}. Fix: point NANOFLUX_RESULTS at what `nanoflux eval` wrote")
    return results


def _pct(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 1)


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    """One line per benchmark and variant: n, correct, accuracy and its 95% CI (%), unparseable outputs."""
    data = []
    for bench in results["benchmarks"]:
        for variant in results["variants"]:
            r = results["results"].get(bench["name"], {}).get(variant)
            if r is not None:
                data.append([bench.get("title") or bench["name"], VARIANT_LABELS.get(variant, variant), r["n"], r["correct"], _pct(r["accuracy"]),
                             f"{_pct(r['ci_low'])} – {_pct(r['ci_high'])}", r.get("unparseable")])  # fmt: skip
    return pd.DataFrame(data, columns=["benchmark", "variant", "n", "correct", "accuracy (%)", "95% CI (%)", "unparseable"])


def _code(text: Any) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def results_summary(results: dict[str, Any]) -> str:
    """What was evaluated and how, and the training-compute comparison when there is one (markdown)."""
    gen = results.get("generation") or {}
    lines = [f"Base model {_code(results.get('model'))}" + (f", adapter {_code(results['adapter'])}" if results.get("adapter") else ", no adapter")
             + (f", baseline adapter {_code(results['baseline_adapter'])}" if results.get("baseline_adapter") else "") + "."]  # fmt: skip
    if gen:
        lines.append(f"Greedy decoding, max {gen.get('max_new_tokens')} new tokens, {'step-by-step reasoning' if gen.get('reasoning') else 'final answer only'}; "
                     "accuracy with a 95% bootstrap CI, unparseable outputs count as wrong.")  # fmt: skip
    compute = results.get("compute")
    if compute and compute.get("ratio"):
        lines.append(f"Training compute: the full benchmark processes **{compute['ratio']:.1f}×** the training tokens of the NanoFlux data "
                     f"({compute['baseline']['tokens']} vs {compute['nanoflux']['tokens']} per epoch).")  # fmt: skip
    return "\n\n".join(lines)


def results_figure(results: dict[str, Any]) -> Any:
    """Accuracy per benchmark, one bar per variant (base, tuned, baseline), the bootstrap CI as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks, variants = results["benchmarks"], results["variants"]
    figure = Figure(figsize=(max(6.0, 1.5 * len(benchmarks) + 2), 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        rows = [results["results"].get(b["name"], {}).get(variant) for b in benchmarks]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(benchmarks))]
        accuracy = [r["accuracy"] if r and not math.isnan(r["accuracy"]) else 0.0 for r in rows]
        low = [max(0.0, a - r["ci_low"]) if r and not math.isnan(r["ci_low"]) else 0.0 for a, r in zip(accuracy, rows)]
        high = [max(0.0, r["ci_high"] - a) if r and not math.isnan(r["ci_high"]) else 0.0 for a, r in zip(accuracy, rows)]
        axes.bar(xs, accuracy, width, yerr=[low, high], capsize=3, label=VARIANT_LABELS.get(variant, variant))
    axes.set_xticks(range(len(benchmarks)), [b.get("title") or b["name"] for b in benchmarks], rotation=15, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (95% bootstrap CI)")
    axes.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(variants), frameon=False)
    figure.tight_layout()
    return figure


def benchmark_questions(path: str | Path, results: dict[str, Any], *, per_benchmark: int = QUESTIONS_PER_BENCHMARK) -> list[dict[str, Any]]:
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
            gold = str(int(gold)) if isinstance(gold, float) and gold.is_integer() else str(gold)  # 9867630, never 9.86763e+06
            questions.append({"benchmark": bench["name"], "title": bench.get("title") or bench["name"], "id": str(row.get("id")),
                              "prompt": str(row.get("prompt") or ""), "gold": gold})  # fmt: skip
    return questions
