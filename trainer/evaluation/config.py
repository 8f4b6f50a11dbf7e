"""An evaluation's recipe: the base model, its adapters, the benchmarks and the generation settings (`EvalConfig`),
and `build_eval_config`, which reads it from a YAML recipe and `--field value` overrides (a benchmark entry is
overridden by its position or its name). The benchmarks' own settings (`BenchmarkConfig`) live in the kernel
(nanoflux.benchmarks); the endpoint engine's server settings beside the engine (trainer.evaluation.generation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoflux.benchmarks import PARTITIONS, BenchmarkConfig, default_name, dev_benchmark
from nanoflux.models import DEFAULT_MODEL_ID
from nanoflux.recipe import ConfigError, check_range, fail, from_dict, load_recipe, merge, parse_overrides
from nanoflux.rows import EvalError
from trainer.evaluation.compute import ComputeConfig
from trainer.evaluation.generation import ENGINES, EndpointConfig


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
    """`test`: every benchmark's test rows (report these). `dev`: its dev rows (choose settings on these, e.g. sweep
    cells)."""
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
    answers are journaled, so a killed evaluation resumes (see trainer/evaluation/generation.py)."""
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

    A benchmark entry is overridden by its position or its name: `--benchmarks.0.limit 5`,
    `--benchmarks.medqa.split test`; `--partition dev` evaluates every benchmark's dev rows.
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
