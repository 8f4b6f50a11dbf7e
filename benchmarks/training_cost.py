"""Training cost: the local LoRA recipe on CPU, the 4B recipe on a GPU, and the training-token compute ratio.

1. CPU: `trainer.train.main` with `configs/train/local.yaml` (LoRA on the packaged SmolLM2-135M, fp32) for a few
   steps, on a dataset version published to a local repository folder (NanoFlux conversations from
   `samples/benchmarks/nanoflux_messages.jsonl`). It runs in a child process, so its peak RSS is the recipe's
   own. Tokens/s are the trainer's non-padding tokens seen over its training wall time.
2. GPU: the 4B recipe's LoRA settings (`configs/train/qwen3-4b-lora.yaml`: r, alpha, dropout, target modules,
   per-device batch size, gradient accumulation, max_length, bf16, gradient checkpointing, learning rate) on a model
   built from the Qwen3-4B architecture written out below, with random weights (nothing is downloaded), trained on
   random token ids by a plain PyTorch loop (peft LoRA, AdamW on the adapter, bf16 autocast, the optimizer stepping
   every `gradient_accumulation_steps` micro-batches; not TRL's SFTTrainer, whose data collation it leaves out).
   After `gpu_warmup_steps` micro-batches, `gpu_steps` micro-batches are timed at the recipe's shape (batch x
   max_length, full sequences: what packed rows would cost) and again at `gpu_short_seq_lens` (the same batch of
   short sequences: unpacked rows of a few hundred tokens, which is how the recipe trains, TRL's packing being off):
   tokens/s, seconds per micro-batch, MFU and peak memory.

       MFU = tokens/s x model training FLOPs per token / the GPU's peak dense bf16 FLOPS (data sheet)
       model training FLOPs per token = 2 x forward FLOPs (the forward, then the backward pass for activation
           gradients only: the frozen base weights get no weight gradients; LoRA's own small matmuls, <1%, are not
           counted)
       HFU (hardware FLOPs) = the same with 3 x forward FLOPs when gradient checkpointing recomputes the forward
       forward FLOPs per token = 2 x (parameters of every matrix multiply, lm_head included)
                                 + 4 x layers x sequence length x (heads x head_dim)   (attention scores and values,
                                 counted without the causal mask's halving, as in PaLM's MFU)

   `python -m benchmarks.run --parts training` measures it when `torch.cuda.is_available()`. On a GPU machine
   without the project's whole stack, `python3 -m benchmarks.gpu_training OUT.json` runs the same code with only
   torch, transformers, peft, numpy and yaml, and writes the record that `gpu_result` names
   (benchmarks/results/training_gpu.json). Without a GPU, that record is reported, marked as measured elsewhere
   (`measured_here: false`, with its machine and date), or, with `gpu_result: null` or no file, the part is skipped
   with the reason recorded; either way the same code runs on CPU on a tiny Qwen3 configuration, so that it is
   known to work.

3. Compute ratio (the paper's 3-14x): training tokens of a 200-example NanoFlux dataset against the training set each
   benchmark's full fine-tuning baseline trains on (trainer/baseline.py): GSM-Hard's is GSM8K's train split, PubMedQA's
   is PQA-A (`pqa_artificial`), MedQA's and MedMCQA's are their train splits, each less the 500 rows the project holds
   out of it as the benchmark's dev split. Genome-Bench has no training split (its one split is its test set, and
   trainer/baseline.py refuses it as a baseline): its entry is the benchmark itself, marked `baseline: false`, and left
   out of every aggregate. Targets carry the benchmark's reasoning where it has one (GSM8K's solution, MedMCQA's `exp`,
   PubMedQA's `long_answer`, Genome-Bench's explanation; MedQA has none), as trainer.evaluation.compute writes and
   counts them (chat template applied, one epoch). Offline this is an ESTIMATE: each set's documented row count x the
   mean tokens per row of its fixture rows (samples/benchmarks/, written for this project in the real schema;
   PubMedQA's fixture is pqa_labeled rows, the same schema as pqa_artificial), and 200 x the mean of the NanoFlux
   fixture rows. With `from_hub: true` the real training splits are read from the Hub and counted in full.

4. GPU-seconds (when there is a GPU measurement): each dataset's counted (or estimated) training tokens / a measured
   tokens/s, at each measured shape, one epoch. The rates are measured; the token counts are those of part 3 (an
   estimate offline, and counted with the SmolLM2 tokenizer, not Qwen3's); padding is not modelled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.throughput import display_path
from nanoflux.recipe import check_range, fail, to_dict

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"
LOCAL_RECIPE = ROOT / "configs" / "train" / "local.yaml"
GPU_RECIPE = ROOT / "configs" / "train" / "qwen3-4b-lora.yaml"
BENCH_REPO = "local/nanoflux-bench"

# Qwen/Qwen3-4B's config.json, written out: the architecture is all the GPU benchmark needs, the weights are random.
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
    attention_bias=False,
)
TINY_QWEN3 = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    hidden_act="silu",
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
# Peak dense bf16 tensor FLOPS by device name (vendor data sheets); another GPU: set gpu_peak_tflops.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}

# The training set each benchmark's full fine-tuning baseline trains on (trainer/baseline.py): documented row counts
# (`split_rows`, less the `dev_rows` held out of that split as the benchmark's dev split), and the fixture in the same
# schema whose rows give the tokens per row. `split`: the fixture's split name (as configs/eval/local.yaml reads it).
# `baseline: false`: no baseline can train on it (no training split); it is reported, marked, left out of aggregates.
FULL_SETS = [
    {
        "name": "gsm_hard",
        "title": "GSM-Hard baseline: GSM8K train",
        "baseline": True,
        "format": "gsm8k",
        "split_rows": 7473,
        "dev_rows": 500,
        "fixture": "gsm8k.jsonl",
        "split": "train",
        "hub": {"path": "openai/gsm8k", "subset": "main", "split": "train"},
        "rows_source": "openai/gsm8k main train: 7,473 rows, less the 500 held out as GSM-Hard's dev split",
    },
    {
        "name": "genome_bench",
        "title": "Genome-Bench itself (no training split)",
        "baseline": False,
        "format": "genome_bench",
        "split_rows": 3332,
        "dev_rows": 0,
        "fixture": "genome_bench.jsonl",
        "split": "test",
        "hub": {"path": "Mingyin0312/Genome-Bench", "split": "test"},
        "rows_source": (
            "Mingyin0312/Genome-Bench: 3,332 questions, its one split (the test set: not a baseline,"
            " trainer/baseline.py refuses it)"
        ),
    },
    {
        "name": "medqa",
        "title": "MedQA baseline: MedQA train",
        "baseline": True,
        "format": "medqa",
        "split_rows": 10178,
        "dev_rows": 500,
        "fixture": "medqa.jsonl",
        "split": "test",
        "hub": {"path": "GBaker/MedQA-USMLE-4-options", "split": "train"},
        "rows_source": "GBaker/MedQA-USMLE-4-options train: 10,178 rows, less the 500 held out as its dev split",
    },
    {
        "name": "medmcqa",
        "title": "MedMCQA baseline: MedMCQA train",
        "baseline": True,
        "format": "medmcqa",
        "split_rows": 182822,
        "dev_rows": 500,
        "fixture": "medmcqa.jsonl",
        "split": "validation",
        "hub": {"path": "openlifescienceai/medmcqa", "split": "train"},
        "rows_source": "openlifescienceai/medmcqa train: 182,822 rows, less the 500 held out as its dev split",
    },
    {
        "name": "pubmedqa",
        "title": "PubMedQA baseline: PQA-A (pqa_artificial) train",
        "baseline": True,
        "format": "pubmedqa",
        "split_rows": 211269,
        "dev_rows": 0,
        "fixture": "pubmedqa.parquet",
        "split": "train",
        "hub": {"path": "qiaojin/PubMedQA", "subset": "pqa_artificial", "split": "train"},
        "rows_source": (
            "qiaojin/PubMedQA pqa_artificial train: 211,269 rows (the fixture holds pqa_labeled rows, the same schema)"
        ),
    },
]
MULTIMEDQA = ("medqa", "medmcqa", "pubmedqa")
GPU_RESULT = ROOT / "benchmarks" / "results" / "training_gpu.json"


@dataclass
class TrainingCostConfig:
    """How long each training measurement runs, and where the compute-ratio figures come from."""

    cpu_recipe: str = str(LOCAL_RECIPE)
    cpu_steps: int = 10
    """Optimizer steps of the local recipe on CPU."""
    cpu_rows: int = 24
    """Conversations in the dataset version trained on."""
    gpu_recipe: str = str(GPU_RECIPE)
    gpu_steps: int = 32
    """Micro-batches timed at each shape on a GPU (the optimizer steps every gradient_accumulation_steps of them)."""
    gpu_warmup_steps: int = 4
    """Micro-batches run before the timing starts, at each shape."""
    gpu_short_seq_lens: list[int] = field(default_factory=lambda: [256, 512])
    """Sequence lengths measured besides the recipe's max_length, at its batch size (unpacked short rows)."""
    gpu_peak_tflops: float | None = None
    """The GPU's peak dense bf16 TFLOPS for MFU; null: looked up by device name."""
    gpu_result: str | None = str(GPU_RESULT)
    """Without a GPU: the record `python3 -m benchmarks.gpu_training` wrote on a GPU machine, reported as measured
    there (null, or no such file: the GPU part is skipped)."""
    tiny_steps: int = 3
    """Steps of the GPU code on a tiny Qwen3 configuration on CPU, when there is no GPU (0: skip)."""
    nanoflux_rows: int = 200
    """Rows of the NanoFlux dataset in the compute ratio (the paper: <= 200 per domain)."""
    from_hub: bool = False
    """Count the full training sets from the Hub instead of estimating them from the fixtures."""

    def validate(self, path: str) -> None:
        for name in ("cpu_recipe", "gpu_recipe"):
            if not Path(getattr(self, name)).is_file():
                fail(
                    f"{path}.{name}",
                    getattr(self, name),
                    "file not found",
                    "point it at a training recipe in configs/train/",
                )
        check_range(f"{path}.cpu_steps", self.cpu_steps, 0, 10_000)
        check_range(f"{path}.cpu_rows", self.cpu_rows, 1, 100_000)
        check_range(f"{path}.gpu_steps", self.gpu_steps, 1, 10_000)
        check_range(f"{path}.gpu_warmup_steps", self.gpu_warmup_steps, 0, 1000)
        for i, seq_len in enumerate(self.gpu_short_seq_lens):
            check_range(f"{path}.gpu_short_seq_lens[{i}]", seq_len, 16, 1_048_576)
        if self.gpu_peak_tflops is not None:
            check_range(f"{path}.gpu_peak_tflops", self.gpu_peak_tflops, 0.0, 100_000.0, low_open=True)
        check_range(f"{path}.tiny_steps", self.tiny_steps, 0, 1000)
        check_range(f"{path}.nanoflux_rows", self.nanoflux_rows, 1, 100_000)


# --- 1. the local recipe on CPU ----------------------------------------------------------------------------


def nanoflux_conversations() -> list[list[dict[str, str]]]:
    """The `messages` of the NanoFlux fixture rows."""
    lines = (FIXTURES / "nanoflux_messages.jsonl").read_text().splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def publish_dataset(hub_dir: Path, rows: int) -> None:
    """A dataset repo `BENCH_REPO` in the local repository folder `hub_dir`, tag v1: `rows` NanoFlux conversations."""
    import io

    from builder import BuildFolder
    from builder.dataset import to_dataset
    from localhub import RepoStore

    conversations = nanoflux_conversations()
    data = [
        {
            "id": f"r0-a{i:04d}",
            "question": conversations[i % len(conversations)][0]["content"],
            "version": "v1",
            "messages": conversations[i % len(conversations)],
        }
        for i in range(rows)
    ]
    buffer = io.BytesIO()
    to_dataset(data).to_parquet(buffer)
    store = RepoStore(hub_dir)
    store.create_repo("dataset", BENCH_REPO)
    sha = store.create_commit("dataset", BENCH_REPO, "main", add={BuildFolder.DATA: buffer.getvalue()}, title="v1")
    store.create_ref("dataset", BENCH_REPO, "tags", "v1", sha)


def cpu_recipe_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: publish the dataset, train with the local recipe, report tokens/s and peak RSS."""
    import resource

    import torch

    from trainer.train import main as train
    from trainer.train_config import build_train_config

    work = Path(spec["work_dir"])
    shutil.rmtree(work, ignore_errors=True)
    publish_dataset(work / "hub", spec["rows"])
    config = build_train_config(
        spec["recipe"],
        [
            "--dataset_name",
            BENCH_REPO,
            "--revision",
            "v1",
            "--hub_dir",
            str(work / "hub"),
            "--output_dir",
            str(work / "adapter"),
            "--sft.max_steps",
            str(spec["steps"]),
        ],
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = train(config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    wall = summary["wall_time_s"]
    return {
        "recipe": display_path(spec["recipe"]),
        "model": config.model,
        "lora": {"r": config.lora.r, "alpha": config.lora.alpha, "target_modules": config.lora.target_modules},
        "precision": "bf16" if config.sft["bf16"] else "fp32",
        "batch_size": config.sft["per_device_train_batch_size"] * config.sft["gradient_accumulation_steps"],
        "max_length": config.sft["max_length"],
        "rows": spec["rows"],
        "steps": summary["steps"],
        "train_tokens": summary["train_tokens"],
        "wall_s": wall,
        "tokens_per_s": round(summary["train_tokens"] / wall, 1) if wall else None,
        "s_per_step": round(wall / max(summary["steps"], 1), 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_training_mb": round(rss_before / 1024, 1),
        "trainable_parameters": summary["trainable_parameters"],
        "total_parameters": summary["total_parameters"],
        "loss_first_last": [summary["loss"]["first"], summary["loss"]["last"]],
        "torch_threads": torch.get_num_threads(),
    }


def measure_cpu_recipe(config: TrainingCostConfig, work_dir: Path) -> dict[str, Any]:
    spec = {"recipe": config.cpu_recipe, "steps": config.cpu_steps, "rows": config.cpu_rows, "work_dir": str(work_dir)}
    result_path = work_dir.parent / f"{work_dir.name}-result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.training_cost", json.dumps(spec), str(result_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        raise RuntimeError(f"the CPU training run failed (exit {process.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


# --- 2. the 4B recipe on a GPU -----------------------------------------------------------------------------

# What the GPU measurement takes from a training recipe.
RECIPE_FIELDS = (
    "model",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "bf16",
    "gradient_checkpointing",
    "num_train_epochs",
)
SFT_NAMES = {"gradient_checkpointing": "activation_checkpointing"}  # transformers' name in a recipe's `sft:` block
GPU_PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "numpy")


@dataclass(frozen=True)
class LoraRecipe:
    """The LoRA settings of a training recipe (`RECIPE_FIELDS`), and how they were read."""

    model: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]
    learning_rate: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    bf16: bool
    gradient_checkpointing: bool
    num_train_epochs: float
    resolved_by: str = ""


def read_lora_recipe(path: str) -> LoraRecipe:
    """The recipe's LoRA settings as `trainer.train.build_train_config` resolves them; where trainer.train does not
    import (a GPU machine without datasets / trl), from the YAML file itself, which must then name every one of them.
    """
    try:
        from trainer.train_config import build_train_config
    except ImportError as err:
        import yaml

        data = _flat(yaml.safe_load(Path(path).read_text()) or {})
        missing = [name for name in RECIPE_FIELDS if data.get(name) is None]
        if missing:
            fail(
                path,
                sorted(data),
                f"trainer.train does not import here ({err}) and the recipe does not name {missing}",
                "name every LoRA setting in the recipe, or install the training stack (datasets, trl)",
            )
        kinds = {"lora_dropout": float, "learning_rate": float, "num_train_epochs": float}
        values = {name: kinds.get(name, lambda v: v)(data[name]) for name in RECIPE_FIELDS}
        return LoraRecipe(
            **values,
            resolved_by=f"the recipe's YAML (trainer.train does not import here: {type(err).__name__}: {err})",
        )
    recipe = _flat(to_dict(build_train_config(str(path))))
    return LoraRecipe(
        **{name: recipe[name] for name in RECIPE_FIELDS}, resolved_by="trainer.train_config.build_train_config"
    )


def _flat(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe's `RECIPE_FIELDS` by their flat names, from its `lora:` and `sft:` blocks (`lora_r` is `lora.r`)."""
    places = {n: ("lora", n[5:]) if n[:5] == "lora_" else ("sft", SFT_NAMES.get(n, n)) for n in RECIPE_FIELDS[1:]}
    return {"model": recipe.get("model"), **{n: recipe.get(s, {}).get(k) for n, (s, k) in places.items()}}


def qwen3_config(dimensions: dict[str, Any]) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**dimensions)


def forward_flops_per_token(model_config: Any, seq_len: int) -> float:
    """2 x matmul parameters (lm_head included) + attention scores and values, per token (see the module docstring)."""
    c = model_config
    attention = c.num_attention_heads * c.head_dim
    kv = c.num_key_value_heads * c.head_dim
    per_layer = (
        c.hidden_size * (attention + 2 * kv) + attention * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    )
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    return 2 * matmul_params + 4 * c.num_hidden_layers * seq_len * attention


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "gpu_peak_tflops setting"
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value, f"data sheet ({key}, dense bf16)"
    return None, f"unknown GPU {device_name!r}: set training.gpu_peak_tflops to get an MFU"


def lora_step_cost(
    model_config: Any,
    recipe: LoraRecipe,
    *,
    device: str,
    steps: int,
    warmup_steps: int,
    shapes: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """LoRA training with `recipe`'s settings on a random-weight model of `model_config`, built once and timed at each
    (batch size, sequence length) of `shapes` (default: the recipe's); the first shape's figures are also the top-level
    ones. Each shape: `warmup_steps` micro-batches, then `steps` timed, the optimizer stepping every
    gradient_accumulation_steps micro-batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shapes = shapes or [(recipe.per_device_train_batch_size, recipe.max_length)]
    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    if recipe.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = list(recipe.lora_target_modules)
    model = get_peft_model(
        model,
        LoraConfig(
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        ),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    accumulation = max(1, recipe.gradient_accumulation_steps)
    generator = torch.Generator(device="cpu").manual_seed(0)
    model.train()
    runs = []
    for batch_size, seq_len in shapes:
        ids = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        losses = []
        for step in range(warmup_steps + steps):
            if step == warmup_steps:
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype, enabled=recipe.bf16):
                loss = model(input_ids=ids, labels=ids).loss
            (loss / accumulation).backward()
            if (step + 1) % accumulation == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())  # no host sync inside the timed loop
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        optimizer.zero_grad(set_to_none=True)
        tokens = batch_size * seq_len * steps
        forward = forward_flops_per_token(model_config, seq_len)
        model_flops = 2 * forward
        hardware_flops = (3 if recipe.gradient_checkpointing else 2) * forward
        runs.append(
            {
                "batch_size": batch_size,
                "seq_len": seq_len,
                "steps": steps,
                "warmup_steps": warmup_steps,
                "wall_s": round(wall, 3),
                "tokens": tokens,
                "tokens_per_s": round(tokens / wall, 1),
                "s_per_micro_step": round(wall / steps, 4),
                "s_per_optimizer_step": round(wall / steps * accumulation, 4),
                "training_flops_per_token": model_flops,
                "hardware_flops_per_token": hardware_flops,
                "achieved_tflops": round(tokens * model_flops / wall / 1e12, 3),
                "achieved_hardware_tflops": round(tokens * hardware_flops / wall / 1e12, 3),
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
                "loss_first_last": [round(float(losses[0]), 4), round(float(losses[-1]), 4)],
            }
        )
        del ids, losses, loss
    return {
        "parameters": parameters,
        "trainable_parameters": trainable,
        "precision": "bf16" if recipe.bf16 else "fp32",
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "lora": {
            "r": recipe.lora_r,
            "alpha": recipe.lora_alpha,
            "dropout": recipe.lora_dropout,
            "target_modules": targets,
        },
        "learning_rate": recipe.learning_rate,
        "gradient_accumulation_steps": accumulation,
        "model_build_s": round(build_s, 2),
        **runs[0],
        "shapes": runs,
    }


def gpu_shapes(config: TrainingCostConfig, recipe: LoraRecipe) -> list[tuple[int, int]]:
    """The recipe's (batch, max_length) first, then the same batch at each shorter `gpu_short_seq_lens`."""
    batch = recipe.per_device_train_batch_size
    short = sorted({n for n in config.gpu_short_seq_lens if n < recipe.max_length})
    return [(batch, recipe.max_length), *((batch, n) for n in short)]


def gpu_environment() -> dict[str, Any]:
    """The GPU and the versions its figures depend on (trl, datasets: not used by this code, recorded if present)."""
    import platform
    from importlib import metadata

    import torch

    versions: dict[str, str | None] = {}
    for name in GPU_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
    return info


def measure_4b(
    config: TrainingCostConfig, *, model_dimensions: dict[str, Any] | None = None, device: str = "cuda"
) -> dict[str, Any]:
    """The 4B recipe's LoRA training on a random-weight Qwen3-4B on this machine's GPU (or `model_dimensions` on
    `device`: the tiny check), at each of `gpu_shapes`, with MFU and HFU per shape."""
    recipe = read_lora_recipe(config.gpu_recipe)
    dimensions = model_dimensions or QWEN3_4B
    if device == "cpu":
        recipe = dataclasses.replace(recipe, bf16=False)
    figures = lora_step_cost(
        qwen3_config(dimensions),
        recipe,
        device=device,
        steps=config.gpu_steps,
        warmup_steps=config.gpu_warmup_steps,
        shapes=gpu_shapes(config, recipe),
    )
    env = gpu_environment()
    name = env.get("gpu") or "cpu"
    peak, source = peak_tflops(name, config.gpu_peak_tflops) if device != "cpu" else (None, "CPU: no MFU")
    for run in [figures, *figures["shapes"]]:
        run["mfu"] = round(run["achieved_tflops"] / peak, 4) if peak else None
        run["hfu"] = round(run["achieved_hardware_tflops"] / peak, 4) if peak else None
    return {
        "skipped": False,
        "measured_here": True,
        "gpu": name,
        "model": (
            {
                "architecture": "Qwen3-4B (Qwen3Config written out in benchmarks/training_cost.py), random weights",
                "parameters": figures["parameters"],
            }
            if model_dimensions is None
            else {"config": dimensions, "parameters": figures["parameters"]}
        ),
        "recipe": display_path(config.gpu_recipe),
        "recipe_resolved_by": recipe.resolved_by,
        "num_train_epochs": recipe.num_train_epochs,
        "loop": (
            "plain PyTorch: peft LoRA, AdamW on the adapter, bf16 autocast, random token ids as inputs and labels; not"
            " TRL's SFTTrainer"
        ),
        **figures,
        "peak_tflops": peak,
        "peak_tflops_source": source,
        "flops": (
            "model FLOPs/token = 2 x forward (no weight gradients for the frozen base); hardware = 3 x forward with"
            " gradient checkpointing's recomputation; forward = 2 x matmul parameters + 4 x layers x seq_len x heads x"
            " head_dim"
        ),
        "environment": env,
    }


def stored_gpu_result(path: str | None) -> dict[str, Any] | None:
    """The GPU figures of a record `benchmarks.gpu_training` wrote on a GPU machine, marked as measured there."""
    if not path or not Path(path).is_file():
        return None
    record = json.loads(Path(path).read_text())
    gpu = record["figures"]["gpu"]
    return {
        **gpu,
        "measured_here": False,
        "source": (
            f"{display_path(path)}: measured on {gpu['gpu']} at {record['created_at']} by `{record['command']}`, not"
            " on this machine"
        ),
        "measured_at": record["created_at"],
        "device_machine": record["machine"],
    }


def measure_gpu(config: TrainingCostConfig) -> dict[str, Any]:
    """The 4B recipe on a random-weight Qwen3-4B when a GPU is here; otherwise the stored record of a GPU machine's
    run (`gpu_result`) or the reason it is skipped, and the code run on a tiny Qwen3 configuration on CPU."""
    import torch

    if torch.cuda.is_available():
        return measure_4b(config)
    reason = "torch.cuda.is_available() is False: no GPU on this machine"
    result = stored_gpu_result(config.gpu_result)
    if result is not None:
        result["not_measured_here_because"] = reason
    else:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # the parameter count, without allocating 4B parameters
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(qwen3_config(QWEN3_4B)).parameters())
        model = {
            "architecture": "Qwen3-4B (Qwen3Config written out in benchmarks/training_cost.py), random weights",
            "parameters": parameters,
        }
        result = {"skipped": True, "reason": reason, "model": model}
    if config.tiny_steps:
        recipe = dataclasses.replace(read_lora_recipe(config.gpu_recipe), bf16=False)
        check = lora_step_cost(
            qwen3_config(TINY_QWEN3),
            recipe,
            device="cpu",
            steps=config.tiny_steps,
            warmup_steps=1,
            shapes=[(2, 64), (2, 32)],
        )
        result["code_path_check"] = {
            "what": (
                "the same training code, on a tiny Qwen3 configuration on CPU (fp32): proves it runs, measures nothing"
                " of the 4B"
            ),
            "config": TINY_QWEN3,
            **check,
        }
    return result


# --- 3. the compute ratio ----------------------------------------------------------------------------------


def _targets(examples: Any) -> str:
    """`reasoning` (every target carries the benchmark's explanation), `answer_only` (none does) or `mixed`."""
    explained = sum(bool((e.explanation or "").strip()) for e in examples)
    return "reasoning" if explained == len(examples) else "answer_only" if explained == 0 else "mixed"


def compute_ratio(config: TrainingCostConfig) -> dict[str, Any]:
    """Training tokens of a `nanoflux_rows`-row NanoFlux dataset against each baseline's training set (see above)."""
    from transformers import AutoTokenizer

    from nanoflux.benchmarks import BenchmarkConfig, load_benchmark, load_rows
    from nanoflux.models import model_path
    from nanoflux.rows import normalise
    from trainer.evaluation.compute import benchmark_conversations, count_training_tokens

    tokenizer_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_path(tokenizer_id))
    conversations = nanoflux_conversations()
    nanoflux_per_row = count_training_tokens(conversations, tokenizer) / len(conversations)
    nanoflux_tokens = nanoflux_per_row * config.nanoflux_rows
    sets = []
    for entry in FULL_SETS:
        common = {
            "name": entry["name"],
            "title": entry["title"],
            "baseline": entry["baseline"],
            "format": entry["format"],
        }
        if config.from_hub:
            hub = entry["hub"]
            bench = BenchmarkConfig(
                format=entry["format"], path=hub["path"], subset=hub.get("subset"), split=hub["split"]
            )
            bench.validate(entry["name"])
            if entry["baseline"]:  # the rows a baseline trains on: the split less its held-out dev rows
                examples = load_benchmark(bench)
            else:  # all of it: there is no training split
                examples = normalise(load_rows(bench.path, subset=bench.subset, split=bench.split), bench)
            tokens = count_training_tokens(benchmark_conversations(examples), tokenizer)
            where = f"{hub['path']}{' ' + hub['subset'] if hub.get('subset') else ''} [{hub['split']}]"
            counted = {
                "rows": len(examples),
                "tokens": tokens,
                "tokens_per_row": round(tokens / len(examples), 1),
                "targets": _targets(examples),
                "method": f"counted: every training row of {where}",
            }
        else:
            bench = BenchmarkConfig(
                format=entry["format"], path=str(FIXTURES / entry["fixture"]), split=entry["split"]
            )
            bench.validate(entry["name"])
            examples = normalise(load_rows(bench.path, subset=bench.subset, split=bench.split), bench)
            per_row = count_training_tokens(benchmark_conversations(examples), tokenizer) / len(examples)
            rows = entry["split_rows"] - entry["dev_rows"]
            counted = {
                "rows": rows,
                "split_rows": entry["split_rows"],
                "dev_rows_held_out": entry["dev_rows"],
                "tokens": round(per_row * rows),
                "tokens_per_row": round(per_row, 1),
                "fixture_rows": len(examples),
                "targets": _targets(examples),
                "method": (
                    f"estimate: {entry['rows_source']} x mean tokens per row of samples/benchmarks/{entry['fixture']}"
                ),
            }
        sets.append({**common, **counted, "ratio": round(counted["tokens"] / nanoflux_tokens, 2)})
    medical = [s for s in sets if s["name"] in MULTIMEDQA]
    multimedqa_tokens = sum(s["tokens"] for s in medical)
    return {
        "tokenizer": (
            f"{tokenizer_id} (packaged; the ratio barely depends on the tokenizer, both sides use the same one)"
        ),
        "unit": "training tokens per epoch (chat template applied), as trainer.evaluation.compute counts them",
        "estimate": not config.from_hub,
        "nanoflux": {
            "rows": config.nanoflux_rows,
            "tokens_per_row": round(nanoflux_per_row, 1),
            "tokens": round(nanoflux_tokens),
            "method": (
                f"{config.nanoflux_rows} x mean tokens per row of samples/benchmarks/nanoflux_messages.jsonl"
                f" ({len(conversations)} rows)"
            ),
        },
        "full_sets": sets,
        "multimedqa": {
            "sets": list(MULTIMEDQA),
            "rows": sum(s["rows"] for s in medical),
            "tokens": multimedqa_tokens,
            "ratio": round(multimedqa_tokens / nanoflux_tokens, 2),
        },
        "targets": (
            "the benchmark's reasoning, then `Final answer: <gold>` (as trainer.evaluation.compute writes them); "
            "answer-only where the benchmark has none (MedQA)"
        ),
        "paper": "3-14x less compute than full-benchmark fine-tuning",
    }


# --- 4. GPU-seconds ----------------------------------------------------------------------------------------


def gpu_seconds(gpu: dict[str, Any], ratio: dict[str, Any]) -> dict[str, Any]:
    """One epoch of each dataset in GPU-seconds at the measured rates (see the docstring, part 4): `packed` = training
    tokens / tokens/s at the recipe's shape (rows packed into full sequences: a lower bound; the recipe does not pack);
    `unpacked` = ceil(rows / batch) micro-batches x the measured seconds per micro-batch at the shortest measured
    sequence length that holds the set's mean row (one row per sequence, as the recipe trains)."""
    if gpu.get("skipped") or not gpu.get("shapes"):
        return {"skipped": True, "reason": "no GPU measurement"}
    recipe_shape, *short = gpu["shapes"]
    by_length = sorted([recipe_shape, *short], key=lambda run: run["seq_len"])

    def cost(rows: int, tokens: float, tokens_per_row: float) -> dict[str, Any]:
        shape = next((run for run in by_length if run["seq_len"] >= tokens_per_row), by_length[-1])
        batches = math.ceil(rows / shape["batch_size"])
        return {
            "packed_s": round(tokens / recipe_shape["tokens_per_s"], 1),
            "unpacked_s": round(batches * shape["s_per_micro_step"], 1),
            "unpacked_shape": f"{shape['batch_size']}x{shape['seq_len']}",
        }

    nanoflux = ratio["nanoflux"]
    sets = [
        {
            "name": s["name"],
            "title": s["title"],
            "baseline": s["baseline"],
            "rows": s["rows"],
            "tokens": s["tokens"],
            **cost(s["rows"], s["tokens"], s["tokens_per_row"]),
        }
        for s in ratio["full_sets"]
    ]
    medical = [s for s in sets if s["name"] in MULTIMEDQA]
    return {
        "gpu": gpu["gpu"],
        "measured_here": gpu.get("measured_here", True),
        "unit": "GPU-seconds per epoch (the recipe trains num_train_epochs of them)",
        "epochs_in_recipe": gpu.get("num_train_epochs"),
        "measured": {
            f"{run['batch_size']}x{run['seq_len']}": {
                "tokens_per_s": run["tokens_per_s"],
                "s_per_micro_step": run["s_per_micro_step"],
            }
            for run in gpu["shapes"]
        },
        "method": (
            f"estimate from rates measured on {gpu['gpu']} (measured: tokens/s and seconds per micro-batch at each"
            " shape) and the training tokens and rows of part 3 ("
            + ("themselves an estimate" if ratio["estimate"] else "counted")
            + ", SmolLM2 tokenizer). packed_s = tokens / tokens/s at the recipe's max_length (a lower bound: the"
            " recipe does not pack); unpacked_s = ceil(rows / batch) x seconds per micro-batch at the shortest"
            " measured length holding the mean row (one row per sequence, padded to that length). Data loading,"
            " evaluation and saving not counted"
        ),
        "nanoflux": {
            "rows": nanoflux["rows"],
            "tokens": nanoflux["tokens"],
            **cost(nanoflux["rows"], nanoflux["tokens"], nanoflux["tokens_per_row"]),
        },
        "full_sets": sets,
        "multimedqa": {
            "rows": sum(s["rows"] for s in medical),
            "tokens": sum(s["tokens"] for s in medical),
            "packed_s": round(sum(s["packed_s"] for s in medical), 1),
            "unpacked_s": round(sum(s["unpacked_s"] for s in medical), 1),
        },
    }


def main(config: TrainingCostConfig, work_dir: Path) -> dict[str, Any]:
    cpu = (
        measure_cpu_recipe(config, work_dir / "cpu")
        if config.cpu_steps
        else {"skipped": True, "reason": "cpu_steps is 0"}
    )
    if "tokens_per_s" in cpu:
        logger.info(
            "training: local recipe on CPU: %.0f tokens/s, peak RSS %.0f MB", cpu["tokens_per_s"], cpu["peak_rss_mb"]
        )
    gpu = measure_gpu(config)
    logger.info(
        "training: GPU: %s", gpu.get("reason") or f"{gpu['gpu']}: {gpu['tokens_per_s']:.0f} tokens/s, MFU {gpu['mfu']}"
    )
    ratio = compute_ratio(config)
    return {
        "settings": {
            "cpu_recipe": cpu.get("recipe"),
            "cpu_steps": config.cpu_steps,
            "gpu_recipe": str(Path(config.gpu_recipe).name),
            "gpu_steps": config.gpu_steps,
            "gpu_warmup_steps": config.gpu_warmup_steps,
            "gpu_short_seq_lens": config.gpu_short_seq_lens,
            "gpu_result": display_path(config.gpu_result) if config.gpu_result else None,
            "nanoflux_rows": config.nanoflux_rows,
            "from_hub": config.from_hub,
        },
        "cpu": cpu,
        "gpu": gpu,
        "compute_ratio": ratio,
        "gpu_seconds": gpu_seconds(gpu, ratio),
    }


if __name__ == "__main__":  # the CPU recipe's child process: python -m benchmarks.training_cost SPEC_JSON RESULT_PATH
    logging.basicConfig(level=logging.WARNING)
    Path(sys.argv[2]).write_text(json.dumps(cpu_recipe_child(json.loads(sys.argv[1])), indent=2))
