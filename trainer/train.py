"""Fine-tune a base model with LoRA on one pinned version of a NanoFlux dataset (TRL `SFTTrainer` + PEFT).

Usage:
    nanoflux train --config configs/train/local.yaml                   # packaged SmolLM2, CPU, a few minutes
    nanoflux train --config configs/train/qwen3-4b-lora.yaml           # Qwen3-4B on a GPU, pushed to the Hub
    nanoflux train --config configs/train/local.yaml --max_steps 3 --revision v2
    nanoflux publish-adapter outputs/adapter --repo_id org/name        # retry only the push of a trained adapter

`main(config)` reads top to bottom: load the dataset at `revision` and resolve the exact commit it points to (before
any model is loaded, so a wrong version fails in seconds), or a benchmark's training rows for the full-benchmark
baseline (trainer.baseline), as TRL prompt-completion rows (trainer.train_data); with `eval_recipe`, refuse rows that
ask a question of that evaluation's test rows; check the adapter repo is writable; load the base model; train a LoRA
adapter with `SFTTrainer(peft_config=LoraConfig(...))` whose loss covers the assistant's answer only (the prompt's
labels are masked); then write to `output_dir`: the adapter (never merged weights), `training_summary.json` (with the
`compute` a measured compute ratio needs), the resolved config `nanoflux_train.yaml` and the adapter card `README.md`,
which pins the data as `repo@tag@commit`. With `push_to_hub`, those files go up in one commit; a failed push leaves
them on disk and `publish_adapter` (the `publish-adapter` command) retries just the push.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from builder import PublishError
from nanoflux.benchmarks import BenchmarkConfig
from nanoflux.hub import open_target, package_versions
from nanoflux.models import DEFAULT_MODEL_ID, model_path
from nanoflux.recipe import check_range, check_repo_id, fail, load_config, to_dict
from trainer.train_data import (  # noqa: F401  (TrainError, load_train_data: re-exported)
    TrainData,
    TrainError,
    check_test_rows,
    load_train_data,
)

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).resolve().parent / "adapter_card.md"
SUMMARY_FILE = "training_summary.json"
CONFIG_FILE = "nanoflux_train.yaml"
CARD_TAGS = ["nanoflux", "lora", "sft", "trl"]
# What goes up to the adapter repo: the top-level files of output_dir (adapter, tokenizer, card, summary, config) but
# no pickles (`training_args.bin` is a pickled TrainingArguments) and no folders (checkpoints, logs).
UPLOAD_SKIP = ("*.bin", "*.pt", "*.pth", "*.pkl")
VERSIONED_PACKAGES = ("nanoflux", "trl", "peft", "transformers", "torch", "datasets", "huggingface_hub")


@dataclass
class TrainConfig:
    """A LoRA fine-tuning run: which dataset version, which base model, the LoRA and the training settings."""

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
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the modules that get a LoRA adapter, or `[all-linear]`."""
    learning_rate: float = 2.0e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run `num_train_epochs`)."""
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    """Conversations are truncated to this many tokens."""
    bf16: bool = False
    """Load the base model in bfloat16 and train in bf16 mixed precision (GPU); false: fp32."""
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    seed: int = 0
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
    save_steps: int = 0
    """Save a checkpoint every this many steps (0: none). A re-run with the same output_dir resumes from the last one."""
    backend: str = "local"
    """`local`: train here. `jobs`: submit the run as a Hugging Face Job (see trainer/jobs.py); needs push_to_hub."""
    flavor: str = "a10g-large"
    """Jobs hardware flavor (backend jobs), e.g. a10g-large, a100-large, h100."""
    job_timeout: str = "2h"
    """Jobs time limit (backend jobs): seconds, or a number with s/m/h/d. The job is killed after it."""
    job_image: str = "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime"
    """Docker image the job runs in (backend jobs): CUDA, Python and torch; NanoFlux is installed on top."""
    job_package: str | None = None
    """pip requirement for NanoFlux inside the job (backend jobs); null: upload this checkout as a wheel."""
    job_namespace: str | None = None
    """User or org the job runs (and is billed) under (backend jobs); null: the token's user."""

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
        check_range("lora_r", self.lora_r, 1, 1024)
        check_range("lora_alpha", self.lora_alpha, 1, 4096)
        check_range("lora_dropout", self.lora_dropout, 0.0, 0.9)
        if not self.lora_target_modules or not all(m.strip() for m in self.lora_target_modules):
            fail(
                "lora_target_modules",
                self.lora_target_modules,
                "needs module names",
                "e.g. [q_proj, v_proj] or [all-linear]",
            )
        check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_range("num_train_epochs", self.num_train_epochs, 0.0, 1000.0, low_open=True)
        if self.max_steps != -1 and self.max_steps < 1:
            fail("max_steps", self.max_steps, "out of range", "use -1 (run num_train_epochs) or a value >= 1")
        check_range("per_device_train_batch_size", self.per_device_train_batch_size, 1, 4096)
        check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, 4096)
        check_range("max_length", self.max_length, 16, 1_048_576)
        check_range("logging_steps", self.logging_steps, 1, 1_000_000)
        if not self.output_dir.strip():
            fail("output_dir", self.output_dir, "empty", "name a folder, e.g. outputs/adapter")
        check_range("save_steps", self.save_steps, 0, 1_000_000)
        if self.backend not in ("local", "jobs"):
            fail("backend", self.backend, "unknown", "use local (train here) or jobs (a Hugging Face Job)")
        if self.backend == "jobs":
            from trainer.jobs import check_job_settings

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


# --- the run ---------------------------------------------------------------------------------------------


def main(config: TrainConfig) -> dict[str, Any]:
    """`nanoflux train`: train, save the adapter, its summary, config and card, and push if asked. Returns the summary."""
    import torch
    from peft import LoraConfig, PeftConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig

    if config.bf16 and not torch.accelerator.is_available():
        raise TrainError(
            "bf16: no GPU or other accelerator found (got True). Fix: pass --bf16 false to train in fp32 on CPU"
        )
    output_dir = Path(config.output_dir)
    # Data, the test-row guard and the push target first: a wrong version, a leaked test row or a read-only token
    # fails before any compute.
    data = load_train_data(config)
    checked = (
        check_test_rows(config, data, f"the training data ({_data_record(config, data, None)['pinned']})")
        if config.eval_recipe
        else None
    )
    if config.push_to_hub:
        _preflight(config)

    path = model_path(config.model)
    logger.info("Loading %s%s", config.model, f" from {path}" if path != config.model else "")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if config.bf16 else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # "all-linear" is PEFT's shorthand and must be passed as a string, not as a module name.
    targets = config.lora_target_modules
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(output_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        completion_only_loss=True,  # prompt-completion rows: the loss covers the assistant's answer only
        bf16=config.bf16,  # SFTConfig defaults to bf16 and checkpointing on: always say which
        activation_checkpointing=config.gradient_checkpointing,  # transformers' new name for gradient_checkpointing
        logging_steps=config.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # log the loss as it is: the default hides NaN/inf steps behind an average
        seed=config.seed,
        include_num_input_tokens_seen="non_padding",  # the tokens actually trained on, for the card
        # Checkpoints (adapter + optimizer state) go to checkpoint-N/ folders, which are never uploaded.
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=2,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = make_trainer(config, model, tokenizer, args, peft_config, data.train, data.evaluation)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable parameters of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    tokens = epoch_tokens(trainer.train_dataset)
    examples = len(trainer.train_dataset)  # TRL drops a row whose answer max_length cut off entirely
    if examples < len(data.train):
        logger.warning(
            "%d of %d rows lost their whole answer to max_length %d and are not trained on. Fix: raise max_length",
            len(data.train) - examples,
            len(data.train),
            config.max_length,
        )

    # A run killed part-way resumes from its last checkpoint (optimizer, scheduler, data order and step restored); the
    # clock carries the seconds the earlier segments trained.
    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    clock = TrainClock(Path(checkpoint) if checkpoint else None)
    if checkpoint:
        logger.info("Resuming from %s (%.0f s trained before)", checkpoint, clock.before)
    trainer.add_callback(clock.callback())
    clock.start()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = clock.seconds()
    eval_loss = trainer.evaluate()["eval_loss"] if data.evaluation is not None else None

    trainer.save_model(str(output_dir))  # a PeftModel saves the adapter only (+ the tokenizer), never merged weights
    if path != config.model:
        # PEFT wrote the folder the base was loaded from (a local cache for the packaged model) as the base model;
        # the adapter must name the model id, so that it loads anywhere (AutoPeftModel, the Hub's widgets).
        adapter_config = PeftConfig.from_pretrained(str(output_dir))
        adapter_config.base_model_name_or_path = config.model
        adapter_config.save_pretrained(str(output_dir))

    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    device = trainer.args.device
    devices = args.world_size
    summary = {
        "base_model": config.model,
        "dataset": {
            **_data_record(config, data, len(data.evaluation) if data.evaluation is not None else None),
            "eval_recipe": config.eval_recipe,
            "test_rows_checked": checked,
        },
        "steps": trainer.state.global_step,
        "resumed_from": Path(checkpoint).name if checkpoint else None,
        "epochs": trainer.state.epoch,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "wall_time_s": round(train_seconds, 1),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # What a measured compute ratio needs, in one place (`nanoflux eval`'s compute section reads it).
        "compute": {
            "optimizer_steps": trainer.state.global_step,
            "epochs_trained": trainer.state.epoch,
            "examples": examples,
            "train_tokens": trainer.state.num_input_tokens_seen,
            "tokens_per_epoch": tokens["input"],
            "loss_tokens_per_epoch": tokens["loss"],
            "train_seconds": round(train_seconds, 1),
            "devices": devices,
            "device_seconds": round(train_seconds * devices, 1),
            "device_name": device_name(device),
            "segments": clock.segments,
        },
        "loss": {
            "first": losses[0][1] if losses else None,
            "min": min(loss for _, loss in losses) if losses else None,
            "last": losses[-1][1] if losses else None,
            "mean": result.training_loss,
            "curve": [[step, loss] for step, loss in losses],
            "on": "completion only (the assistant's answer; prompt tokens are masked)",
        },
        "eval_loss": eval_loss,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "hyperparameters": {
            **{k: v for k, v in to_dict(config).items() if k.startswith("lora_")},
            "learning_rate": config.learning_rate,
            "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "num_train_epochs": config.num_train_epochs,
            "max_steps": config.max_steps,
            "epochs_trained": trainer.state.epoch,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "effective_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps * devices,
            "max_length": config.max_length,
            "precision": "bf16" if config.bf16 else "fp32",
            "gradient_checkpointing": config.gradient_checkpointing,
            "enable_thinking": config.enable_thinking,
            "seed": config.seed,
        },
        "license": config.license,
        "packages": package_versions(VERSIONED_PACKAGES),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not all(math.isfinite(loss) for _, loss in losses):
        logger.warning("The training loss was not finite at some step: check the learning rate and the precision")
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(public_config(config), sort_keys=False))
    write_card(output_dir, config.push_to_hub)
    loss = summary["loss"]
    logger.info(
        "Trained %d steps (%.2f epochs) on %d tokens in %.0f s on %s; loss first %s, min %s, last %s. Adapter in %s",
        summary["steps"],
        summary["epochs"],
        summary["train_tokens"],
        train_seconds,
        summary["compute"]["device_name"],
        loss["first"],
        loss["min"],
        loss["last"],
        output_dir,
    )

    if config.push_to_hub:
        summary["pushed_commit"] = publish_adapter(
            output_dir, config.push_to_hub, config.adapter_hub_dir, private=config.private
        )
    return summary


def make_trainer(
    config: TrainConfig, model: Any, tokenizer: Any, args: Any, peft_config: Any, train: Any, evaluation: Any | None
) -> Any:
    """TRL's SFTTrainer on prompt-completion rows: it applies the chat template (with `enable_thinking` when set, as
    evaluation does) and masks the prompt's labels (-100), so the loss is on the assistant's answer only."""
    from trl import SFTTrainer

    def with_kwargs(dataset: Any) -> Any:
        if dataset is None or config.enable_thinking is None:
            return dataset
        return dataset.add_column("chat_template_kwargs", [{"enable_thinking": config.enable_thinking}] * len(dataset))

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=with_kwargs(train),
        eval_dataset=with_kwargs(evaluation),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def epoch_tokens(dataset: Any) -> dict[str, int]:
    """Tokens of one epoch over a prepared (tokenized, truncated) dataset: all of them, and those with a loss."""
    inputs = loss = 0
    for labels in dataset["labels"]:
        inputs += len(labels)
        loss += sum(label != -100 for label in labels)
    return {"input": inputs, "loss": loss}


class TrainClock:
    """Training seconds across a run and the earlier segments it resumed from (each checkpoint records the total)."""

    FILE = "nanoflux_clock.json"

    def __init__(self, checkpoint: Path | None) -> None:
        saved = (
            json.loads((checkpoint / self.FILE).read_text())
            if checkpoint and (checkpoint / self.FILE).is_file()
            else {}
        )
        self.before: float = float(saved.get("train_seconds", 0.0))
        self.segments: int = int(saved.get("segments", 0)) + 1
        self._start = time.perf_counter()

    def start(self) -> None:
        self._start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self._start

    def callback(self) -> Any:
        """A TrainerCallback that writes the total so far into every checkpoint transformers saves."""
        from transformers import TrainerCallback

        clock = self

        class SaveClock(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    (folder / clock.FILE).write_text(
                        json.dumps({"train_seconds": clock.seconds(), "segments": clock.segments})
                    )

        return SaveClock()


def device_name(device: Any) -> str:
    """The hardware a run trained on, in words: the GPU's name, else the CPU's model name."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _data_record(config: TrainConfig, data: TrainData, eval_rows: int | None) -> dict[str, Any]:
    """What the adapter was trained on, for the summary and the card."""
    targets = {"targets": data.targets, "rows_with_reasoning": data.rows_with_reasoning, "prompt": data.prompt}
    bench = config.benchmark
    if bench is not None:
        revision = bench.revision or "main"
        return {
            "benchmark": bench.name,
            "repo_id": bench.path,
            "subset": bench.subset,
            "split": bench.split,
            "revision": revision,
            "commit": data.commit,
            "pinned": f"{bench.path}@{revision}@{data.commit}",
            "rows": len(data.train),
            "eval_split": None,
            "eval_rows": None,
            **targets,
        }
    return {
        "repo_id": config.dataset_name,
        "revision": config.revision,
        "commit": data.commit,
        "pinned": f"{config.dataset_name}@{config.revision}@{data.commit}",
        "rows": len(data.train),
        "eval_split": config.eval_split,
        "eval_rows": eval_rows,
        **targets,
    }


# --- card and push ---------------------------------------------------------------------------------------


def placeholder_name(summary: dict[str, Any]) -> str:
    """The adapter's name until it has a repo: the dataset's and the base model's names, e.g.
    `nanoflux-medical-SmolLM2-135M-Instruct-lora` (never the local folder it was saved in)."""
    return f"{summary['dataset']['repo_id'].split('/')[-1]}-{summary['base_model'].rstrip('/').split('/')[-1]}-lora"


def write_card(output_dir: str | Path, adapter_id: str | None = None) -> Path:
    """Render `README.md` in `output_dir` from its `training_summary.json` (the values trained, not the config's
    limits). `adapter_id` is the adapter's repo: the card's title, `model_name` and loading snippet (without one, a
    placeholder name). An evaluation already written into the card (`model-index` and its `## Evaluation` section,
    see trainer/reporting.py) is kept, under the new name."""
    from huggingface_hub import ModelCard, ModelCardData

    from nanoflux.models import PACKAGED_MODELS

    output_dir = Path(output_dir)
    path = output_dir / "README.md"
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    earlier = ModelCard.load(path) if path.is_file() else None
    evaluated = earlier is not None and bool(earlier.data.eval_results)
    name = adapter_id or placeholder_name(summary)
    card_data = ModelCardData(
        model_name=name,
        base_model=summary["base_model"],
        library_name="peft",
        license=summary["license"],
        datasets=[summary["dataset"]["repo_id"]],
        tags=CARD_TAGS,
        pipeline_tag="text-generation",
        eval_results=earlier.data.eval_results if evaluated else None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=name,
        adapter_id=adapter_id,
        packaged_base=summary["base_model"] in PACKAGED_MODELS,
        summary=summary,
        hp=summary["hyperparameters"],
    )
    if evaluated:
        section = re.compile(r"^## Evaluation[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
        found = section.search(earlier.text)
        if found:
            card.text = section.sub(lambda _: found.group(0), card.text, count=1)
    card.save(path)
    return path


def _preflight(config: TrainConfig) -> None:
    """Before any compute: the adapter repo exists (created if needed) and we may write to it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        with open_target(config.adapter_hub_dir) as api:
            api.create_repo(config.push_to_hub, repo_type="model", private=config.private, exist_ok=True)
    except HfHubHTTPError as err:
        raise PublishError(
            f"push_to_hub: cannot write to model repo {config.push_to_hub} ({str(err).splitlines()[0]}). "
            "Fix: use a write token (HF_TOKEN) and check the repo id, or remove push_to_hub"
        ) from None


def publish_adapter(output_dir: str | Path, repo_id: str, hub_dir: str | None = None, *, private: bool = False) -> str:
    """Upload a trained adapter folder (adapter, tokenizer, card, summary, config) to model repo `repo_id` in one
    commit, on the Hub or in the local repository folder `hub_dir`; nothing is retrained. Returns the commit sha."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    output_dir = Path(output_dir)
    needed = [output_dir / name for name in ("adapter_config.json", SUMMARY_FILE)]
    if not all(path.is_file() for path in needed):
        raise PublishError(
            f"output_dir: {output_dir} holds no trained adapter (needs adapter_config.json and {SUMMARY_FILE}). Fix:"
            " run `nanoflux train` first"
        )
    write_card(output_dir, repo_id)  # the loading snippet names the repo it goes to
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    files = sorted(
        p for p in output_dir.iterdir() if p.is_file() and not any(fnmatch.fnmatch(p.name, s) for s in UPLOAD_SKIP)
    )
    # In-memory files go up over plain LFS (huggingface_hub uses Xet only for files on disk), which both the Hub and
    # the local repository folder (LocalHub speaks LFS, not Xet) accept.
    operations = [CommitOperationAdd(path.name, io.BytesIO(path.read_bytes())) for path in files]
    try:
        with open_target(hub_dir) as api:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.create_commit(
                repo_id,
                repo_type="model",
                operations=operations,
                commit_message=f"NanoFlux LoRA adapter: {summary['base_model']} on {summary['dataset']['pinned']}",
            )
    except HfHubHTTPError as err:
        raise PublishError(
            f"pushing {output_dir} to {repo_id} failed ({str(err).splitlines()[0]}); the adapter is saved in"
            f" {output_dir}. Fix: run `nanoflux publish-adapter {output_dir} --repo_id {repo_id}"
            + (f" --hub_dir {hub_dir}" if hub_dir else "")
            + "` (nothing is retrained)"
        ) from None
    logger.info("Pushed the adapter to %s: commit %s", repo_id, commit.oid[:12])
    return commit.oid


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux train [--config RECIPE] [--detach] [--field value ...]`: here, or as a Hugging Face Job."""
    config = build_train_config(args.config, overrides)
    if config.backend != "jobs":
        main(config)
        return
    from trainer.jobs import main as submit

    job = submit(config, detach=args.detach, on_log=print)
    print(f"job {job.id}: {job.status.stage} ({job.url})")


def publish_adapter_command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux publish-adapter OUTPUT_DIR --repo_id ORG/NAME [--hub_dir DIR] [--private]`."""
    commit = publish_adapter(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private)
    print(f"{args.repo_id}: adapter pushed, commit {commit}")
