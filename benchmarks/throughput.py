"""Build throughput against the endpoint limit: the real builder (`builder.build.main`) against a loopback TGI.

A build's cost is almost all waiting on endpoints, so the figure that matters is how close the builder comes to
keeping the endpoint as busy as its capacity allows. The loopback server (`benchmarks/loopback.py`) takes
`latency + tokens x token_latency` seconds per request and serves `capacity` requests at once; it adds up the
service time it scripted, so

    bound_s = service_seconds / capacity        (the shortest wall time any client could achieve)
    ratio_to_bound = bound_s / wall_s           (1.0: the endpoint never idled while work was waiting)

The workload is the medical recipe (`configs/medical.yaml`) with every role pointed at the loopback server under one
model name, so the three roles share one client and `max_concurrency` is the number of requests in flight. The
journal (resume) and the judge statuses are on, as in every build. Each build is measured end to end (`build.main`:
prompts, rounds, novelty, curation, parquet output; the embedder is loaded beforehand, once per process) for wall
time and for the process CPU time the builder spent, per example.

Time is scaled down so that a sweep takes minutes: 2 ms per token is 10-20x faster than a large model on a real
endpoint. That makes the test stricter, not easier: the builder's own CPU work per example (embedding the question,
journaling, HTTP) is the same, but there is 10-20x less endpoint time to hide it behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config import check_range, fail

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "medical.yaml"
MODEL = "loopback/tgi"  # one model name for all roles: they share one client and its concurrency bound


@dataclass
class ThroughputConfig:
    """The build workload, the loopback server's behaviour, and the client concurrency settings to sweep."""

    rounds: int = 4
    attacks_per_round: int = 50
    """rounds x attacks_per_round examples, four calls each (Attacker, Defender, the Judge's blind solve and verdict)."""
    latency: float = 0.05
    """Server seconds per request (queueing, prefill)."""
    token_latency: float = 0.002
    """Server seconds per generated token; answers are 240 / 125 / 95 tokens on average per role."""
    capacity: int = 8
    """Requests the server processes at once; more queue (TGI's max_concurrent_requests)."""
    concurrency: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Client `max_concurrency` settings to measure."""
    default_concurrency: int = 8
    """The recipe default (RoleConfig.max_concurrency): the setting the goal applies to."""
    goal: float = 0.9
    """ratio_to_bound the default setting must reach."""
    recipe: str = str(RECIPE)
    """The build recipe whose domain, prompts, capabilities and role settings are used (roles re-pointed)."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.rounds", self.rounds, 1, 100)
        check_range(f"{path}.attacks_per_round", self.attacks_per_round, 1, 10_000)
        check_range(f"{path}.latency", self.latency, 0.0, 60.0)
        check_range(f"{path}.token_latency", self.token_latency, 0.0, 1.0)
        check_range(f"{path}.capacity", self.capacity, 1, 1024)
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            fail(f"{path}.concurrency", self.concurrency, "needs client concurrency settings >= 1", "e.g. [1, 8, 32]")
        check_range(f"{path}.default_concurrency", self.default_concurrency, 1, 1024)
        check_range(f"{path}.goal", self.goal, 0.0, 1.0, low_open=True)
        if not Path(self.recipe).is_file():
            fail(f"{path}.recipe", self.recipe, "file not found", "point it at a build recipe, e.g. configs/medical.yaml")


def display_path(path: str | Path) -> str:
    """`path` relative to the repository when it is inside it (results files name no home folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def build_config(config: ThroughputConfig, url: str, output_dir: Path, concurrency: int, *, rounds: int | None = None, attacks_per_round: int | None = None) -> Any:
    """The recipe with every role on the loopback server, at `concurrency` requests in flight."""
    from builder.config import BuildConfig, from_dict, load_recipe, merge

    role = {"base_url": url, "model": MODEL, "max_concurrency": concurrency, "timeout": 600.0}
    overrides = {
        "rounds": rounds or config.rounds,
        "attacks_per_round": attacks_per_round or config.attacks_per_round,
        "player_a": role,
        "player_b": role,
        "judge": role,
        "allow_shared_judge": True,  # a throughput workload, not a dataset: one model keeps one shared client
        # Decontamination runs as in every build, against the offline benchmark fixtures (no Hub here).
        "decontamination": {"eval_recipe": str(ROOT / "configs" / "eval" / "local.yaml"), "ngram": 13},
        "output_dir": str(output_dir),
    }
    build_config = from_dict(BuildConfig, merge(load_recipe(config.recipe), overrides))
    build_config.validate()
    return build_config


def measure_build(endpoint: Any, build_config: Any, *, capacity: int) -> dict[str, Any]:
    """Run one fresh build against `endpoint` and compare its wall time with the endpoint's bound."""
    from builder import build

    endpoint.reset()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    summary = build.main(build_config, fresh=True)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    stats = endpoint.stats()
    concurrency = build_config.player_a.max_concurrency
    examples = sum(summary["judge_status"].values())  # examples that went through every role
    bound = stats.service_seconds / capacity
    return {
        "concurrency": concurrency,
        "examples": examples,
        "calls": stats.requests,
        "calls_by_role": stats.requests_by_role,
        "completion_tokens": stats.completion_tokens,
        "wall_s": round(wall, 3),
        "examples_per_min": round(60 * examples / wall, 1),
        "service_s": round(stats.service_seconds, 3),
        "bound_s": round(bound, 3),
        "ratio_to_bound": round(bound / wall, 4),
        # With fewer requests in flight than the server's capacity, the client itself is the limit.
        "ratio_to_client_bound": round(stats.service_seconds / min(concurrency, capacity) / wall, 4),
        "server_max_concurrent": stats.max_concurrent,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_example": round(1000 * cpu / max(examples, 1), 2),
        "cpu_share_of_wall": round(cpu / wall, 4),
        "judge_status": summary["judge_status"],
        "calls_replayed": summary["calls_replayed"],
    }


def main(config: ThroughputConfig, work_dir: Path) -> dict[str, Any]:
    """Sweep the client concurrency settings; returns settings, one run per setting and the default's figures."""
    from benchmarks.loopback import DEFAULT_LENGTHS, LoopbackEndpoint
    from builder.novelty import load_embedder
    from tests.tgi_server import loopback_reachable

    recipe = build_config(config, "http://127.0.0.1:1", work_dir, 1)  # the recipe as it will run: domain, embedder
    started = time.perf_counter()
    load_embedder(recipe.novelty.model)  # loaded once per process, as in a CLI build; not part of any run below
    embedder_load_s = time.perf_counter() - started

    settings = {
        "recipe": display_path(config.recipe),
        "rounds": config.rounds,
        "attacks_per_round": config.attacks_per_round,
        "examples": config.rounds * config.attacks_per_round,
        "calls_per_example": 4,
        "server": {"latency_s": config.latency, "token_latency_s": config.token_latency, "capacity": config.capacity},
        "completion_tokens_cycle": {role: list(v) for role, v in DEFAULT_LENGTHS.items()},
        "concurrency": config.concurrency,
        "default_concurrency": config.default_concurrency,
        "journal": "on (every call and example state fsynced)",
        "output_dir": display_path(work_dir),
    }
    runs = []
    with loopback_reachable(), LoopbackEndpoint(recipe.domain, latency=config.latency, token_latency=config.token_latency, capacity=config.capacity) as endpoint:
        # Warm-up: the first build in a process pays for imports and first-use set-up; it is not measured.
        measure_build(endpoint, build_config(config, endpoint.url, work_dir / "warmup", config.default_concurrency, rounds=1, attacks_per_round=8), capacity=config.capacity)
        for concurrency in sorted(set(config.concurrency) | {config.default_concurrency}):
            run = measure_build(endpoint, build_config(config, endpoint.url, work_dir / f"c{concurrency}", concurrency), capacity=config.capacity)
            logger.info(
                "throughput: concurrency %d: %.1f s, %.0f examples/min, ratio to bound %.3f, builder CPU %.1f ms/example",
                concurrency, run["wall_s"], run["examples_per_min"], run["ratio_to_bound"], run["cpu_ms_per_example"],
            )  # fmt: skip
            runs.append(run)
    default = next(run for run in runs if run["concurrency"] == config.default_concurrency)
    return {
        "settings": settings,
        "runs": runs,
        "default": default,
        "ratio_to_bound": default["ratio_to_bound"],
        "examples_per_min": default["examples_per_min"],
        "cpu_ms_per_example": default["cpu_ms_per_example"],
        "embedder_load_s": round(embedder_load_s, 2),
        "goal": {"ratio_to_bound_min": config.goal, "met": default["ratio_to_bound"] >= config.goal},
    }
