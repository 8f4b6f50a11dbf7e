"""`nanoflux eval`: evaluate a base model and its NanoFlux LoRA adapter on GSM-Hard, Genome-Bench and MultiMedQA.

Usage:
    nanoflux eval --config configs/eval/local.yaml                      # packaged SmolLM2 on the fixtures, CPU
    nanoflux eval --config configs/eval/medical.yaml                    # Qwen3-4B + adapter on MultiMedQA, GPU
    nanoflux eval --config configs/eval/medical.yaml --partition dev    # the dev rows (choosing settings), never test
    nanoflux eval --config configs/eval/medical.yaml --limit 50 --benchmarks.medqa.split test

    nanoflux eval --config configs/eval/medical.yaml --engine endpoint --endpoint.base_url http://localhost:8000

`main(config)` reads top to bottom: load every benchmark's `partition` (test, or dev) with `datasets.load_dataset` (a
Hub id, or a local file or folder) and normalise its rows into `Example(id, prompt, options, gold)`
(nanoflux.benchmarks); check the adapters exist (trainer.evaluation.variants, before any model is loaded or request
sent); account for the training compute if asked (trainer.evaluation.compute); then answer every question of each
variant (`base`, `adapter` = base + the NanoFlux LoRA, `baseline` = base + a LoRA fine-tuned on a full benchmark
training set) greedily with the configured engine (trainer.evaluation.generation: in-process transformers, or an
endpoint serving the adapters by name, journaled and resumable), extract the answer and score it as the benchmark's
authors do (nanoflux.scoring), with a bootstrap 95% CI. Variants evaluated on the same examples are compared pairwise
(paired bootstrap CI of the difference, McNemar's exact test), and the MultiMedQA benchmarks of a run are aggregated
(macro and micro). Writes `results.json`, `results.md`, `results.png` and `details/<benchmark>-<variant>.jsonl` to
`output_dir` and logs the summary: the results table with CIs and the paired differences (trainer.evaluation.report).
A failed evaluation removes what it wrote (no empty folder is left), except an endpoint journal with answers, which the
next run resumes from. `write_model_index(card_path, results)` (trainer.evaluation.model_card) then puts the adapter's
scores in its model card's `model-index` metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanoflux.benchmarks import BenchmarkConfig, load_benchmark, partition_benchmark, resolve_revision
from nanoflux.hub import package_versions
from nanoflux.recipe import to_dict
from nanoflux.rows import Example, ExampleSet
from nanoflux.scoring import (
    CI_LEVEL,
    NUMBER_ABS_TOL,
    aggregate_results,
    extract_answer,
    is_correct,
    paired_comparisons,
    score,
)
from trainer.evaluation.compute import compute_accounting
from trainer.evaluation.config import EvalConfig, build_eval_config
from trainer.evaluation.generation import Answers, Group, OutputFolder, generate_answers, load_tokenizer
from trainer.evaluation.model_card import write_model_index
from trainer.evaluation.report import eval_summary, write_results
from trainer.evaluation.variants import evaluation_variants

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("nanoflux", "peft", "transformers", "torch", "datasets", "huggingface_hub")


def main(config: EvalConfig, *, fresh: bool = False) -> dict[str, Any]:
    """`nanoflux eval`: evaluate every variant on every benchmark and write the results. Returns results.json's
    content.

    `fresh` discards the answers an earlier endpoint evaluation journaled in `output_dir` (instead of resuming). A
    failed evaluation removes what it wrote, except a journal with answers (generation.OutputFolder).
    """
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    with OutputFolder(output_dir):
        # Data, adapters and training summaries first: a wrong dataset id, column or adapter fails before any model
        # loads or any request goes out.
        data = load_data(config)
        variants = evaluation_variants(config)
        compute = training_compute(config, variants)

        groups = [
            Group(variant, adapter, bench.name, data.examples[bench.name])
            for variant, adapter in variants.items()
            for bench in config.benchmarks
        ]
        answers = generate_answers(config, groups, output_dir, fresh=fresh)
        scores, details = score_groups(config, data, groups, answers, output_dir)

        results = results_record(config, variants, data, scores, details, answers, compute, started)
        write_results(results, output_dir)
    logger.info("%s", eval_summary(results, output_dir))
    return results


@dataclass
class EvalData:
    """Every benchmark's rows of the evaluated partition, where they were read and at which revision."""

    targets: dict[str, BenchmarkConfig]
    """Benchmark name -> the benchmark as read for the partition (its test, or its dev, location)."""
    revisions: dict[str, str | None]
    """Benchmark name -> the Hub commit it resolved to (None: a local file)."""
    examples: dict[str, ExampleSet]


def load_data(config: EvalConfig) -> EvalData:
    """Every benchmark's `partition` rows, normalised into Examples, each Hub benchmark pinned to a commit."""
    targets = {bench.name: partition_benchmark(bench, config.partition) for bench in config.benchmarks}
    revisions = {name: resolve_revision(target) for name, target in targets.items()}
    examples = {
        bench.name: load_benchmark(
            bench,
            reasoning=config.reasoning,
            limit=config.limit,
            revision=revisions[bench.name],
            partition=config.partition,
        )
        for bench in config.benchmarks
    }
    return EvalData(targets, revisions, examples)


def training_compute(config: EvalConfig, variants: dict[str, str | None]) -> dict[str, Any] | None:
    """The `compute` section (measured from the adapters' training summaries, and an optional estimate), if asked."""
    if not config.compute:
        return None
    tokenizer = load_tokenizer(config.model) if config.compute.nanoflux_data else None
    return compute_accounting(
        config.compute,
        tokenizer,
        reasoning=config.reasoning,
        adapter=variants.get("adapter"),
        baseline_adapter=variants.get("baseline"),
    )


def score_groups(
    config: EvalConfig, data: EvalData, groups: Sequence[Group], answers: Answers, output_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[dict[str, Any]]]]]:
    """Judge every group's answers, write `details/<benchmark>-<variant>.jsonl`, and score each group with its
    bootstrap CI: (scores, details), each keyed by benchmark then variant."""
    scores: dict[str, dict[str, Any]] = {bench.name: {} for bench in config.benchmarks}
    details: dict[str, dict[str, list[dict[str, Any]]]] = {bench.name: {} for bench in config.benchmarks}
    (output_dir / "details").mkdir(parents=True, exist_ok=True)
    for group in groups:
        records = judge(data.targets[group.benchmark], group.examples, answers.texts[(group.variant, group.benchmark)])
        with open(output_dir / "details" / f"{group.benchmark}-{group.variant}.jsonl", "w") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in records)
        result = score(
            [d["correct"] for d in records],
            sum(d["extracted"] is None for d in records),
            samples=config.bootstrap_samples,
            seed=config.seed,
        )
        seconds = answers.seconds.get((group.variant, group.benchmark))
        result["wall_time_s"] = None if seconds is None else round(seconds, 1)  # None: every answer from the journal
        scores[group.benchmark][group.variant], details[group.benchmark][group.variant] = result, records
        logger.info(
            "%s: accuracy %.3f [%.3f, %.3f] on %d, %d unparseable",
            group.label,
            result["accuracy"],
            result["ci_low"],
            result["ci_high"],
            result["n"],
            result["unparseable"],
        )
    return scores, details


def judge(bench: BenchmarkConfig, examples: Sequence[Example], outputs: Sequence[str]) -> list[dict[str, Any]]:
    """Extract the answer of every output and judge it as the benchmark's authors do: the per-example details
    records."""
    details = []
    for example, output in zip(examples, outputs, strict=True):
        extracted = extract_answer(output, example, bench.kind)
        details.append(
            {
                "id": example.id,
                "prompt": example.prompt,
                "output": output,
                "extracted": extracted,
                "gold": example.gold,
                "correct": is_correct(
                    extracted, example.gold, bench.kind, abs_tol=bench.abs_tol, rel_tol=bench.rel_tol
                ),
            }
        )
    return details


def scoring_rule(bench: BenchmarkConfig) -> str:
    """How an answer of `bench` is judged, in words (for results.json and results.md)."""
    if bench.kind == "number":
        rule = f"a number, right when abs(pred - gold) < {bench.abs_tol:g}" + (
            f" or within {bench.rel_tol:g} relative" if bench.rel_tol else ""
        )
        return rule + (
            " (PAL's GSM-Hard scorer)"
            if bench.format == "gsm_hard" and bench.abs_tol == NUMBER_ABS_TOL and not bench.rel_tol
            else ""
        )
    if bench.kind == "choice":
        return "the option letter must equal the gold letter"
    return "yes / no / maybe must equal the gold label"


def results_record(
    config: EvalConfig,
    variants: dict[str, str | None],
    data: EvalData,
    scores: dict[str, dict[str, Any]],
    details: dict[str, dict[str, list[dict[str, Any]]]],
    answers: Answers,
    compute: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    """results.json's content: what was evaluated on which rows, the scores, the paired comparisons and aggregates."""
    targets, revisions = data.targets, data.revisions
    stats = {"samples": config.bootstrap_samples, "seed": config.seed}
    members = [bench.name for bench in config.benchmarks if bench.multimedqa]
    return {
        "model": config.model,
        "adapter": variants.get("adapter"),
        "baseline_adapter": variants.get("baseline"),
        "variants": list(variants),
        "partition": config.partition,
        "benchmarks": [
            {
                "name": b.name,
                "title": b.title,
                "format": b.format,
                "kind": b.kind,
                "path": targets[b.name].path,
                "subset": targets[b.name].subset,
                "split": targets[b.name].split,
                "revision": revisions[b.name],
                "rows": len(data.examples[b.name]),
                "multimedqa": b.multimedqa,
                "scoring": scoring_rule(targets[b.name]),
                "selection": data.examples[b.name].selection,
            }
            for b in config.benchmarks
        ],
        "results": scores,
        "paired": {
            name: pairs for name, by_variant in details.items() if (pairs := paired_comparisons(by_variant, **stats))
        },
        "aggregates": (
            {
                "multimedqa": {
                    "title": "MultiMedQA",
                    **aggregate_results("multimedqa", members, {m: details[m] for m in members}, **stats),
                }
            }
            if len(members) >= 2
            else {}
        ),
        "generation": {
            "greedy": True,
            "max_new_tokens": config.max_new_tokens,
            "reasoning": config.reasoning,
            "enable_thinking": config.enable_thinking,
            **answers.info,
        },
        "bootstrap": {
            **stats,
            "level": CI_LEVEL,
            "paired": "examples resampled with the same indices for both variants; McNemar's exact test",
        },
        "compute": compute,
        "config": to_dict(config),
        "packages": package_versions(VERSIONED_PACKAGES),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux eval [--config RECIPE] [--fresh] [--field value ...]`."""
    config = build_eval_config(args.config, overrides)
    results = main(config, fresh=args.fresh)
    card = Path(config.adapter or "") / "README.md"
    if card.is_file() and "adapter" in results["variants"]:
        # A local adapter's card carries its own scores (model-index); `publish-adapter` then pushes them.
        write_model_index(card, results)
