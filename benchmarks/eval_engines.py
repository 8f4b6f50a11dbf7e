"""Evaluation questions/s: the in-process transformers engine against the endpoint engine on a llama.cpp server.

Usage:
    python -m benchmarks.eval_engines                              # writes benchmarks/results/evaluation_engines.json
    python -m benchmarks.eval_engines --limit 8 --max_new_tokens 128 --out /tmp/evaluation_engines.json

Both engines run `nanoflux eval` (`trainer.evaluation.run.main`) on the local recipe (configs/eval/local.yaml): the
packaged SmolLM2-135M-Instruct on the six benchmark fixtures (`limit` rows each), the base model only, final answer
only, greedy, `max_new_tokens` new tokens, no compute accounting.
- transformers: in-process, fp32 on the CPU (the dequantized GGUF), left-padded batches of the recipe's batch_size.
- endpoint: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, installed with the `test` extra)
  serving the packaged Q4_1 GGUF on loopback, started here; every question one chat request through
  nanoflux.transport.EndpointClient (adaptive concurrency; that server decodes one request at a time).
Figures per engine: questions, questions/s (answers over the generation time: model load and server start excluded,
reported apart as `load_s` / `server_start_s`), the evaluation's whole wall time, accuracy per benchmark; and the
agreement of the two engines (share of questions with the same extracted answer, and with the same text). llama.cpp
computes with the Q4_1 weights, the in-process engine with their dequantized fp32 copy, so the texts may differ.
Timings depend on the machine's load: `machine.load_average_1m` is recorded with them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localhub.serving import free_port, stop_process, wait_until_answers

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "evaluation_engines.json"
SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")

logger = logging.getLogger("benchmarks.eval_engines")


class ServerUnavailable(RuntimeError):
    """llama_cpp.server cannot start here (its extras are missing, or it exited)."""


@contextlib.contextmanager
def packaged_llama_server(startup_timeout: float = 180.0, n_ctx: int = 2048) -> Iterator[tuple[str, float]]:
    """`python -m llama_cpp.server` serving the packaged SmolLM2 GGUF on a free loopback port: (its URL, seconds it
    took to answer /v1/models). Stopped (terminate, then kill) on exit."""
    from nanoflux.models import DEFAULT_MODEL_ID, PACKAGED_MODELS

    missing = [name for name in SERVER_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        raise ServerUnavailable(f"llama_cpp.server needs {', '.join(missing)}: pip install 'llama-cpp-python[server]'")
    spec = PACKAGED_MODELS[DEFAULT_MODEL_ID]
    gguf = importlib.resources.files(spec.package) / spec.gguf_file
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_answers(
            url, "/v1/models", startup_timeout, alive=lambda: process.poll() is None, interval=0.25
        ):
            if process.poll() is not None:
                raise ServerUnavailable(
                    f"llama_cpp.server exited with {process.returncode}: {Path(log.name).read_text()[-2000:]}"
                )
            raise ServerUnavailable(
                f"llama_cpp.server not ready after {startup_timeout:.0f} s: {Path(log.name).read_text()[-2000:]}"
            )
        yield url, time.perf_counter() - started
    finally:
        stop_process(process, timeout=20)
        log.close()
        os.unlink(log.name)


def local_config(
    output_dir: Path, *, limit: int, max_new_tokens: int, engine: str = "transformers", base_url: str | None = None
) -> Any:
    """configs/eval/local.yaml, base model only, without compute accounting, for one engine."""
    from trainer.evaluation.config import build_eval_config

    overrides = [
        "--adapter",
        "null",
        "--compute",
        "null",
        "--limit",
        str(limit),
        "--max_new_tokens",
        str(max_new_tokens),
        "--output_dir",
        str(output_dir),
        "--engine",
        engine,
    ]
    if base_url:
        overrides += ["--endpoint.base_url", base_url]
    return build_eval_config(ROOT / "configs" / "eval" / "local.yaml", overrides)


def agreement(first: Path, second: Path) -> dict[str, Any]:
    """How often two evaluations (their details/ folders) extracted the same answer, and wrote the same text."""
    same_answer = same_text = total = 0
    for path in sorted((first / "details").glob("*.jsonl")):
        a = [json.loads(line) for line in path.read_text().splitlines()]
        b = [json.loads(line) for line in (second / "details" / path.name).read_text().splitlines()]
        assert [r["id"] for r in a] == [r["id"] for r in b], path.name
        total += len(a)
        same_answer += sum(x["extracted"] == y["extracted"] for x, y in zip(a, b, strict=True))
        same_text += sum(x["output"] == y["output"] for x, y in zip(a, b, strict=True))
    return {
        "questions": total,
        "same_extracted_answer": same_answer,
        "same_text": same_text,
        "answer_agreement": round(same_answer / total, 3) if total else None,
        "text_agreement": round(same_text / total, 3) if total else None,
    }


def _engine_figures(results: dict[str, Any], wall_s: float) -> dict[str, Any]:
    gen = results["generation"]
    return {
        "questions": gen["asked"],
        "questions_per_s": gen["questions_per_s"],
        "generation_s": gen["generation_s"],
        "load_s": gen.get("load_s"),
        "wall_s": round(wall_s, 1),
        "completion_tokens": gen.get("completion_tokens"),
        "accuracy": {name: r["base"]["accuracy"] for name, r in results["results"].items()},
    }


def main(limit: int = 4, max_new_tokens: int = 64, work_dir: Path | None = None) -> dict[str, Any]:
    """Measure both engines on the same questions; returns the record (figures and settings)."""
    from trainer.evaluation.run import main as eval_main

    work = Path(work_dir or tempfile.mkdtemp(prefix="nanoflux-eval-engines-")).resolve()
    figures: dict[str, Any] = {}
    with contextlib.chdir(ROOT):  # the recipe's fixture paths are relative to the repository
        started = time.perf_counter()
        in_process = eval_main(local_config(work / "transformers", limit=limit, max_new_tokens=max_new_tokens))
        figures["transformers"] = _engine_figures(in_process, time.perf_counter() - started)
        figures["transformers"].update(
            dtype=in_process["generation"]["dtype"],
            device=in_process["generation"]["device"],
            batch_size=in_process["generation"]["batch_size"],
        )
        with packaged_llama_server() as (url, start_s):
            started = time.perf_counter()
            served = eval_main(
                local_config(
                    work / "endpoint", limit=limit, max_new_tokens=max_new_tokens, engine="endpoint", base_url=url
                ),
                fresh=True,
            )
            figures["endpoint"] = _engine_figures(served, time.perf_counter() - started)
            figures["endpoint"].update(
                server="llama-cpp-python (python -m llama_cpp.server), packaged Q4_1 GGUF",
                server_start_s=round(start_s, 1),
                http_attempts=served["generation"]["http_attempts"],
            )
    figures["agreement"] = agreement(work / "transformers", work / "endpoint")
    rates = figures["transformers"]["questions_per_s"], figures["endpoint"]["questions_per_s"]
    figures["endpoint_vs_transformers"] = round(rates[1] / rates[0], 3) if all(rates) else None
    settings = {
        "recipe": "configs/eval/local.yaml",
        "variants": ["base"],
        "limit_per_benchmark": limit,
        "max_new_tokens": max_new_tokens,
        "reasoning": False,
        "greedy": True,
        "work_dir": str(work),
    }
    return {"settings": settings, **figures}


def _machine() -> dict[str, Any]:
    import platform

    from nanoflux.hub import package_versions

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "packages": package_versions(("nanoflux", "torch", "transformers", "llama_cpp_python")),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4, help="rows per benchmark (6 benchmarks)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the llama.cpp server (finally)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request, as the CLI silences it
    load_before = round(os.getloadavg()[0], 2)
    began = time.perf_counter()
    record = main(args.limit, args.max_new_tokens)
    settings = record.pop("settings")
    out = {
        "benchmark": "evaluation_engines",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - began, 1),
        "command": " ".join(["python -m benchmarks.eval_engines", *sys.argv[1:]]),
        "machine": {**_machine(), "load_average_1m_before": load_before},
        "settings": settings,
        "figures": record,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    t, e = record["transformers"], record["endpoint"]
    print(
        f"transformers: {t['questions_per_s']} questions/s ({t['questions']} questions, load {t['load_s']} s); "
        f"endpoint (llama.cpp): {e['questions_per_s']} questions/s (server start {e['server_start_s']} s); "
        f"answer agreement {record['agreement']['answer_agreement']}; written to {args.out}"
    )
