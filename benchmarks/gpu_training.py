"""The GPU half of the training benchmark on its own, for a GPU machine without the project's whole stack.

Usage:
    python3 -m benchmarks.gpu_training OUT.json                          # the 4B recipe on this machine's GPU
    python3 -m benchmarks.gpu_training OUT.json --training.gpu_steps 48 --training.gpu_short_seq_lens [256]
    python3 -m benchmarks.gpu_training OUT.json --tiny                   # the same code, tiny Qwen3 on CPU (a check)

It runs `benchmarks.training_cost.measure_4b` (a random-weight Qwen3-4B, LoRA with configs/train/qwen3-4b-lora.yaml's
settings; tokens/s, MFU, peak memory at each shape) and imports only torch, transformers, peft, numpy and yaml: not
datasets, trl, sentence-transformers or the builder's endpoints. It writes a record in the results files' form
(`benchmark`, `created_at`, `duration_s`, `command`, `machine`, `settings`, `figures.gpu`). Copied to
benchmarks/results/training_gpu.json, it is what `python -m benchmarks.run --parts training` reports on a machine
without a GPU (`training.gpu_result`), marked as measured on that GPU machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.training_cost import TINY_QWEN3, TrainingCostConfig, gpu_environment, measure_4b
from nanoflux.recipe import ConfigError, from_dict, parse_overrides

logger = logging.getLogger("benchmarks.gpu_training")


def run(out: Path, overrides: list[str], *, tiny: bool = False) -> dict[str, Any]:
    """Measure, write the record to `out`, return it."""
    import torch

    config = from_dict(TrainingCostConfig, parse_overrides(overrides).get("training", {}))
    config.validate("training")
    if not tiny and not torch.cuda.is_available():
        raise SystemExit(
            "error: torch.cuda.is_available() is False. Fix: run on a GPU machine, or pass --tiny for the CPU check"
        )
    started = time.perf_counter()
    gpu = measure_4b(config, model_dimensions=TINY_QWEN3, device="cpu") if tiny else measure_4b(config)
    record = {
        "benchmark": "training-gpu",
        "smoke": tiny,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "command": " ".join(
            ["python3 -m benchmarks.gpu_training OUT.json", *overrides, *(["--tiny"] if tiny else [])]
        ),
        "machine": gpu_environment(),
        "settings": {
            "gpu_recipe": Path(config.gpu_recipe).name,
            "gpu_steps": config.gpu_steps,
            "gpu_warmup_steps": config.gpu_warmup_steps,
            "gpu_short_seq_lens": config.gpu_short_seq_lens,
            "gpu_peak_tflops": config.gpu_peak_tflops,
        },
        "figures": {"gpu": gpu},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    gpu = record["figures"]["gpu"]
    lines = [
        f"{gpu['gpu']}: {gpu['parameters']:,} parameters, {gpu['trainable_parameters']:,} trainable; model built in"
        f" {gpu['model_build_s']} s"
    ]
    for run in gpu["shapes"]:
        lines.append(
            f"  {run['batch_size']}x{run['seq_len']}: {run['tokens_per_s']:,.0f} tokens/s, {run['s_per_micro_step']}"
            f" s/micro-step, MFU {run['mfu']}, HFU {run['hfu']}, peak {run['peak_memory_gb']} GB, loss"
            f" {run['loss_first_last']}"
        )
    return lines


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="where to write the JSON record")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny Qwen3 on CPU (checks the code, measures nothing of the 4B)"
    )
    args, rest = parser.parse_known_args()
    try:
        result = run(Path(args.out), rest, tiny=args.tiny)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    print("\n".join(summary_lines(result)))
