"""Training cost: the local LoRA recipe on CPU, the 4B recipe on a GPU, and the training-token compute ratio.

1. CPU: `trainer.train.main` with `configs/train/local.yaml` (LoRA on the packaged SmolLM2-135M, fp32) for a few
   steps, on a dataset version published to a local repository folder (NanoFlux conversations from
   `tests/fixtures/benchmarks/nanoflux_messages.jsonl`). It runs in a child process, so its peak RSS is the recipe's
   own. Tokens/s are the trainer's non-padding tokens seen over its training wall time.
2. GPU (only when `torch.cuda.is_available()`): the 4B recipe's LoRA settings (`configs/train/qwen3-4b-lora.yaml`:
   r, alpha, target modules, batch size, max_length, bf16, gradient checkpointing) on a model built from the
   Qwen3-4B architecture written out below, with random weights (nothing is downloaded), for a few optimizer steps
   on random token ids: tokens/s, MFU and peak memory. Without a GPU it is skipped with the reason recorded, and the
   same code runs on CPU on a tiny Qwen3 configuration, so that it is known to work.

       MFU = tokens/s x training FLOPs per token / the GPU's peak dense bf16 FLOPS
       training FLOPs per token = 2 x forward FLOPs (forward, then the backward pass for activation gradients; the
           frozen base weights get no weight gradients, and gradient checkpointing's recomputation is not counted)
       forward FLOPs per token = 2 x (parameters of every matrix multiply, lm_head included)
                                 + 4 x layers x sequence length x (heads x head_dim)   (attention scores and values)

3. Compute ratio (the paper's 3-14x): training tokens of a 200-example NanoFlux dataset against the full GSM-Hard,
   Genome-Bench and MultiMedQA training sets, counted as `trainer.evaluate` counts them (chat template applied,
   one epoch). Offline this is an estimate: each set's documented row count x the mean tokens per row of its fixture
   rows (tests/fixtures/benchmarks/, written in the real schema), and 200 x the mean of the NanoFlux fixture rows.
   With `from_hub: true` the real training splits are read from the Hub and counted in full.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.throughput import display_path
from builder.config import check_range, fail

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
LOCAL_RECIPE = ROOT / "configs" / "train" / "local.yaml"
GPU_RECIPE = ROOT / "configs" / "train" / "qwen3-4b-lora.yaml"
BENCH_REPO = "local/nanoflux-bench"

# Qwen/Qwen3-4B's config.json, written out: the architecture is all the GPU benchmark needs, the weights are random.
QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=40960, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, tie_word_embeddings=True, attention_bias=False,
)  # fmt: skip
TINY_QWEN3 = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip
# Peak dense bf16 tensor FLOPS by device name (vendor data sheets); another GPU: set gpu_peak_tflops.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}

# The full training sets the paper fine-tunes its baselines on: documented row counts, and the fixture in the same
# schema whose rows give the tokens per row. `split` is the fixture's split name (as configs/eval/local.yaml reads it).
FULL_SETS = [
    {"name": "gsm_hard", "title": "GSM-Hard", "format": "gsm_hard", "rows": 1319, "fixture": "gsm_hard.jsonl", "split": "train",
     "hub": {"path": "reasoning-machines/gsm-hard", "split": "train"}, "rows_source": "reasoning-machines/gsm-hard: one split, 1,319 rows"},
    {"name": "genome_bench", "title": "Genome-Bench", "format": "genome_bench", "rows": 3332, "fixture": "genome_bench.jsonl", "split": "test",
     "hub": {"path": "Mingyin0312/Genome-Bench", "split": "train"}, "rows_source": "Genome-Bench: 3,332 questions in all"},
    {"name": "medqa", "title": "MedQA (MultiMedQA)", "format": "medqa", "rows": 10178, "fixture": "medqa.jsonl", "split": "test",
     "hub": {"path": "GBaker/MedQA-USMLE-4-options", "split": "train"}, "rows_source": "GBaker/MedQA-USMLE-4-options train: 10,178 rows"},
    {"name": "medmcqa", "title": "MedMCQA (MultiMedQA)", "format": "medmcqa", "rows": 182822, "fixture": "medmcqa.jsonl", "split": "validation",
     "hub": {"path": "openlifescienceai/medmcqa", "split": "train"}, "rows_source": "openlifescienceai/medmcqa train: 182,822 rows"},
    {"name": "pubmedqa", "title": "PubMedQA PQA-L (MultiMedQA)", "format": "pubmedqa", "rows": 1000, "fixture": "pubmedqa.parquet", "split": "train",
     "hub": {"path": "qiaojin/PubMedQA", "subset": "pqa_labeled", "split": "train"}, "rows_source": "qiaojin/PubMedQA pqa_labeled: 1,000 rows"},
]  # fmt: skip
MULTIMEDQA = ("medqa", "medmcqa", "pubmedqa")


@dataclass
class TrainingCostConfig:
    """How long each training measurement runs, and where the compute-ratio figures come from."""

    cpu_recipe: str = str(LOCAL_RECIPE)
    cpu_steps: int = 10
    """Optimizer steps of the local recipe on CPU."""
    cpu_rows: int = 24
    """Conversations in the dataset version trained on."""
    gpu_recipe: str = str(GPU_RECIPE)
    gpu_steps: int = 8
    gpu_warmup_steps: int = 2
    gpu_peak_tflops: float | None = None
    """The GPU's peak dense bf16 TFLOPS for MFU; null: looked up by device name."""
    tiny_steps: int = 3
    """Steps of the GPU code on a tiny Qwen3 configuration on CPU, when there is no GPU (0: skip)."""
    nanoflux_rows: int = 200
    """Rows of the NanoFlux dataset in the compute ratio (the paper: <= 200 per domain)."""
    from_hub: bool = False
    """Count the full training sets from the Hub instead of estimating them from the fixtures."""

    def validate(self, path: str) -> None:
        for name in ("cpu_recipe", "gpu_recipe"):
            if not Path(getattr(self, name)).is_file():
                fail(f"{path}.{name}", getattr(self, name), "file not found", "point it at a training recipe in configs/train/")
        check_range(f"{path}.cpu_steps", self.cpu_steps, 0, 10_000)
        check_range(f"{path}.cpu_rows", self.cpu_rows, 1, 100_000)
        check_range(f"{path}.gpu_steps", self.gpu_steps, 1, 10_000)
        check_range(f"{path}.gpu_warmup_steps", self.gpu_warmup_steps, 0, 1000)
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
    """A dataset repo `BENCH_REPO` in the local repository folder `hub_dir` with tag v1: `rows` NanoFlux conversations."""
    import io

    from builder.dataset import to_dataset
    from builder.localhub import RepoStore
    from builder.publish import DATA_PATH

    conversations = nanoflux_conversations()
    data = [
        {"id": f"r0-a{i:04d}", "question": conversations[i % len(conversations)][0]["content"], "version": "v1", "messages": conversations[i % len(conversations)]}
        for i in range(rows)
    ]
    buffer = io.BytesIO()
    to_dataset(data).to_parquet(buffer)
    store = RepoStore(hub_dir)
    store.create_repo("dataset", BENCH_REPO)
    sha = store.create_commit("dataset", BENCH_REPO, "main", add={DATA_PATH: buffer.getvalue()}, title="v1")
    store.create_ref("dataset", BENCH_REPO, "tags", "v1", sha)


def cpu_recipe_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: publish the dataset, train with the local recipe, report tokens/s and peak RSS."""
    import resource

    import torch

    from trainer.train import build_train_config
    from trainer.train import main as train

    work = Path(spec["work_dir"])
    shutil.rmtree(work, ignore_errors=True)
    publish_dataset(work / "hub", spec["rows"])
    config = build_train_config(spec["recipe"], [
        "--dataset_name", BENCH_REPO, "--revision", "v1", "--hub_dir", str(work / "hub"),
        "--output_dir", str(work / "adapter"), "--max_steps", str(spec["steps"]),
    ])  # fmt: skip
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = train(config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    wall = summary["wall_time_s"]
    return {
        "recipe": display_path(spec["recipe"]),
        "model": config.model,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": config.lora_target_modules},
        "precision": "bf16" if config.bf16 else "fp32",
        "batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps,
        "max_length": config.max_length,
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
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        raise RuntimeError(f"the CPU training run failed (exit {process.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


# --- 2. the 4B recipe on a GPU -----------------------------------------------------------------------------


def qwen3_config(dimensions: dict[str, Any]) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**dimensions)


def forward_flops_per_token(model_config: Any, seq_len: int) -> float:
    """2 x matmul parameters (lm_head included) + attention scores and values, per token (see the module docstring)."""
    c = model_config
    attention = c.num_attention_heads * c.head_dim
    kv = c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * (attention + 2 * kv) + attention * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    return 2 * matmul_params + 4 * c.num_hidden_layers * seq_len * attention


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "gpu_peak_tflops setting"
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value, f"data sheet ({key}, dense bf16)"
    return None, f"unknown GPU {device_name!r}: set training.gpu_peak_tflops to get an MFU"


def lora_step_cost(model_config: Any, recipe: Any, *, device: str, steps: int, warmup_steps: int, batch_size: int | None = None, seq_len: int | None = None) -> dict[str, Any]:
    """Tokens/s and peak memory of LoRA training with `recipe`'s settings on a random-weight model of `model_config`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    batch_size = batch_size or recipe.per_device_train_batch_size
    seq_len = seq_len or recipe.max_length
    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    build_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    if recipe.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = recipe.lora_target_modules
    model = get_peft_model(model, LoraConfig(
        r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
    ))  # fmt: skip
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
    model.train()
    losses = []
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype, enabled=recipe.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    tokens = batch_size * seq_len * steps
    flops_per_token = 2 * forward_flops_per_token(model_config, seq_len)
    return {
        "parameters": parameters,
        "trainable_parameters": trainable,
        "precision": "bf16" if recipe.bf16 else "fp32",
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "lora": {"r": recipe.lora_r, "alpha": recipe.lora_alpha, "target_modules": recipe.lora_target_modules},
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "model_build_s": round(build_s, 2),
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "training_flops_per_token": flops_per_token,
        "achieved_tflops": round(tokens * flops_per_token / wall / 1e12, 3),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


def measure_gpu(config: TrainingCostConfig) -> dict[str, Any]:
    """The 4B recipe on a random-weight Qwen3-4B when a GPU is here; otherwise the reason, and the code run on a tiny
    Qwen3 configuration on CPU."""
    import torch

    from trainer.train import build_train_config

    recipe = build_train_config(config.gpu_recipe)
    full = qwen3_config(QWEN3_4B)
    with torch.device("meta"):  # the parameter count, without allocating 4B parameters
        from transformers import AutoModelForCausalLM

        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(full).parameters())
    model = {"architecture": "Qwen3-4B (Qwen3Config written out in benchmarks/training_cost.py), random weights", "parameters": parameters}
    if not torch.cuda.is_available():
        result: dict[str, Any] = {"skipped": True, "reason": "torch.cuda.is_available() is False: no GPU on this machine", "model": model}
        if config.tiny_steps:
            cpu_recipe = _replace(recipe, bf16=False)
            result["code_path_check"] = {
                "what": "the same training code, on a tiny Qwen3 configuration on CPU (fp32): proves it runs, measures nothing of the 4B",
                "config": TINY_QWEN3,
                **lora_step_cost(qwen3_config(TINY_QWEN3), cpu_recipe, device="cpu", steps=config.tiny_steps, warmup_steps=1, batch_size=2, seq_len=64),
            }
        return result
    name = torch.cuda.get_device_name(0)
    figures = lora_step_cost(full, recipe, device="cuda", steps=config.gpu_steps, warmup_steps=config.gpu_warmup_steps)
    peak, source = peak_tflops(name, config.gpu_peak_tflops)
    return {
        "skipped": False,
        "gpu": name,
        "model": model,
        "recipe": display_path(config.gpu_recipe),
        **figures,
        "peak_tflops": peak,
        "peak_tflops_source": source,
        "mfu": round(figures["achieved_tflops"] / peak, 4) if peak else None,
    }


def _replace(recipe: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(recipe, **changes)


# --- 3. the compute ratio ----------------------------------------------------------------------------------


def compute_ratio(config: TrainingCostConfig) -> dict[str, Any]:
    """Training tokens of a `nanoflux_rows`-row NanoFlux dataset against each full training set (see the docstring)."""
    from transformers import AutoTokenizer

    from trainer.evaluate import BenchmarkConfig, benchmark_conversations, count_training_tokens, load_rows, normalise
    from builder.embedded import model_path

    tokenizer_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_path(tokenizer_id))
    conversations = nanoflux_conversations()
    nanoflux_per_row = count_training_tokens(conversations, tokenizer) / len(conversations)
    nanoflux_tokens = nanoflux_per_row * config.nanoflux_rows
    sets = []
    for entry in FULL_SETS:
        if config.from_hub:
            hub = entry["hub"]
            bench = BenchmarkConfig(format=entry["format"], path=hub["path"], subset=hub.get("subset"), split=hub["split"])
            bench.validate(entry["name"])
            rows = normalise(load_rows(bench.path, subset=bench.subset, split=bench.split), bench)
            tokens = count_training_tokens(benchmark_conversations(rows), tokenizer)
            counted = {"rows": len(rows), "tokens": tokens, "method": f"counted: every row of {hub['path']} [{hub['split']}]"}
        else:
            bench = BenchmarkConfig(format=entry["format"], path=str(FIXTURES / entry["fixture"]), split=entry["split"])
            bench.validate(entry["name"])
            examples = normalise(load_rows(bench.path, subset=bench.subset, split=bench.split), bench)
            per_row = count_training_tokens(benchmark_conversations(examples), tokenizer) / len(examples)
            counted = {
                "rows": entry["rows"],
                "tokens": round(per_row * entry["rows"]),
                "tokens_per_row": round(per_row, 1),
                "fixture_rows": len(examples),
                "method": f"estimate: {entry['rows_source']} x mean tokens per row of tests/fixtures/benchmarks/{entry['fixture']}",
            }
        sets.append({"name": entry["name"], "title": entry["title"], **counted, "ratio": round(counted["tokens"] / nanoflux_tokens, 2)})
    medical = [s for s in sets if s["name"] in MULTIMEDQA]
    multimedqa_tokens = sum(s["tokens"] for s in medical)
    return {
        "tokenizer": f"{tokenizer_id} (packaged; the ratio barely depends on the tokenizer, both sides use the same one)",
        "unit": "training tokens per epoch (chat template applied), as trainer.evaluate.count_training_tokens counts them",
        "estimate": not config.from_hub,
        "nanoflux": {
            "rows": config.nanoflux_rows,
            "tokens_per_row": round(nanoflux_per_row, 1),
            "tokens": round(nanoflux_tokens),
            "method": f"{config.nanoflux_rows} x mean tokens per row of tests/fixtures/benchmarks/nanoflux_messages.jsonl ({len(conversations)} rows)",
        },
        "full_sets": sets,
        "multimedqa": {"sets": list(MULTIMEDQA), "tokens": multimedqa_tokens, "ratio": round(multimedqa_tokens / nanoflux_tokens, 2)},
        "paper": "3-14x less compute than full-benchmark fine-tuning",
    }


def main(config: TrainingCostConfig, work_dir: Path) -> dict[str, Any]:
    cpu = measure_cpu_recipe(config, work_dir / "cpu") if config.cpu_steps else {"skipped": True, "reason": "cpu_steps is 0"}
    if "tokens_per_s" in cpu:
        logger.info("training: local recipe on CPU: %.0f tokens/s, peak RSS %.0f MB", cpu["tokens_per_s"], cpu["peak_rss_mb"])
    gpu = measure_gpu(config)
    logger.info("training: GPU: %s", gpu.get("reason") or f"{gpu['tokens_per_s']:.0f} tokens/s, MFU {gpu['mfu']}")
    ratio = compute_ratio(config)
    return {
        "settings": {
            "cpu_recipe": cpu.get("recipe"),
            "cpu_steps": config.cpu_steps,
            "gpu_recipe": str(Path(config.gpu_recipe).name),
            "gpu_steps": config.gpu_steps,
            "nanoflux_rows": config.nanoflux_rows,
            "from_hub": config.from_hub,
        },
        "cpu": cpu,
        "gpu": gpu,
        "compute_ratio": ratio,
    }


if __name__ == "__main__":  # the CPU recipe's child process: python -m benchmarks.training_cost SPEC_JSON RESULT_PATH
    logging.basicConfig(level=logging.WARNING)
    Path(sys.argv[2]).write_text(json.dumps(cpu_recipe_child(json.loads(sys.argv[1])), indent=2))
