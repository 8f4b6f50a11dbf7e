"""NanoFlux side by side with distilabel: the same three-role workload against the same simulated batching server.

NanoFlux runs its real build (`builder.build.main`, default settings: the adaptive concurrency limit finds the
server's capacity; journal and judge statuses on; novelty embedder loaded as in a CLI run). distilabel runs
`benchmarks/distilabel_pipeline.py` (attacker -> defender -> solver -> judge `TextGeneration` tasks on `OpenAILLM`,
its cache on) in its own interpreter: this one when distilabel imports beside the project's packages, else a virtual
environment made for it on first use (`benchmarks/.venv-distilabel`, with `pip install distilabel[openai]==<version>`).
distilabel's best fair configuration: `input_batch_size` = the server's slots (each task keeps that many requests in
flight), the same max_tokens, temperatures and server. The server is reset before each run, so both get exactly the
same answer lengths per role.

Both are warmed up (NanoFlux: embedder and a small build; distilabel: a small pipeline, and its wall time is
`pipeline.run` inside its process, so interpreter start and imports are outside), then run `repeats` times,
alternating, on >= 1,000 examples at 64 slots; the figures are the median and the spread (min, max).

    vs_distilabel = NanoFlux median wall time / distilabel median wall time   (< 1: NanoFlux faster)

What the comparison leaves out, in distilabel's favour: it has no round barriers (NanoFlux's Attacker gets feedback
from the judged earlier rounds, so a round waits for the previous one), no novelty filter, decontamination, judge
tools (the math recipe's sandbox), answer checks, curation or parquet output.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.batching_server import ServerModel
from nanoflux.recipe import check_range, fail

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".venv-distilabel"
_SENTINEL = "\x00{}\x00"
_SENTINEL_PATTERN = re.compile("\x00(\\w+)\x00")


@dataclass
class VersusConfig:
    """The workload, the server, and which distilabel to run against it."""

    recipe: str = str(ROOT / "configs" / "medical.yaml")
    """The build recipe (domain, prompts, role settings) both run; roles re-pointed at the loopback server."""
    examples: int = 1000
    rounds: int = 2
    """NanoFlux's rounds (examples / rounds attacks each); distilabel gets the same rows in one pass."""
    repeats: int = 3
    slots: int = 64
    """The simulated server's slots (64: where batching matters)."""
    speed: float = 4.0
    """The simulated server's speed-up (its times divided by it)."""
    server: ServerModel = field(default_factory=ServerModel)
    """The simulated server's costs; `slots` and `speed` are replaced by the fields above, and its queue has no
    limit, as vLLM's: neither client is refused for sending more than the slots (distilabel's four tasks each keep
    `input_batch_size` requests in flight)."""

    def server_model(self) -> ServerModel:
        return dataclasses.replace(self.server, slots=self.slots, speed=self.speed, queue_limit=-1)

    input_batch_size: int | None = None
    """distilabel's requests in flight per task (its concurrency knob); None: the server's slots."""
    version: str = "1.5.3"
    """distilabel version for the virtual environment made when distilabel does not import here."""
    timeout: float = 1800.0
    """Seconds before a distilabel run is stopped."""

    def validate(self, path: str) -> None:
        if not Path(self.recipe).is_file():
            fail(
                f"{path}.recipe",
                self.recipe,
                "file not found",
                "point it at a build recipe, e.g. configs/medical.yaml",
            )
        check_range(f"{path}.examples", self.examples, 1, 1_000_000)
        check_range(f"{path}.rounds", self.rounds, 1, 100)
        if self.examples % self.rounds:
            fail(
                f"{path}.examples",
                self.examples,
                f"must be a multiple of rounds ({self.rounds})",
                "e.g. 1000 with 2 rounds",
            )
        check_range(f"{path}.repeats", self.repeats, 1, 100)
        check_range(f"{path}.slots", self.slots, 1, 4096)
        check_range(f"{path}.speed", self.speed, 0.0, 10_000.0, low_open=True)
        self.server.validate(f"{path}.server")
        if self.input_batch_size is not None:
            check_range(f"{path}.input_batch_size", self.input_batch_size, 1, 100_000)
        if not re.fullmatch(r"\d+(\.\d+)*", self.version):
            fail(f"{path}.version", self.version, "not a version number", "e.g. 1.5.3")
        check_range(f"{path}.timeout", self.timeout, 0.0, 86400.0, low_open=True)


def distilabel_python(config: VersusConfig) -> tuple[str, str]:
    """(interpreter, where it is): this one when distilabel imports here, else a virtual environment made for it."""
    if importlib.util.find_spec("distilabel") is not None:
        return sys.executable, "project environment"
    python = VENV / "bin" / "python"
    if not python.exists():
        logger.info("distilabel does not import here: making %s with distilabel %s", VENV, config.version)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"distilabel[openai]=={config.version}"], check=True
        )
    return str(python), str(VENV.relative_to(ROOT))


def _jinja(text: str) -> str:
    """A prompt rendered with sentinel placeholders, as a Jinja template: placeholders become `{{ name }}`, the rest
    is literal (`{% raw %}`), so nothing in NanoFlux's prompt text is read as Jinja."""
    parts = _SENTINEL_PATTERN.split(text)
    return "".join(
        f"{{{{ {part} }}}}" if i % 2 else (f"{{% raw %}}{part}{{% endraw %}}" if part else "")
        for i, part in enumerate(parts)
    )


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
                prompts,
                capability=caps[g % len(caps)],
                complexity=levels[(g // len(caps)) % len(levels)],
                feedback="",
                answer_format=build_config.answer_format,
                n_options=build_config.options,
            )
            rows.append({"id": f"r{r:02d}-a{i:04d}", "attack_prompt": attack[1]["content"]})
    s = _SENTINEL.format
    fmt, n_options = build_config.answer_format, build_config.options
    question = roles.Attack(
        question=s("question"), options=[], explanation=s("explanation"), reference_answer=s("reference_answer")
    )
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
        "max_tokens": {
            "attacker": attacker.max_tokens,
            "defender": defender.max_tokens,
            "solver": build_config.judge.max_tokens,
            "judge": build_config.judge.max_tokens,
        },
        "temperature": {
            "attacker": attacker.temperature,
            "defender": defender.temperature,
            "solver": build_config.judge.temperature,
            "judge": build_config.judge.temperature,
        },
        "system": {
            "attacker": attack[0]["content"],
            "defender": defense[0]["content"],
            "solver": solve[0]["content"],
            "judge": verdict[0]["content"],
        },
        "template": {
            "defender": _jinja(defense[1]["content"]),
            "solver": _jinja(solve[1]["content"]),
            "judge": _jinja(verdict[1]["content"]),
        },
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
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    process_wall = time.perf_counter() - started
    (work_dir / "distilabel.log").write_text(process.stdout + process.stderr)
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        raise RuntimeError(
            f"the distilabel pipeline failed (exit {process.returncode}); log in"
            f" {work_dir / 'distilabel.log'}:\n{tail}"
        )
    return {**json.loads(result_path.read_text()), "process_wall_s": round(process_wall, 3)}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main(config: VersusConfig, work_dir: Path) -> dict[str, Any]:
    """Both warmed up, then `repeats` x (NanoFlux, distilabel) against one loopback server; medians and spreads."""
    from benchmarks.loopback import LoopbackEndpoint
    from benchmarks.throughput import build_config, display_path, measure_build, warm_up
    from localhub.testing import loopback_reachable

    python, where = distilabel_python(config)
    server = config.server_model()
    batch = config.input_batch_size or server.slots
    per_round = config.examples // config.rounds
    domain = build_config(config.recipe, "http://127.0.0.1:1", work_dir, rounds=1, attacks_per_round=1).domain
    version = None
    nanoflux_runs: list[dict[str, Any]] = []
    distilabel_runs: list[dict[str, Any]] = []
    with loopback_reachable():
        warm_up([config.recipe], server, work_dir / "warmup")  # NanoFlux: embedder, imports, a small build
        with LoopbackEndpoint(domain, server=server) as endpoint:
            # distilabel: a small pipeline first (imports, multiprocessing start-up and file caches warmed); each
            # measured run is timed inside its process, from `pipeline.run`, so its interpreter start is outside too.
            folder = work_dir / "distilabel-warmup"
            spec = pipeline_spec(
                build_config(config.recipe, endpoint.url, folder, rounds=1, attacks_per_round=16),
                endpoint.url,
                batch,
                folder / "cache",
            )
            run_distilabel(python, spec, folder, config.timeout)
            for repeat in range(config.repeats):  # alternated, so a change in the machine's load hits both alike
                nanoflux = measure_build(
                    endpoint,
                    build_config(
                        config.recipe,
                        endpoint.url,
                        work_dir / f"nanoflux-{repeat}",
                        rounds=config.rounds,
                        attacks_per_round=per_round,
                    ),
                )
                nanoflux_runs.append(nanoflux)
                logger.info(
                    "versus %d: NanoFlux %.1f s (ratio to bound %.3f)",
                    repeat,
                    nanoflux["wall_s"],
                    nanoflux["ratio_to_bound"],
                )
                endpoint.reset()
                folder = work_dir / f"distilabel-{repeat}"
                spec = pipeline_spec(
                    build_config(
                        config.recipe, endpoint.url, folder, rounds=config.rounds, attacks_per_round=per_round
                    ),
                    endpoint.url,
                    batch,
                    folder / "cache",
                )
                result = run_distilabel(python, spec, folder, config.timeout)
                stats = endpoint.stats()
                distilabel_runs.append(
                    {
                        "examples": result["verdicts"],
                        "calls": stats.requests,
                        "calls_by_role": stats.requests_by_role,
                        "rejected_429": stats.rejected,
                        "completion_tokens": stats.completion_tokens,
                        "wall_s": result["wall_s"],
                        "process_wall_s": result["process_wall_s"],
                        "examples_per_min": round(60 * result["verdicts"] / result["wall_s"], 1),
                        "bound_s": round(stats.bound_s, 3),
                        "ratio_to_bound": round(stats.bound_s / result["wall_s"], 4),
                        "server_max_in_system": stats.max_in_system,
                    }
                )
                version = result["distilabel_version"]
                logger.info(
                    "versus %d: distilabel %.1f s (ratio to bound %.3f)",
                    repeat,
                    result["wall_s"],
                    distilabel_runs[-1]["ratio_to_bound"],
                )
    nf_wall = _spread([r["wall_s"] for r in nanoflux_runs])
    dl_wall = _spread([r["wall_s"] for r in distilabel_runs])
    return {
        "settings": {
            "recipe": display_path(config.recipe),
            "examples": config.examples,
            "nanoflux_rounds": config.rounds,
            "repeats": config.repeats,
            "server": dataclasses.asdict(server),
            "server_max_completion_tokens_per_s": round(server.max_completion_tokens_per_s(), 1),
            "nanoflux_settings": "defaults (adaptive concurrency limit, ceiling 256)",
            "distilabel_input_batch_size": batch,
            "distilabel_version": version,
            "distilabel_environment": where,
            "distilabel_llm": "OpenAILLM (base_url = the loopback server's /v1), same max_tokens and temperatures",
            "warm_up": (
                "NanoFlux: embedder loaded and a small build first; distilabel: a small pipeline first, and wall_s"
                " from pipeline.run"
            ),
            "nanoflux_guarantees": (
                "journal (resume) fsynced per call and per example state; judge_status on every judged row"
            ),
            "not_in_distilabel": (
                "round barriers with feedback, novelty filter (embedding every question), decontamination, judge tools"
                " (corpus lookup; the sandbox in math), answer checks, curation, parquet output (all cost NanoFlux"
                " time)"
            ),
        },
        "nanoflux": {
            "runs": nanoflux_runs,
            "wall_s": nf_wall,
            "ratio_to_bound": _spread([r["ratio_to_bound"] for r in nanoflux_runs]),
        },
        "distilabel": {
            "runs": distilabel_runs,
            "wall_s": dl_wall,
            "ratio_to_bound": _spread([r["ratio_to_bound"] for r in distilabel_runs]),
        },
        "vs_distilabel": round(nf_wall["median"] / dl_wall["median"], 4),
        "goal": {"vs_distilabel_max": 1.0, "met": nf_wall["median"] <= dl_wall["median"]},
    }
