"""Evaluate a base model and its NanoFlux LoRA adapter on GSM-Hard, Genome-Bench and MultiMedQA (`trainer/evaluate.py`).

Usage:
    nanoflux eval --config configs/eval/local.yaml                      # packaged SmolLM2 on the fixtures, CPU, ~1-2 min
    nanoflux eval --config configs/eval/medical.yaml                    # Qwen3-4B + adapter on MultiMedQA, GPU
    nanoflux eval --config configs/eval/medical.yaml --partition dev    # the dev rows (choosing settings), never test rows
    nanoflux eval --config configs/eval/medical.yaml --limit 50 --benchmarks.medqa.split test

    nanoflux eval --config configs/eval/medical.yaml --engine endpoint --endpoint.base_url http://localhost:8000

`main(config)` reads top to bottom: load every benchmark's `partition` (test, or dev) with `datasets.load_dataset` (a
Hub id, or a local file or folder) and normalise its rows into `Example(id, prompt, options, gold)` (nanoflux.benchmarks);
check the adapters exist (before any model is loaded or request sent); account for the training compute if asked
(trainer.compute); then answer every question of each variant (`base`, `adapter` = base + the NanoFlux LoRA,
`baseline` = base + a LoRA fine-tuned on a full benchmark training set) greedily with the configured engine
(trainer.generation: in-process transformers, or an endpoint serving the adapters by name, journaled and resumable),
extract the answer and score it as the benchmark's authors do (nanoflux.scoring), with a bootstrap 95% CI. Variants
evaluated on the same examples are compared pairwise (paired bootstrap CI of the difference, McNemar's exact test),
and the MultiMedQA benchmarks of a run are aggregated (macro and micro). Writes `results.json`, `results.md`,
`results.png` and `details/<benchmark>-<variant>.jsonl` to `output_dir` and logs the summary: the results table with
CIs and the paired differences (trainer.reporting). A failed evaluation removes what it wrote (no empty folder is left),
except an endpoint journal with answers, which the next run resumes from. `write_model_index(card_path, results)` then
puts the adapter's scores in its model card's `model-index` metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanoflux.benchmarks import (  # noqa: F401  (re-exported: `from trainer.evaluate import ...` is the public surface)
    FORMATS,
    MULTIMEDQA_MMLU,
    PARTITIONS,
    PUBMEDQA_TEST_IDS,
    BenchmarkConfig,
    ColumnsConfig,
    DevConfig,
    EvalError,
    Example,
    ExampleSet,
    Format,
    default_name,
    dev_benchmark,
    load_benchmark,
    load_rows,
    normalise,
    parse_gold,
    partition_benchmark,
    resolve_revision,
    split_inline_options,
    test_questions,
)
from nanoflux.hub import package_versions
from nanoflux.models import DEFAULT_MODEL_ID
from nanoflux.questions import (  # noqa: F401  (re-exported: the shared prompt format)
    INSTRUCTIONS,
    LETTERS,
    build_prompt,
)
from nanoflux.recipe import ConfigError, check_range, fail, from_dict, load_recipe, merge, parse_overrides, to_dict
from nanoflux.scoring import (  # noqa: F401
    CI_LEVEL,
    NUMBER_ABS_TOL,
    NUMBER_REL_TOL,
    aggregate_results,
    bootstrap_ci,
    extract_answer,
    extract_choice,
    extract_number,
    extract_yes_no_maybe,
    is_correct,
    mcnemar_exact,
    paired_comparison,
    paired_comparisons,
    score,
)
from trainer.compute import (  # noqa: F401
    ComputeConfig,
    benchmark_conversations,
    compute_accounting,
    count_training_tokens,
)
from trainer.generation import (  # noqa: F401  (re-exported: the engines and their config)
    ENGINES,
    Answers,
    EndpointConfig,
    Group,
    OutputFolder,
    ServedModels,
    activate,
    chat_prompts,
    generate,
    generate_answers,
    load_model,
    load_tokenizer,
)
from trainer.reporting import (  # noqa: F401
    console_table,
    eval_summary,
    model_index,
    plot_results,
    results_markdown,
    results_table,
    write_model_index,
    write_results,
)

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("nanoflux", "peft", "transformers", "torch", "datasets", "huggingface_hub")
_default_name = default_name  # the sweep's older spelling

# --- config ----------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """An evaluation: a base model, its adapters, the benchmarks and the generation settings."""

    model: str = DEFAULT_MODEL_ID
    """Base model: a Hub id or a local folder; the packaged SmolLM2-135M-Instruct needs no download."""
    adapter: str | None = None
    """The NanoFlux LoRA adapter: a local folder or a Hub repo id (null: evaluate the base model only)."""
    adapter_optional: bool = False
    """When the adapter cannot be found, warn and evaluate the base model only (instead of failing)."""
    baseline_adapter: str | None = None
    """A LoRA fine-tuned on a full benchmark training set (the paper's baseline), evaluated as variant `baseline`."""
    evaluate_base: bool = True
    """Evaluate the base model alone too (variant `base`); false when its scores are known (a sweep scores it once)."""
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    partition: str = "test"
    """`test`: every benchmark's test rows (report these). `dev`: its dev rows (choose settings on these, e.g. sweep cells)."""
    limit: int | None = None
    """Evaluate at most this many rows of every benchmark (a cap on each benchmark's own `limit`)."""
    max_new_tokens: int = 512
    batch_size: int = 8
    reasoning: bool = True
    """Ask for step-by-step reasoning before the final answer; false asks for the final answer only."""
    enable_thinking: bool | None = None
    """Passed to the chat template when set (Qwen3: false turns its thinking mode off)."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16 or float16."""
    seed: int = 0
    bootstrap_samples: int = 1000
    compute: ComputeConfig | None = None
    """The training-compute comparison: measured from the adapters' training summaries (and an optional estimate)."""
    engine: str = "transformers"
    """`transformers`: generate in-process (CPU, tests, one GPU). `endpoint`: send every prompt to the server named
    under `endpoint` (vLLM, TGI, an Inference Endpoint, llama.cpp) that serves the base model and the adapters by name;
    answers are journaled, so a killed evaluation resumes (see trainer/generation.py)."""
    endpoint: EndpointConfig | None = None
    """The server of `engine: endpoint`: base_url, token_env, the served name of each variant, max_concurrency."""
    output_dir: str = "outputs/eval"

    def validate(self) -> None:
        if not self.model.strip():
            fail("model", self.model, "empty", f"give a Hub model id or a folder, e.g. {DEFAULT_MODEL_ID}")
        for name in ("adapter", "baseline_adapter"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                fail(name, value, "empty", "give a local adapter folder or a Hub repo id (org/name), or null")
        if not self.benchmarks:
            fail("benchmarks", self.benchmarks, "no benchmarks", "list at least one, e.g. [{format: medqa}]")
        if self.partition not in PARTITIONS:
            fail("partition", self.partition, "unknown partition", "use test (report) or dev (choose settings)")
        for i, bench in enumerate(self.benchmarks):
            bench.validate(f"benchmarks[{i}]")
            if self.partition == "dev":
                try:
                    dev_benchmark(bench, f"benchmarks[{i}]")
                except EvalError as err:
                    raise ConfigError(str(err)) from None
        names = [bench.name for bench in self.benchmarks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            fail("benchmarks", duplicates, "duplicate benchmark names", "give each entry its own `name`")
        if self.limit is not None:
            check_range("limit", self.limit, 1, 10_000_000)
        check_range("max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("bootstrap_samples", self.bootstrap_samples, 100, 1_000_000)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            fail("dtype", self.dtype, "unknown dtype", "use auto, float32, bfloat16 or float16")
        if not self.output_dir.strip():
            fail("output_dir", self.output_dir, "empty", "name a folder, e.g. outputs/eval")
        if self.compute is not None:
            self.compute.validate("compute", adapter=self.adapter, baseline_adapter=self.baseline_adapter)
        if self.engine not in ENGINES:
            fail(
                "engine",
                self.engine,
                "unknown engine",
                "use transformers (in-process) or endpoint (a vLLM / TGI / llama.cpp server)",
            )
        if self.engine == "endpoint" and self.endpoint is None:
            fail(
                "endpoint",
                None,
                "engine endpoint needs a server",
                "add endpoint: {base_url: http://localhost:8000} (see README: Evaluation through an endpoint)",
            )
        if self.endpoint is not None:  # checked even when unused: a recipe's endpoint block is one --engine away
            self.endpoint.validate("endpoint")


def build_eval_config(recipe: str | Path | None, cli_args: list[str] | None = None) -> EvalConfig:
    """Recipe + `--field value` overrides → a validated EvalConfig (errors name the field, the value and the fix).

    A benchmark entry is overridden by its position or its name: `--benchmarks.0.limit 5`, `--benchmarks.medqa.split test`;
    `--partition dev` evaluates every benchmark's dev rows.
    """
    data = load_recipe(recipe)
    overrides = parse_overrides(cli_args or [])
    if isinstance(overrides.get("benchmarks"), dict) and isinstance(data.get("benchmarks"), list):
        data["benchmarks"] = _override_entries(data["benchmarks"], overrides.pop("benchmarks"))
    config = from_dict(EvalConfig, merge(data, overrides))
    config.validate()
    return config


def _override_entries(entries: list[Any], overrides: dict[str, Any]) -> list[Any]:
    entries = list(entries)
    for key, value in overrides.items():
        names = [default_name(e) if isinstance(e, dict) else None for e in entries]
        index = int(key) if str(key).isdigit() else names.index(key) if key in names else None
        if index is None or index >= len(entries):
            raise ConfigError(
                f"benchmarks.{key}: no such benchmark entry (got {key!r}). Fix: use an index 0-{len(entries) - 1} or"
                f" one of {names}"
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"benchmarks.{key}: expected fields (got {value!r}). Fix: write --benchmarks.{key}.FIELD VALUE"
            )
        entries[index] = merge(entries[index], value)
    return entries


# --- adapters --------------------------------------------------------------------------------------------


def resolve_adapter(ref: str, *, field_name: str, optional: bool = False, base_model: str | None = None) -> str | None:
    """Check an adapter exists (a local folder, else a Hub repo with `adapter_config.json`) before any model loads.

    Returns `ref`, or None (with a warning) when it is missing and `optional`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    local = Path(ref)
    try:
        if local.is_dir():
            config_file = local / "adapter_config.json"
            if not config_file.is_file():
                raise EvalError(
                    f"{field_name}: {ref} holds no adapter_config.json. Fix: point it at the folder `nanoflux train`"
                    " wrote (its output_dir)"
                )
        else:
            config_file = Path(hf_hub_download(ref, "adapter_config.json"))
    except (OSError, HFValidationError, EntryNotFoundError) as err:
        if optional:
            logger.warning(
                "%s %r not found (no such folder, and not readable from the Hub: %s): evaluating the base model only",
                field_name,
                ref,
                type(err).__name__,
            )
            return None
        raise EvalError(
            f"{field_name}: adapter {ref!r} not found (no such folder, and the Hub said {type(err).__name__}). Fix:"
            f" train one first (nanoflux train), check the repo id and HF_TOKEN, or set {field_name}: null"
        ) from None
    trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if base_model and trained_on and trained_on != base_model:
        logger.warning("%s %s was trained on %s, but the base model is %s", field_name, ref, trained_on, base_model)
    return ref


# --- the run ---------------------------------------------------------------------------------------------


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


def judge(bench: BenchmarkConfig, examples: Sequence[Example], outputs: Sequence[str]) -> list[dict[str, Any]]:
    """Extract the answer of every output and judge it as the benchmark's authors do: the per-example details records."""
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


def evaluation_variants(config: EvalConfig) -> dict[str, str | None]:
    """Variant -> its adapter reference (None: the base model). In-process, each adapter is checked to exist before any
    model loads; an endpoint serves them by name, so the server is the judge of that (a missing name fails the first
    request on vLLM; TGI and llama.cpp answer it with the base model, which `generation` warns about)."""
    variants: dict[str, str | None] = {"base": None} if config.evaluate_base else {}
    in_process = config.engine == "transformers"
    if config.adapter:
        adapter = (
            resolve_adapter(
                config.adapter, field_name="adapter", optional=config.adapter_optional, base_model=config.model
            )
            if in_process
            else config.adapter
        )
        if adapter:
            variants["adapter"] = adapter
    if config.baseline_adapter:
        variants["baseline"] = (
            resolve_adapter(config.baseline_adapter, field_name="baseline_adapter", base_model=config.model)
            if in_process
            else config.baseline_adapter
        )
    if not variants:
        raise EvalError(
            "nothing to evaluate: evaluate_base is false and no adapter was found. Fix: name an adapter, or set"
            " evaluate_base true"
        )
    return variants


def main(config: EvalConfig, *, fresh: bool = False) -> dict[str, Any]:
    """`nanoflux eval`: evaluate every variant on every benchmark and write the results. Returns results.json's content.

    `fresh` discards the answers an earlier endpoint evaluation journaled in `output_dir` (instead of resuming).
    A failed evaluation removes what it wrote, except a journal with answers (trainer.generation.OutputFolder)."""
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    with OutputFolder(output_dir):
        # Data, adapters and training summaries first: a wrong dataset id, column or adapter fails before any model
        # loads or any request goes out.
        targets = {bench.name: partition_benchmark(bench, config.partition) for bench in config.benchmarks}
        revisions = {name: resolve_revision(target) for name, target in targets.items()}
        data = {
            bench.name: load_benchmark(
                bench,
                reasoning=config.reasoning,
                limit=config.limit,
                revision=revisions[bench.name],
                partition=config.partition,
            )
            for bench in config.benchmarks
        }
        variants = evaluation_variants(config)
        compute = None
        if config.compute:
            tokenizer = load_tokenizer(config.model) if config.compute.nanoflux_data else None
            compute = compute_accounting(
                config.compute,
                tokenizer,
                reasoning=config.reasoning,
                adapter=variants.get("adapter"),
                baseline_adapter=variants.get("baseline"),
            )

        groups = [
            Group(variant, adapter, bench.name, data[bench.name])
            for variant, adapter in variants.items()
            for bench in config.benchmarks
        ]
        answers = generate_answers(config, groups, output_dir, fresh=fresh)

        scores: dict[str, dict[str, Any]] = {bench.name: {} for bench in config.benchmarks}
        details: dict[str, dict[str, list[dict[str, Any]]]] = {bench.name: {} for bench in config.benchmarks}
        (output_dir / "details").mkdir(parents=True, exist_ok=True)
        for group in groups:
            records = judge(targets[group.benchmark], group.examples, answers.texts[(group.variant, group.benchmark)])
            with open(output_dir / "details" / f"{group.benchmark}-{group.variant}.jsonl", "w") as f:
                f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in records)
            result = score(
                [d["correct"] for d in records],
                sum(d["extracted"] is None for d in records),
                samples=config.bootstrap_samples,
                seed=config.seed,
            )
            seconds = answers.seconds.get((group.variant, group.benchmark))
            result["wall_time_s"] = (
                None if seconds is None else round(seconds, 1)
            )  # None: every answer came from the journal
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

        results = results_record(
            config, variants, targets, revisions, data, scores, details, answers, compute, started
        )
        write_results(results, output_dir)
    logger.info("%s", eval_summary(results, output_dir))
    return results


def results_record(
    config: EvalConfig,
    variants: dict[str, str | None],
    targets: dict[str, BenchmarkConfig],
    revisions: dict[str, str | None],
    data: dict[str, ExampleSet],
    scores: dict[str, dict[str, Any]],
    details: dict[str, dict[str, list[dict[str, Any]]]],
    answers: Answers,
    compute: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    """results.json's content: what was evaluated on which rows, the scores, the paired comparisons and aggregates."""
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
                "rows": len(data[b.name]),
                "multimedqa": b.multimedqa,
                "scoring": scoring_rule(targets[b.name]),
                "selection": data[b.name].selection,
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
