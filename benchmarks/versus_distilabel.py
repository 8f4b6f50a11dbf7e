"""NanoFlux side by side with distilabel: the same three-role workload against the same loopback server, in one run.

NanoFlux runs its real build (`builder.build.main`, journal and judge statuses on, novelty embedder loaded as in a
CLI run) at the recipe's default concurrency. distilabel runs `benchmarks/distilabel_pipeline.py` (attacker ->
defender -> judge `TextGeneration` tasks on `OpenAILLM`, its cache on) in its own interpreter: this one when
distilabel imports beside the project's packages, else a virtual environment made for it on first use
(`benchmarks/.venv-distilabel`, with `pip install distilabel[openai]==<version>`), so the project is never pinned
back for it. The server is reset between the two, so both get exactly the same answer lengths per role.

    vs_distilabel = NanoFlux wall time / the fastest distilabel configuration's wall time   (< 1: NanoFlux faster)

Differences that favour distilabel, kept on purpose: it has no round barriers (NanoFlux's Attacker gets feedback from
the judged earlier rounds, so a round waits for the previous one), no novelty filter and no judge tools; its wall time
is `pipeline.run` only (its interpreter start and imports are reported apart).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config import check_range, fail

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".venv-distilabel"
_SENTINEL = "\x00{}\x00"
_SENTINEL_PATTERN = re.compile("\x00(\\w+)\x00")


@dataclass
class VersusConfig:
    """Which distilabel, and the batch sizes (requests each of its tasks sends at once) to run it with."""

    version: str = "1.5.3"
    """distilabel version for the virtual environment made when distilabel does not import here."""
    input_batch_sizes: list[int] = field(default_factory=lambda: [8, 50])
    """8: the same requests in flight per task as NanoFlux's max_concurrency; 50: distilabel's default."""
    timeout: float = 1800.0
    """Seconds before a distilabel run is stopped."""

    def validate(self, path: str) -> None:
        if not re.fullmatch(r"\d+(\.\d+)*", self.version):
            fail(f"{path}.version", self.version, "not a version number", "e.g. 1.5.3")
        if not self.input_batch_sizes or any(b < 1 for b in self.input_batch_sizes):
            fail(f"{path}.input_batch_sizes", self.input_batch_sizes, "needs batch sizes >= 1", "e.g. [8, 50]")
        check_range(f"{path}.timeout", self.timeout, 0.0, 86400.0, low_open=True)


def distilabel_python(config: VersusConfig) -> tuple[str, str]:
    """(interpreter, where it is): this one when distilabel imports here, else a virtual environment made for it."""
    if importlib.util.find_spec("distilabel") is not None:
        return sys.executable, "project environment"
    python = VENV / "bin" / "python"
    if not python.exists():
        logger.info("distilabel does not import here: making %s with distilabel %s", VENV, config.version)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"distilabel[openai]=={config.version}"], check=True)
    return str(python), str(VENV.relative_to(ROOT))


def _jinja(text: str) -> str:
    """A prompt rendered with sentinel placeholders, as a Jinja template: placeholders become `{{ name }}`, the rest
    is literal (`{% raw %}`), so nothing in NanoFlux's prompt text is read as Jinja."""
    parts = _SENTINEL_PATTERN.split(text)
    return "".join(f"{{{{ {part} }}}}" if i % 2 else (f"{{% raw %}}{part}{{% endraw %}}" if part else "") for i, part in enumerate(parts))


def pipeline_spec(build_config: Any, base_url: str, input_batch_size: int, cache_dir: Path) -> dict[str, Any]:
    """Everything the distilabel pipeline needs, as JSON: NanoFlux's rendered Attacker prompts (one row per attack,
    capabilities and complexities cycled as in a build), and its Defender and Judge prompts as Jinja templates."""
    from builder import roles
    from builder.tools import format_tool_results

    prompts = roles.load_prompts(build_config.domain, build_config.prompts)
    caps, levels = build_config.capabilities, build_config.complexity_levels
    rows, attack = [], []
    for r in range(build_config.rounds):
        for i in range(build_config.attacks_per_round):
            g = r * build_config.attacks_per_round + i
            attack = roles.attack_messages(
                prompts, capability=caps[g % len(caps)], complexity=levels[(g // len(caps)) % len(levels)], feedback="",
                answer_format=build_config.answer_format, n_options=build_config.options,
            )  # fmt: skip
            rows.append({"id": f"r{r:02d}-a{i:04d}", "attack_prompt": attack[1]["content"]})
    s = _SENTINEL.format
    fmt, n_options = build_config.answer_format, build_config.options
    question = roles.Attack(question=s("question"), options=[], explanation=s("explanation"), reference_answer=s("reference_answer"))
    defense = roles.defense_messages(prompts, attack=question, answer_format=fmt, n_options=n_options)
    solve = roles.solve_messages(prompts, attack=question, answer_format=fmt, n_options=n_options)
    verdict = roles.verdict_messages(
        prompts,
        attack=question,
        defense=roles.Defense(reasoning=s("defender_reasoning"), answer=s("defender_answer")),
        solution=roles.Solution(reasoning=s("blind_reasoning"), program="", answer=s("blind_answer")),
        tool_results=format_tool_results([]),
    )
    attacker, defender = build_config.player_a, build_config.player_b
    return {
        "base_url": base_url.rstrip("/") + "/v1",
        "model": attacker.model,
        "timeout": int(attacker.timeout),
        "max_retries": attacker.max_attempts - 1,
        "max_tokens": {"attacker": attacker.max_tokens, "defender": defender.max_tokens, "solver": build_config.judge.max_tokens, "judge": build_config.judge.max_tokens},
        "temperature": {"attacker": attacker.temperature, "defender": defender.temperature, "solver": build_config.judge.temperature, "judge": build_config.judge.temperature},
        "system": {"attacker": attack[0]["content"], "defender": defense[0]["content"], "solver": solve[0]["content"], "judge": verdict[0]["content"]},
        "template": {"defender": _jinja(defense[1]["content"]), "solver": _jinja(solve[1]["content"]), "judge": _jinja(verdict[1]["content"])},
        "rows": rows,
        "input_batch_size": input_batch_size,
        "cache_dir": str(cache_dir),
    }


def run_distilabel(python: str, spec: dict[str, Any], work_dir: Path, timeout: float) -> dict[str, Any]:
    """Run the pipeline in `python`; returns its result (wall time of `pipeline.run`) plus the process's wall time."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(spec["cache_dir"], ignore_errors=True)  # a fresh cache: nothing may be replayed from an earlier run
    spec_path, result_path = work_dir / "spec.json", work_dir / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILABEL_LOG_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    process = subprocess.run(
        [python, "-m", "benchmarks.distilabel_pipeline", str(spec_path), str(result_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    process_wall = time.perf_counter() - started
    (work_dir / "distilabel.log").write_text(process.stdout + process.stderr)
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        raise RuntimeError(f"the distilabel pipeline failed (exit {process.returncode}); log in {work_dir / 'distilabel.log'}:\n{tail}")
    return {**json.loads(result_path.read_text()), "process_wall_s": round(process_wall, 3)}


def main(config: VersusConfig, workload: Any, work_dir: Path) -> dict[str, Any]:
    """NanoFlux then distilabel (each batch size) against one loopback server; returns both and `vs_distilabel`."""
    from benchmarks.loopback import LoopbackEndpoint
    from benchmarks.throughput import build_config, measure_build
    from builder.novelty import load_embedder
    from tests.tgi_server import loopback_reachable

    python, where = distilabel_python(config)
    capacity = workload.capacity
    domain = build_config(workload, "http://127.0.0.1:1", work_dir, 1).domain
    with loopback_reachable(), LoopbackEndpoint(domain, latency=workload.latency, token_latency=workload.token_latency, capacity=capacity) as endpoint:
        # Imports and first-use set-up are not part of either measurement; the embedder load is (a CLI build pays it).
        measure_build(endpoint, build_config(workload, endpoint.url, work_dir / "warmup", workload.default_concurrency, rounds=1, attacks_per_round=8), capacity=capacity)
        load_embedder.cache_clear()
        nanoflux = measure_build(endpoint, build_config(workload, endpoint.url, work_dir / "nanoflux", workload.default_concurrency), capacity=capacity)
        logger.info("versus: NanoFlux %.1f s (ratio to bound %.3f)", nanoflux["wall_s"], nanoflux["ratio_to_bound"])
        runs, version = [], None
        for batch in config.input_batch_sizes:
            endpoint.reset()
            folder = work_dir / f"distilabel-b{batch}"
            spec = pipeline_spec(build_config(workload, endpoint.url, folder, workload.default_concurrency), endpoint.url, batch, folder / "cache")
            result = run_distilabel(python, spec, folder, config.timeout)
            version = result["distilabel_version"]
            stats = endpoint.stats()
            bound = stats.service_seconds / capacity
            runs.append({
                "input_batch_size": batch,
                "examples": result["verdicts"],
                "calls": stats.requests,
                "calls_by_role": stats.requests_by_role,
                "wall_s": result["wall_s"],
                "process_wall_s": result["process_wall_s"],
                "examples_per_min": round(60 * result["verdicts"] / result["wall_s"], 1),
                "bound_s": round(bound, 3),
                "ratio_to_bound": round(bound / result["wall_s"], 4),
                "server_max_concurrent": stats.max_concurrent,
            })  # fmt: skip
            logger.info("versus: distilabel (input_batch_size %d) %.1f s (ratio to bound %.3f)", batch, result["wall_s"], runs[-1]["ratio_to_bound"])
    fastest = min(runs, key=lambda run: run["wall_s"])
    return {
        "settings": {
            "examples": workload.rounds * workload.attacks_per_round,
            "server": {"latency_s": workload.latency, "token_latency_s": workload.token_latency, "capacity": capacity},
            "nanoflux_max_concurrency": workload.default_concurrency,
            "distilabel_input_batch_sizes": config.input_batch_sizes,
            "distilabel_version": version,
            "distilabel_environment": where,
            "distilabel_llm": "OpenAILLM (base_url = the loopback server's /v1)",
            "nanoflux_guarantees": "journal (resume) fsynced per call and per example state; judge_status on every judged row",
            "not_in_distilabel": "round barriers with feedback, novelty filter, judge tools (all cost NanoFlux time)",
        },
        "nanoflux": nanoflux,
        "distilabel": runs,
        "vs_distilabel": round(nanoflux["wall_s"] / fastest["wall_s"], 4),
        "vs_distilabel_against": f"input_batch_size {fastest['input_batch_size']}",
        "goal": {"vs_distilabel_max": 1.0, "met": nanoflux["wall_s"] <= fastest["wall_s"]},
    }
