"""Fine-tune a base model with LoRA on one pinned version of a NanoFlux dataset (TRL `SFTTrainer` + PEFT).

Usage:
    nanoflux train --config configs/train/local.yaml                   # packaged SmolLM2, CPU, a few minutes
    nanoflux train --config configs/train/qwen3-4b-lora.yaml           # Qwen3-4B on a GPU, pushed to the Hub
    nanoflux train --config configs/train/local.yaml --sft.max_steps 3 --revision v2 --lora.r 16
    nanoflux publish-adapter outputs/adapter --repo_id org/name        # retry only the push of a trained adapter

`main(config)` reads top to bottom: load the dataset at `revision` and resolve the exact commit it points to (before
any model is loaded, so a wrong version fails in seconds), or a benchmark's training rows for the full-benchmark
baseline (trainer.baseline), as TRL prompt-completion rows (trainer.train_data); with `eval_recipe`, refuse rows that
ask a question of that evaluation's test rows; check the adapter repo is writable (trainer.adapter_hub); load the base
model; train a LoRA adapter with `SFTTrainer(peft_config=LoraConfig(...))`, its `SFTConfig` the recipe's `sft:`
mapping (trainer.train_config), whose loss covers the assistant's answer only (the prompt's labels are masked); then
write to `output_dir`: the adapter (never merged weights), `training_summary.json` (with the `compute` a measured
compute ratio needs), the resolved config `nanoflux_train.yaml` and the adapter card `README.md`
(trainer.adapter_card), which pins the data as `repo@tag@commit`. With `push_to_hub`, those files go up in one commit;
a failed push leaves them on disk and `publish_adapter` (the `publish-adapter` command) retries just the push.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from nanoflux.hub import package_versions
from nanoflux.models import model_path
from trainer.adapter_card import write_card
from trainer.adapter_hub import check_adapter_repo, publish_adapter
from trainer.train_config import (
    CONFIG_FILE,
    SUMMARY_FILE,
    LoraSettings,
    TrainConfig,
    TrainError,
    build_train_config,
    public_config,
    sft_config,
)
from trainer.train_data import TrainData, check_test_rows, load_train_data

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("nanoflux", "trl", "peft", "transformers", "torch", "datasets", "huggingface_hub")


def main(config: TrainConfig) -> dict[str, Any]:
    """`nanoflux train`: train, save the adapter, its summary, config and card, and push if asked. Returns the
    summary."""
    import torch

    if config.sft["bf16"] and not torch.accelerator.is_available():
        raise TrainError(
            "sft.bf16: no GPU or other accelerator found (got True). Fix: pass --sft.bf16 false to train in fp32 on"
            " CPU"
        )
    output_dir = Path(config.output_dir)
    # Data, the test-row guard and the push target first: a wrong version, a leaked test row or a read-only token
    # fails before any compute.
    data = load_train_data(config)
    pinned = data_record(config, data, None)["pinned"]
    checked = check_test_rows(config, data, f"the training data ({pinned})") if config.eval_recipe else None
    if config.push_to_hub:
        check_adapter_repo(config)

    model, tokenizer = load_base_model(config)
    args = sft_config(config, dataloader_pin_memory=torch.cuda.is_available())
    trainer = make_trainer(config, model, tokenizer, args, lora_config(config.lora), data.train, data.evaluation)
    prepared = prepared_data(trainer, data, args.max_length)

    run = train(trainer, output_dir, evaluate=data.evaluation is not None)
    save_adapter(trainer, config, output_dir)
    summary = training_summary(config, data, checked, trainer, args, prepared, run)
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(public_config(config), sort_keys=False))
    write_card(output_dir, config.push_to_hub)
    log_summary(summary, output_dir)

    if config.push_to_hub:
        summary["pushed_commit"] = publish_adapter(
            output_dir, config.push_to_hub, config.adapter_hub_dir, private=config.private
        )
    return summary


def load_base_model(config: TrainConfig) -> tuple[Any, Any]:
    """The base model (bfloat16 with `sft.bf16`, else float32) and its tokenizer; the packaged model from its cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(config.model)
    logger.info("Loading %s%s", config.model, f" from {path}" if path != config.model else "")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if config.sft["bf16"] else torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def lora_config(lora: LoraSettings) -> Any:
    """The recipe's `lora:` block as PEFT's LoraConfig."""
    from peft import LoraConfig

    # "all-linear" is PEFT's shorthand and must be passed as a string, not as a module name.
    targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def prepared_data(trainer: Any, data: TrainData, max_length: int) -> dict[str, Any]:
    """What the trainer will train on, once TRL prepared it: trainable parameters, examples and tokens per epoch."""
    trainable, total = trainer.model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable parameters of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    examples = len(trainer.train_dataset)  # TRL drops a row whose answer max_length cut off entirely
    if examples < len(data.train):
        logger.warning(
            "%d of %d rows lost their whole answer to max_length %d and are not trained on. Fix: raise sft.max_length",
            len(data.train) - examples,
            len(data.train),
            max_length,
        )
    return {
        "trainable": trainable,
        "total": total,
        "examples": examples,
        "tokens": epoch_tokens(trainer.train_dataset),
    }


def train(trainer: Any, output_dir: Path, *, evaluate: bool) -> dict[str, Any]:
    """Train, resuming from the last checkpoint in `output_dir` if a run was killed part-way (optimizer, scheduler,
    data order and step restored); the clock carries the seconds the earlier segments trained."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    clock = TrainClock(Path(checkpoint) if checkpoint else None)
    if checkpoint:
        logger.info("Resuming from %s (%.0f s trained before)", checkpoint, clock.before)
    trainer.add_callback(clock.callback())
    clock.start()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = clock.seconds()
    eval_loss = trainer.evaluate()["eval_loss"] if evaluate else None
    return {
        "result": result,
        "seconds": seconds,
        "checkpoint": checkpoint,
        "segments": clock.segments,
        "eval_loss": eval_loss,
    }


def save_adapter(trainer: Any, config: TrainConfig, output_dir: Path) -> None:
    """The adapter (and the tokenizer) in `output_dir`, naming the base model by its id."""
    from peft import PeftConfig

    trainer.save_model(str(output_dir))  # a PeftModel saves the adapter only (+ the tokenizer), never merged weights
    if model_path(config.model) != config.model:
        # PEFT wrote the folder the base was loaded from (a local cache for the packaged model) as the base model;
        # the adapter must name the model id, so that it loads anywhere (AutoPeftModel, the Hub's widgets).
        adapter_config = PeftConfig.from_pretrained(str(output_dir))
        adapter_config.base_model_name_or_path = config.model
        adapter_config.save_pretrained(str(output_dir))


def training_summary(
    config: TrainConfig,
    data: TrainData,
    checked: int | None,
    trainer: Any,
    args: Any,
    prepared: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """`training_summary.json`: what was trained on (pinned), the steps, tokens, time, compute, loss and settings."""
    import torch

    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    if not all(math.isfinite(loss) for _, loss in losses):
        logger.warning("The training loss was not finite at some step: check the learning rate and the precision")
    device, devices, seconds, state = trainer.args.device, args.world_size, run["seconds"], trainer.state
    lora = config.lora
    return {
        "base_model": config.model,
        "dataset": {
            **data_record(config, data, len(data.evaluation) if data.evaluation is not None else None),
            "eval_recipe": config.eval_recipe,
            "test_rows_checked": checked,
        },
        "steps": state.global_step,
        "resumed_from": Path(run["checkpoint"]).name if run["checkpoint"] else None,
        "epochs": state.epoch,
        "train_tokens": state.num_input_tokens_seen,
        "wall_time_s": round(seconds, 1),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # What a measured compute ratio needs, in one place (`nanoflux eval`'s compute section reads it).
        "compute": {
            "optimizer_steps": state.global_step,
            "epochs_trained": state.epoch,
            "examples": prepared["examples"],
            "train_tokens": state.num_input_tokens_seen,
            "tokens_per_epoch": prepared["tokens"]["input"],
            "loss_tokens_per_epoch": prepared["tokens"]["loss"],
            "train_seconds": round(seconds, 1),
            "devices": devices,
            "device_seconds": round(seconds * devices, 1),
            "device_name": device_name(device),
            "segments": run["segments"],
        },
        "loss": {
            "first": losses[0][1] if losses else None,
            "min": min(loss for _, loss in losses) if losses else None,
            "last": losses[-1][1] if losses else None,
            "mean": run["result"].training_loss,
            "curve": [[step, loss] for step, loss in losses],
            "on": "completion only (the assistant's answer; prompt tokens are masked)",
        },
        "eval_loss": run["eval_loss"],
        "trainable_parameters": prepared["trainable"],
        "total_parameters": prepared["total"],
        "hyperparameters": {
            "lora_r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "lora_target_modules": lora.target_modules,
            "learning_rate": args.learning_rate,
            "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "epochs_trained": state.epoch,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * devices,
            "max_length": args.max_length,
            "precision": "bf16" if args.bf16 else "fp32",
            "gradient_checkpointing": bool(getattr(args, "activation_checkpointing", args.gradient_checkpointing)),
            "enable_thinking": config.enable_thinking,
            "seed": args.seed,
            "sft": config.sft,  # every SFTConfig setting the recipe passed through, with NanoFlux's defaults
        },
        "license": config.license,
        "packages": package_versions(VERSIONED_PACKAGES),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def log_summary(summary: dict[str, Any], output_dir: Path) -> None:
    loss = summary["loss"]
    logger.info(
        "Trained %d steps (%.2f epochs) on %d tokens in %.0f s on %s; loss first %s, min %s, last %s. Adapter in %s",
        summary["steps"],
        summary["epochs"],
        summary["train_tokens"],
        summary["compute"]["train_seconds"],
        summary["compute"]["device_name"],
        loss["first"],
        loss["min"],
        loss["last"],
        output_dir,
    )


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


def data_record(config: TrainConfig, data: TrainData, eval_rows: int | None) -> dict[str, Any]:
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


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux train [--config RECIPE] [--detach] [--field value ...]`: here, or as a Hugging Face Job."""
    config = build_train_config(args.config, overrides)
    if config.jobs.backend != "jobs":
        main(config)
        return
    from trainer.jobs import main as submit

    job = submit(config, detach=args.detach, on_log=print)
    print(f"job {job.id}: {job.status.stage} ({job.url})")


def publish_adapter_command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux publish-adapter OUTPUT_DIR --repo_id ORG/NAME [--hub_dir DIR] [--private]`."""
    commit = publish_adapter(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private)
    print(f"{args.repo_id}: adapter pushed, commit {commit}")
