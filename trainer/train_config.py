"""A training recipe (`TrainConfig`) and its checks, run before any data is read or any compute is spent.

The recipe names what to train on (a pinned dataset version, or a benchmark's training split for the full-benchmark
baseline), the base model, and three nested blocks:

- `lora:` the adapter (r, alpha, dropout, target_modules), handed to `peft.LoraConfig`;
- `sft:` a pass-through mapping handed to `trl.SFTConfig` as is: any SFTConfig field (`learning_rate`, `max_steps`,
  `per_device_train_batch_size`, `lr_scheduler_type`, `warmup_ratio`, ...). NanoFlux's own defaults for it are
  `SFT_DEFAULTS`; a few fields are NanoFlux's to set (`SFT_FIXED`). It is validated by constructing `SFTConfig` itself
  (plus SFTConfig's own type hints and a few ranges it does not check), so an unknown key or a bad value fails here
  naming `sft.<key>`, the value and the fix;
- `jobs:` where it runs: here (`backend: local`) or as a Hugging Face Job (`backend: jobs`: flavor, timeout, image,
  package, namespace), with the checks a job needs (a job's disk is ephemeral: it must push its adapter).

On the command line a nested field is a dotted path: `--sft.learning_rate 1e-4 --lora.r 16 --jobs.backend jobs`.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoflux.benchmarks import BenchmarkConfig
from nanoflux.errors import NanoFluxError
from nanoflux.models import DEFAULT_MODEL_ID
from nanoflux.recipe import check_range, check_repo_id, fail, load_config, to_dict

SUMMARY_FILE = "training_summary.json"
CONFIG_FILE = "nanoflux_train.yaml"
TIMEOUT_RE = re.compile(r"^\d+(\.\d+)?[smhd]?$")

# NanoFlux's defaults for `sft:` (a recipe's keys win). They differ from SFTConfig's where NanoFlux trains small LoRA
# runs on CPU or one GPU: fp32 unless asked (SFTConfig turns bf16 and checkpointing on), the loss logged at every step
# as it is (SFTConfig's filter hides NaN/inf steps behind an average), no checkpoints unless asked (`save_strategy:
# steps` and `save_steps: N`; a re-run with the same output_dir resumes from the last one), no experiment tracker.
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2.0e-4,
    "num_train_epochs": 1.0,
    "max_steps": -1,  # -1: run num_train_epochs
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": 1024,  # conversations are truncated to this many tokens
    "bf16": False,  # true: the base model loads in bfloat16 and trains in bf16 mixed precision (GPU)
    "activation_checkpointing": False,  # transformers' name for gradient checkpointing
    "logging_steps": 1,
    "logging_first_step": True,
    "logging_nan_inf_filter": False,
    "seed": 0,
    "save_strategy": "no",
    "save_steps": 500,
    "save_total_limit": 2,  # checkpoint-N/ folders (adapter + optimizer state), never uploaded
    "report_to": "none",
}
# What NanoFlux sets itself, whatever the recipe says: the run's folder, the loss on the answer only (the card states
# it), and the token count the summary and the compute comparison read.
SFT_FIXED = {
    "output_dir": "set from the recipe's output_dir",
    "completion_only_loss": "the loss always covers the assistant's answer only (prompt-completion rows)",
    "include_num_input_tokens_seen": "NanoFlux counts the tokens trained on (non-padding) for the summary",
}
# Ranges SFTConfig does not check, checked here so that a typo fails before the run, not in the middle of it.
SFT_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.0, 1.0, True),
    "num_train_epochs": (0.0, 1000.0, True),
    "per_device_train_batch_size": (1, 4096, False),
    "gradient_accumulation_steps": (1, 4096, False),
    "max_length": (16, 1_048_576, False),
    "save_steps": (1, 1_000_000, False),
}


class TrainError(NanoFluxError, RuntimeError):
    """The run cannot go on (e.g. no such dataset version, no rows); the message says why and what to do."""


@dataclass
class LoraSettings:
    """The LoRA adapter (`peft.LoraConfig`)."""

    r: int = 8
    """Rank of the adapter's matrices."""
    alpha: int = 16
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the modules that get a LoRA adapter, or `[all-linear]`."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.r", self.r, 1, 1024)
        check_range(f"{path}.alpha", self.alpha, 1, 4096)
        check_range(f"{path}.dropout", self.dropout, 0.0, 0.9)
        if not self.target_modules or not all(m.strip() for m in self.target_modules):
            fail(
                f"{path}.target_modules",
                self.target_modules,
                "needs module names",
                "e.g. [q_proj, v_proj] or [all-linear]",
            )


@dataclass
class JobSettings:
    """Where the run trains: here, or as a Hugging Face Job (trainer/jobs.py)."""

    backend: str = "local"
    """`local`: train here. `jobs`: submit the run as a Hugging Face Job (see trainer/jobs.py); needs push_to_hub."""
    flavor: str = "a10g-large"
    """Jobs hardware flavor (backend jobs), e.g. a10g-large, a100-large, h100."""
    timeout: str = "2h"
    """Jobs time limit (backend jobs): seconds, or a number with s/m/h/d. The job is killed after it."""
    image: str = "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime"
    """Docker image the job runs in (backend jobs): CUDA, Python and torch; NanoFlux is installed on top."""
    package: str | None = None
    """pip requirement for NanoFlux inside the job (backend jobs); null: upload this checkout as a wheel."""
    namespace: str | None = None
    """User or org the job runs (and is billed) under (backend jobs); null: the token's user."""


@dataclass
class TrainConfig:
    """A LoRA fine-tuning run: which dataset version, which base model, the LoRA, the SFT settings, where it runs."""

    dataset_name: str = "local/nanoflux-medical"
    """NanoFlux dataset repo (`org/name`) on the Hub, or in `hub_dir`."""
    revision: str = "v1"
    """Dataset version: a tag (`v1`, `v2`, ...) or a commit sha. The card pins the commit it resolves to."""
    hub_dir: str | None = None
    """Read the dataset from this local repository folder (see `localhub`) instead of the Hub."""
    benchmark: BenchmarkConfig | None = None
    """Train on this benchmark's own training split instead of a NanoFlux dataset, e.g. {format: medqa, split: train}:
    the paper's full-benchmark fine-tuning baseline (dataset_name and revision are then not used)."""
    benchmark_reasoning: bool = True
    """Baseline only: the user turn asks for step-by-step reasoning (as `nanoflux eval` with `reasoning: true`) and the
    target carries the benchmark's explanation where it has one. false: the answer-only prompt and target, for a
    benchmark without explanations (MedQA) whose adapters are all evaluated with `--reasoning false`."""
    eval_split: str | None = None
    """A split of the dataset repo to compute an eval loss on after training (null: none)."""
    eval_recipe: str | None = None
    """The evaluation recipe the adapter will be scored with: training refuses to start when a training row asks a
    question of its benchmarks' test rows (null: no check)."""
    enable_thinking: bool | None = None
    """Passed to the chat template when set, as `nanoflux eval` passes it (Qwen3: false puts the empty think block in
    the prompt, as evaluation asks), so that training sees the prompt evaluation sends."""
    model: str = DEFAULT_MODEL_ID
    """Base model: a Hub id or a local folder; the packaged SmolLM2-135M-Instruct needs no download."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: dict[str, Any] = field(default_factory=lambda: dict(SFT_DEFAULTS))
    """TRL `SFTConfig` fields, passed through as they are (e.g. {learning_rate: 1e-4, max_steps: 20, warmup_ratio:
    0.1}); keys not given take NanoFlux's defaults (trainer/train_config.py SFT_DEFAULTS). Override one with
    --sft.<field> VALUE."""
    jobs: JobSettings = field(default_factory=JobSettings)
    output_dir: str = "outputs/adapter"
    """Where the adapter, its card, `training_summary.json` and `nanoflux_train.yaml` go."""
    push_to_hub: str | None = None
    """Upload the adapter and its card to this model repo (`org/name`) in one commit."""
    adapter_hub_dir: str | None = None
    """Push to this local repository folder instead of the Hub."""
    private: bool = False
    """Create the adapter repo as private."""
    license: str = "apache-2.0"
    """License in the adapter card (follow the base model's)."""

    def validate(self) -> None:
        check_repo_id("dataset_name", self.dataset_name)
        if not self.revision.strip():
            fail("revision", self.revision, "empty", "name a dataset version, e.g. v1")
        if not self.model.strip():
            fail("model", self.model, "empty", f"give a Hub model id, e.g. {DEFAULT_MODEL_ID}")
        if self.benchmark is not None:
            from trainer.baseline import check_baseline_source

            self.benchmark.validate("benchmark")
            check_baseline_source(self.benchmark, "benchmark")
            if self.eval_split is not None:
                fail("eval_split", self.eval_split, "a benchmark baseline has no eval split", "remove eval_split")
        if self.eval_split is not None and not self.eval_split.strip():
            fail("eval_split", self.eval_split, "empty", "name a split of the dataset repo, or remove it")
        if self.eval_recipe is not None and not self.eval_recipe.strip():
            fail(
                "eval_recipe",
                self.eval_recipe,
                "empty",
                "name the evaluation recipe, e.g. configs/eval/medical.yaml, or null",
            )
        self.lora.validate("lora")
        if not self.output_dir.strip():
            fail("output_dir", self.output_dir, "empty", "name a folder, e.g. outputs/adapter")
        self.sft = sft_settings(self.sft)
        sft_config(self)  # SFTConfig itself judges the mapping, before any data is read or any model loads
        if self.jobs.backend not in ("local", "jobs"):
            fail("jobs.backend", self.jobs.backend, "unknown", "use local (train here) or jobs (a Hugging Face Job)")
        if self.jobs.backend == "jobs":
            check_job_settings(self)
        if self.push_to_hub is not None:
            check_repo_id("push_to_hub", self.push_to_hub)
        elif self.adapter_hub_dir is not None:
            fail(
                "adapter_hub_dir",
                self.adapter_hub_dir,
                "set without push_to_hub",
                "set push_to_hub to the adapter repo (org/name), or remove adapter_hub_dir",
            )


def build_train_config(recipe: str | Path | None, cli_args: list[str] | None = None) -> TrainConfig:
    """Recipe + `--field value` overrides → a validated TrainConfig (errors name the field, the value and the fix)."""
    return load_config(TrainConfig, recipe, cli_args)  # `1e-4` (YAML 1.1 text) is read as a float for every stage


def public_config(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as saved and uploaded: no local paths (and no secrets: tokens only ever come from the
    environment)."""
    return {**to_dict(config), "hub_dir": None, "adapter_hub_dir": None, "output_dir": None}


# --- sft: the pass-through to trl.SFTConfig --------------------------------------------------------------


def sft_settings(sft: dict[str, Any]) -> dict[str, Any]:
    """NanoFlux's defaults under the recipe's `sft:` keys, each key an SFTConfig field NanoFlux leaves to the recipe,
    each value of the type SFTConfig declares (`1e-4` written in YAML 1.1 is text: read as the float it means).

    Raises:
        ConfigError: naming `sft.<key>`, the value and the fix.
    """
    import dataclasses

    from trl import SFTConfig

    hints = typing.get_type_hints(SFTConfig)
    known = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    settings = dict(SFT_DEFAULTS)
    if "gradient_checkpointing" in sft and "activation_checkpointing" not in sft:
        del settings["activation_checkpointing"]  # the older name of the same switch: the recipe's value must win
    for key, value in sft.items():
        path = f"sft.{key}"
        if key in SFT_FIXED:
            fail(path, value, f"NanoFlux sets this field ({SFT_FIXED[key]})", f"remove {path} from the recipe")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean `sft.{close[0]}`?" if close else "use a field of trl.SFTConfig (TRL's SFT docs)"
            fail(path, value, "not a field of trl.SFTConfig", hint)
        settings[key] = _typed(hints.get(key), value, path)
    for key, (low, high, low_open) in SFT_RANGES.items():
        if isinstance(settings.get(key), (int, float)) and not isinstance(settings[key], bool):
            check_range(f"sft.{key}", settings[key], low, high, low_open=low_open)
    if settings["max_steps"] != -1 and settings["max_steps"] < 1:
        fail("sft.max_steps", settings["max_steps"], "out of range", "use -1 (run num_train_epochs) or a value >= 1")
    return settings


_KINDS = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}
_SIMPLE = {
    bool: ("true or false", "true"),
    int: ("an integer", "3"),
    float: ("a number", "0.5"),
    str: ("a string", "x"),
}


def _typed(hint: Any, value: Any, path: str) -> Any:
    """`value` as the simple type (bool, int, float, str) SFTConfig declares for it; other hints pass as they are."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    if value is None or len(options) != 1 or options[0] not in _SIMPLE:
        return value
    kind = options[0]
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as text
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    words, example = _SIMPLE[kind]
    got = "true/false" if isinstance(value, bool) else _KINDS.get(type(value), type(value).__name__)
    fail(path, value, f"expected {words}, not {got}", f"write it as {words}, e.g. {path}: {example}")


def sft_config(config: TrainConfig, **runtime: Any) -> Any:
    """The `trl.SFTConfig` of a run: the recipe's `sft:` settings (NanoFlux's defaults under them), the fields NanoFlux
    fixes, and `runtime` values the recipe did not set (e.g. pinned memory on a GPU). Without an accelerator it is
    built for the CPU (`use_cpu`), so a GPU recipe (bf16) is still checked on the machine that submits it.

    Raises:
        ConfigError: naming `sft.<key>`, the value and SFTConfig's own complaint.
    """
    from trl import SFTConfig

    settings = {**runtime, **config.sft}
    fixed = {
        "output_dir": str(config.output_dir),
        "completion_only_loss": True,
        "include_num_input_tokens_seen": "non_padding",
    }
    if "use_cpu" not in settings and not _accelerator():
        settings["use_cpu"] = True
    try:
        return SFTConfig(**settings, **fixed)
    except (TypeError, ValueError) as err:
        culprit = _culprit(settings, fixed)
        problem = " ".join(str(err).split())[:300]
        if culprit is None:
            fail("sft", config.sft, f"trl.SFTConfig refused these settings: {problem}", "correct the sft: settings")
        fail(f"sft.{culprit}", settings[culprit], f"trl.SFTConfig refused it: {problem}", "see TRL's SFTConfig docs")


def _culprit(settings: dict[str, Any], fixed: dict[str, Any]) -> str | None:
    """The first setting SFTConfig refuses on its own (over SFTConfig's defaults), or None (only a combination)."""
    from trl import SFTConfig

    base = {"use_cpu": settings.get("use_cpu", False), "bf16": False, "activation_checkpointing": False}
    for key, value in settings.items():
        try:
            SFTConfig(**{**base, key: value}, **fixed)
        except (TypeError, ValueError):
            return key
    return None


def _accelerator() -> bool:
    import torch

    return torch.accelerator.is_available()


# --- jobs ------------------------------------------------------------------------------------------------


def check_job_settings(config: TrainConfig) -> None:
    """What a job needs from a training recipe, checked before anything is uploaded or submitted."""
    if not config.push_to_hub:
        fail(
            "push_to_hub",
            config.push_to_hub,
            "required with backend jobs (a job's disk is gone when it ends)",
            "set it to the adapter repo, org/name",
        )
    if config.hub_dir is not None:
        fail(
            "hub_dir",
            config.hub_dir,
            "a local folder is not visible to a job",
            "publish the dataset to the Hub and remove hub_dir",
        )
    if config.adapter_hub_dir is not None:
        fail(
            "adapter_hub_dir",
            config.adapter_hub_dir,
            "a local folder is not visible to a job",
            "remove adapter_hub_dir",
        )
    jobs = config.jobs
    if not jobs.flavor.strip():
        fail("jobs.flavor", jobs.flavor, "empty", "name a Jobs hardware flavor, e.g. a10g-large or a100-large")
    if not TIMEOUT_RE.match(str(jobs.timeout)):
        fail("jobs.timeout", jobs.timeout, "not a duration", "write seconds or a number with s/m/h/d, e.g. 90m or 2h")
    if not jobs.image.strip():
        fail(
            "jobs.image",
            jobs.image,
            "empty",
            "name a Docker image with CUDA and Python, e.g. pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime",
        )
