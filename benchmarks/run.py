"""Run NanoFlux's benchmarks: print one table, write `benchmarks/results/<part>.json` per part.

Usage:
    python -m benchmarks.run                                   # every part (or `make bench`)
    python -m benchmarks.run --parts throughput,distilabel     # some parts: throughput, distilabel, novelty, training
    python -m benchmarks.run --smoke                           # tiny sizes, a minute or two (tests/test_benchmarks.py)
    python -m benchmarks.run --throughput.slots [8,64] --throughput.speed 1 --results_dir /tmp/r

Parts (each module's docstring says exactly what it measures and how):
- throughput (benchmarks/throughput.py): the real builder, at default settings, against a simulated continuous-batching
  server (benchmarks/batching_server.py) with 8, 64 and 256 slots, for the medical and the math recipe (the sandbox on
  every example); `ratio_to_bound` (the server's shortest time for the work / the wall time) and the builder's CPU.
- distilabel (benchmarks/versus_distilabel.py): the same workload as a distilabel pipeline against the same server,
  both warmed up, 1,000 examples at 64 slots, 3 runs; `vs_distilabel` = NanoFlux median wall time / distilabel's.
- novelty (benchmarks/novelty_scaling.py): the novelty filter against banks of 1k-100k questions, and the packaged
  embedder's throughput on CPU.
- training (benchmarks/training_cost.py): the local LoRA recipe on CPU, the 4B recipe on a GPU when there is one, and
  the training-token compute ratio against the full benchmark training sets.

Every results file holds `benchmark`, `created_at`, `duration_s`, `machine` (platform, CPUs, load, Python and
package versions, GPU), `settings` and `figures`; the keys are stable. Like the builder's recipes, settings are
dataclasses with `--part.field value` overrides; unknown fields and out-of-range values fail before anything runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.novelty_scaling import NoveltyScalingConfig
from benchmarks.throughput import ThroughputConfig
from benchmarks.training_cost import TrainingCostConfig
from benchmarks.versus_distilabel import VersusConfig
from nanoflux.recipe import ConfigError, from_dict, merge, parse_overrides

logger = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("throughput", "distilabel", "novelty", "training")
RESULT_FILES = {
    "throughput": "throughput.json",
    "distilabel": "distilabel.json",
    "novelty": "novelty.json",
    "training": "training.json",
}
PACKAGES = (
    "nanoflux",
    "torch",
    "numpy",
    "transformers",
    "sentence-transformers",
    "huggingface_hub",
    "datasets",
    "trl",
    "peft",
    "distilabel",
)
# --smoke: every part at a size that runs in about a minute on 2 cores (the distilabel part and the CPU LoRA run are
# left to their own slow tests). The loopback latencies stay large enough that the builder's concurrency shows.
SMOKE = {
    "throughput": {
        "recipes": [str(ROOT / "configs" / "medical.yaml"), str(ROOT / "configs" / "math.yaml")],
        "slots": [8, 32],
        "attacks_per_slot": 2.0,
        "min_attacks": 16,
        "speed": 2.0,
    },
    "distilabel": {"examples": 64, "rounds": 1, "repeats": 1, "slots": 16, "speed": 8.0},
    "novelty": {"bank_sizes": [200, 2000], "candidates": 100, "embedding_texts": 16},
    "training": {"cpu_steps": 0, "cpu_rows": 4, "tiny_steps": 1, "gpu_steps": 2, "gpu_warmup_steps": 1},
}


@dataclass
class BenchConfig:
    """Settings of every part, and where results and scratch files go."""

    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    distilabel: VersusConfig = field(default_factory=VersusConfig)
    novelty: NoveltyScalingConfig = field(default_factory=NoveltyScalingConfig)
    training: TrainingCostConfig = field(default_factory=TrainingCostConfig)
    results_dir: str = str(ROOT / "benchmarks" / "results")
    work_dir: str = str(ROOT / "outputs" / "bench")
    """Builds, pipelines and adapters written while measuring (on a real disk: the journal's fsyncs are measured
    too)."""

    def validate(self) -> None:
        self.throughput.validate("throughput")
        self.distilabel.validate("distilabel")
        self.novelty.validate("novelty")
        self.training.validate("training")


def build_bench_config(cli_args: list[str]) -> tuple[BenchConfig, list[str], bool]:
    """`--parts a,b`, `--smoke` and `--part.field value` overrides → (validated config, parts, smoke)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (about a minute)")
    args, rest = parser.parse_known_args(cli_args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(
            f"--parts: unknown part(s) {unknown} (got {args.parts!r}). Fix: use a comma-separated subset of"
            f" {','.join(PARTS)}"
        )
    data = merge(SMOKE if args.smoke else {}, parse_overrides(rest))
    config = from_dict(BenchConfig, data)
    config.validate()
    return config, parts, args.smoke


def machine_info() -> dict[str, Any]:
    """What the figures depend on: the machine, its load while measuring, and the package versions."""
    import torch

    from nanoflux.hub import package_versions

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": package_versions(PACKAGES),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_part(part: str, config: BenchConfig, smoke: bool) -> dict[str, Any]:
    """Measure one part; returns its results record (also written to results_dir)."""
    work_dir = Path(config.work_dir) / part
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if part == "throughput":
        from benchmarks import throughput

        figures = throughput.main(config.throughput, work_dir)
    elif part == "distilabel":
        from benchmarks import versus_distilabel

        figures = versus_distilabel.main(config.distilabel, work_dir)
    elif part == "novelty":
        from benchmarks import novelty_scaling
        from nanoflux.models import cache_root

        figures = novelty_scaling.main(config.novelty, cache_root() / "benchmarks")
    else:
        from benchmarks import training_cost

        figures = training_cost.main(config.training, work_dir)
    machine = machine_info()
    machine["load_average_1m_before"] = round(load_before, 2)
    record = {
        "benchmark": part,
        "smoke": smoke,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "command": (
            " ".join(["python -m benchmarks.run", *sys.argv[1:]])
            if sys.argv[0].endswith("run.py")
            else "benchmarks.run.main"
        ),
        "machine": machine,
        "settings": figures.pop("settings"),
        "figures": figures,
    }
    results_dir = Path(config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / RESULT_FILES[part]).write_text(json.dumps(record, indent=2) + "\n")
    return record


# --- the table -----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_rows(record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(part, figure, value, goal) rows for one results record."""
    part, f, s = record["benchmark"], record["figures"], record["settings"]
    rows = []
    if part == "throughput":
        server = s["server"]
        costs = (
            f"server: {server['step_base_s'] * 1000:g} ms + {server['step_per_seq_s'] * 1000:g} ms/sequence per step,"
            f" prefill {server['prefill_per_token_s'] * 1000:g} ms/token, speed x{server['speed']:g}; builder at"
            " default settings"
        )
        rows.append((part, costs, "", ""))
        for run in f["runs"]:
            values = (
                f"{_fmt(run['ratio_to_bound'], 3)}; {_fmt(run['batch_fill'], 3)}; {_fmt(run['server_busy_share'], 3)};"
                f" {_fmt(run['adaptive_limit']['peak_limit'])}; {_fmt(run['cpu_ms_per_example'], 1)}"
            )
            rows.append(
                (
                    part,
                    (
                        f"{run['domain']} at {run['slots']} slots ({run['examples']} examples): ratio_to_bound; batch"
                        " fill; server busy; peak limit; CPU ms/example"
                    ),
                    values,
                    "",
                )
            )
        goal = f["goal"]
        rows.append(
            (
                part,
                "lowest ratio_to_bound (default settings)",
                _fmt(goal["lowest"], 3),
                f">= {goal['ratio_to_bound_min']} {'met' if goal['met'] else 'NOT met'}",
            )
        )
    elif part == "distilabel":
        nf, dl = f["nanoflux"], f["distilabel"]
        where = f"{s['examples']} examples, {s['server']['slots']} slots, {s['repeats']} runs"
        for name, system in (
            ("NanoFlux (defaults)", nf),
            (f"distilabel {s['distilabel_version']} (input_batch_size {s['distilabel_input_batch_size']})", dl),
        ):
            wall, ratio = system["wall_s"], system["ratio_to_bound"]
            rows.append(
                (
                    part,
                    f"{name}, {where}: wall s median [min-max]; ratio_to_bound median",
                    (
                        f"{_fmt(wall['median'], 1)} [{_fmt(wall['min'], 1)}-{_fmt(wall['max'], 1)}];"
                        f" {_fmt(ratio['median'], 3)}"
                    ),
                    "",
                )
            )
        rows.append(
            (
                part,
                "vs_distilabel (NanoFlux median / distilabel median)",
                _fmt(f["vs_distilabel"], 3),
                f"<= 1.0 {'met' if f['goal']['met'] else 'NOT met'}",
            )
        )
    elif part == "novelty":
        for run in f["runs"]:
            rows.append(
                (
                    part,
                    f"bank {run['bank_size']:,}: ms per candidate; peak MB",
                    f"{_fmt(run['ms_per_candidate'], 3)}; {_fmt(run['peak_mb'], 1)}",
                    "",
                )
            )
        rows.append((part, "growth exponent of time per candidate with bank size", _fmt(f["growth_exponent"], 2), ""))
        if f["embedding"]:
            e = f["embedding"]
            rows.append(
                (
                    part,
                    f"all-MiniLM-L6-v2 on CPU ({e['mean_tokens_per_text']:.0f} tokens/text): texts/s",
                    _fmt(e["texts_per_s"], 1),
                    "",
                )
            )
    else:
        cpu, gpu, ratio = f["cpu"], f["gpu"], f["compute_ratio"]
        if cpu.get("skipped"):
            rows.append((part, "local LoRA recipe on CPU", f"skipped: {cpu['reason']}", ""))
        else:
            rows.append(
                (
                    part,
                    f"local LoRA recipe on CPU ({cpu['model'].split('/')[-1]}): tokens/s; peak RSS MB",
                    f"{_fmt(cpu['tokens_per_s'], 1)}; {_fmt(cpu['peak_rss_mb'], 0)}",
                    "",
                )
            )
        if gpu.get("skipped"):
            rows.append((part, "4B LoRA recipe on GPU (random-weight Qwen3-4B)", f"skipped: {gpu['reason']}", ""))
        else:
            rows.append(
                (
                    part,
                    f"4B LoRA recipe on {gpu['gpu']}: tokens/s; MFU; peak GB",
                    f"{_fmt(gpu['tokens_per_s'], 0)}; {_fmt(gpu['mfu'], 3)}; {_fmt(gpu['peak_memory_gb'], 1)}",
                    "",
                )
            )
        estimate = " (estimate)" if ratio["estimate"] else ""
        for entry in ratio["full_sets"]:
            rows.append(
                (
                    part,
                    (
                        f"compute ratio{estimate}: {entry['title']} ({entry['rows']:,} rows) / NanoFlux"
                        f" {ratio['nanoflux']['rows']} rows"
                    ),
                    f"{_fmt(entry['ratio'], 1)}x",
                    "",
                )
            )
        rows.append(
            (
                part,
                f"compute ratio{estimate}: MultiMedQA (MedQA + MedMCQA + PubMedQA) / NanoFlux",
                f"{_fmt(ratio['multimedqa']['ratio'], 1)}x",
                "",
            )
        )
    return rows


def format_table(records: list[dict[str, Any]]) -> str:
    lines = ["| part | figure | value | goal |", "|---|---|---|---|"]
    for record in records:
        lines += [f"| {' | '.join(row)} |" for row in table_rows(record)]
    return "\n".join(lines)


def main(config: BenchConfig, parts: list[str], *, smoke: bool = False) -> list[dict[str, Any]]:
    """Run `parts` in order; returns their records (each also written to results_dir)."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as transformers_logging

    disable_progress_bar()  # one per parquet file written by every build
    transformers_logging.disable_progress_bar()  # one per model load
    records = []
    for part in parts:
        logger.info("benchmark %s ...", part)
        records.append(run_part(part, config, smoke))
        logger.info(
            "benchmark %s done in %.0f s -> %s",
            part,
            records[-1]["duration_s"],
            Path(config.results_dir) / RESULT_FILES[part],
        )
    return records


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    try:
        bench_config, bench_parts, bench_smoke = build_bench_config(sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"error: {err}")
    print(format_table(main(bench_config, bench_parts, smoke=bench_smoke)))
