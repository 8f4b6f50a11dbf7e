"""Build throughput against the endpoint's bound: the real builder (`builder.build.main`) against a simulated
continuous-batching server (`benchmarks/batching_server.py`), for the medical and the math recipe, at 8, 64 and 256
slots, with the builder's DEFAULT settings: no `max_concurrency` set, so the adaptive limit (`nanoflux/capacity.py`)
must find the server's capacity by itself.

    bound_s = the shortest time in which the server could have done the work it was given (every step full)
    ratio_to_bound = bound_s / wall_s           (1.0: the server never ran a step below full while work was waiting)

The math recipe runs the sandbox on every example: the Judge's blind solve carries a Python program (the loopback
workload writes one that computes the reference answer), run under bubblewrap (or the kernel's layers) before the
verdict. Every role points at the loopback server under one model name, so the three roles share one client and one
adaptive limit. The journal (resume) and the judge statuses are on, as in every build. Each build is measured end to
end (`build.main`: prompts, rounds, novelty, sandbox, curation, parquet output; the embedder is loaded beforehand,
once per process, and a small warm-up build runs first) for wall time and for the builder's process CPU time.

The workload per capacity is `rounds` rounds of `attacks_per_slot x slots` attacks (at least `min_attacks`): a round
ends at a barrier (the next round's Attacker gets the judged results as feedback), and its tail runs below full
batch, so a round must hold several batches' worth of work for the bound to be reachable at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.batching_server import ServerModel
from nanoflux.recipe import check_range, fail

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [str(ROOT / "configs" / "medical.yaml"), str(ROOT / "configs" / "math.yaml")]
MODEL = "loopback/batching"  # one model name for all roles: they share one client and its adaptive limit


@dataclass
class ThroughputConfig:
    """The build workload, the simulated server, and the capacities to measure."""

    recipes: list[str] = field(default_factory=lambda: list(RECIPES))
    """Build recipes whose domain, prompts, capabilities and role settings are used (roles re-pointed)."""
    slots: list[int] = field(default_factory=lambda: [8, 64, 256])
    """Server capacities (sequences decoded together) to measure at."""
    rounds: int = 1
    attacks_per_slot: float = 4.0
    """Attacks per round per slot of the server."""
    min_attacks: int = 64
    """Attacks per round at least (a small server still gets a workload that takes a while)."""
    speed: float = 2.0
    """The simulated server's speed-up (its times divided by it); the builder's CPU work per request stays real."""
    server: ServerModel = field(default_factory=ServerModel)
    """The simulated server's costs; `slots` and `speed` are replaced by the fields above."""
    goal: float = 0.9
    """ratio_to_bound the default settings must reach at every capacity."""

    def validate(self, path: str) -> None:
        if not self.recipes:
            fail(f"{path}.recipes", self.recipes, "needs at least one recipe", "e.g. [configs/medical.yaml]")
        for recipe in self.recipes:
            if not Path(recipe).is_file():
                fail(
                    f"{path}.recipes",
                    recipe,
                    "file not found",
                    "point it at a build recipe, e.g. configs/medical.yaml",
                )
        if not self.slots or any(not 1 <= s <= 4096 for s in self.slots):
            fail(f"{path}.slots", self.slots, "needs capacities in 1..4096", "e.g. [8, 64, 256]")
        check_range(f"{path}.rounds", self.rounds, 1, 100)
        check_range(f"{path}.attacks_per_slot", self.attacks_per_slot, 0.0, 1000.0, low_open=True)
        check_range(f"{path}.min_attacks", self.min_attacks, 1, 100_000)
        check_range(f"{path}.speed", self.speed, 0.0, 10_000.0, low_open=True)
        self.server.validate(f"{path}.server")
        check_range(f"{path}.goal", self.goal, 0.0, 1.0, low_open=True)

    def attacks_per_round(self, slots: int) -> int:
        return max(self.min_attacks, round(self.attacks_per_slot * slots))

    def server_at(self, slots: int) -> ServerModel:
        return dataclasses.replace(self.server, slots=slots, speed=self.speed)


def display_path(path: str | Path) -> str:
    """`path` relative to the repository when it is inside it (results files name no home folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def build_config(
    recipe: str, url: str, output_dir: Path, *, rounds: int, attacks_per_round: int, max_concurrency: int | None = None
) -> Any:
    """`recipe` with every role on the loopback server; the builder's default concurrency unless `max_concurrency`."""
    from builder.config import BuildConfig
    from nanoflux.recipe import from_dict, load_recipe, merge

    role: dict[str, Any] = {"base_url": url, "model": MODEL, "timeout": 600.0}
    if max_concurrency is not None:
        role["max_concurrency"] = max_concurrency
    overrides = {
        "rounds": rounds,
        "attacks_per_round": attacks_per_round,
        "player_a": role,
        "player_b": role,
        "judge": role,
        "allow_shared_judge": True,  # a throughput workload, not a dataset: one model keeps one shared client
        # Decontamination runs as in every build, against the offline benchmark fixtures (no Hub here).
        "decontamination": {"eval_recipe": str(ROOT / "configs" / "eval" / "local.yaml"), "ngram": 13},
        "output_dir": str(output_dir),
    }
    config = from_dict(BuildConfig, merge(load_recipe(recipe), overrides))
    config.validate()
    return config


def measure_build(endpoint: Any, config: Any) -> dict[str, Any]:
    """Run one fresh build against `endpoint` and compare its wall time with the server's bound for its work."""
    from builder import build

    endpoint.reset()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    summary = build.main(config, fresh=True)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    stats = endpoint.stats()
    examples = sum(summary["judge_status"].values())  # examples that went through every role
    limit = next((e["concurrency"] for e in summary.get("endpoints", []) if e.get("concurrency")), None) or {}
    return {
        "domain": config.domain,
        "slots": endpoint.model.slots,
        "max_concurrency": config.player_a.max_concurrency,
        "examples": examples,
        "calls": stats.requests,
        "calls_by_role": stats.requests_by_role,
        "rejected_429": stats.rejected,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "wall_s": round(wall, 3),
        "examples_per_min": round(60 * examples / wall, 1),
        "completion_tokens_per_s": round(stats.completion_tokens / wall, 1),
        "bound_s": round(stats.bound_s, 3),
        "ratio_to_bound": round(stats.bound_s / wall, 4),
        "server_busy_s": round(stats.busy_s, 3),
        "batch_fill": round(stats.bound_s / stats.busy_s, 4) if stats.busy_s else None,
        "server_busy_share": round(stats.busy_s / wall, 4),
        "server_max_running": stats.max_running,
        "server_max_in_system": stats.max_in_system,
        "server_late_s": round(stats.late_s, 3),
        "adaptive_limit": {
            k: limit.get(k)
            for k in (
                "peak_limit",
                "peak_in_flight",
                "increases",
                "decreases",
                "overloads",
                "latency_cuts",
                "timeouts",
            )
        },
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_example": round(1000 * cpu / max(examples, 1), 2),
        "cpu_share_of_wall": round(cpu / wall, 4),
        "judge_status": summary["judge_status"],
        "calls_replayed": summary["calls_replayed"],
    }


def warm_up(recipes: list[str], server: ServerModel, work_dir: Path) -> float:
    """Load the embedder and run one small build per recipe (imports, first-use set-up, the sandbox's first run), so
    no measured build pays for them; returns the embedder's load time."""
    from benchmarks.loopback import LoopbackEndpoint
    from builder.novelty import load_embedder

    started = time.perf_counter()
    load_embedder(
        build_config(recipes[0], "http://127.0.0.1:1", work_dir, rounds=1, attacks_per_round=1).novelty.model
    )
    load_s = time.perf_counter() - started
    for recipe in recipes:
        domain = build_config(recipe, "http://127.0.0.1:1", work_dir, rounds=1, attacks_per_round=1).domain
        with LoopbackEndpoint(domain, server=dataclasses.replace(server, slots=8)) as endpoint:
            measure_build(
                endpoint,
                build_config(recipe, endpoint.url, work_dir / f"warmup-{domain}", rounds=1, attacks_per_round=8),
            )
    return load_s


def main(config: ThroughputConfig, work_dir: Path) -> dict[str, Any]:
    """Every recipe at every capacity, default settings; returns settings, the runs and ratio_to_bound per capacity."""
    from benchmarks.loopback import DEFAULT_LENGTHS, LoopbackEndpoint
    from localhub.testing import loopback_reachable

    settings = {
        "recipes": [display_path(r) for r in config.recipes],
        "slots": config.slots,
        "rounds": config.rounds,
        "attacks_per_round": {str(s): config.attacks_per_round(s) for s in config.slots},
        "calls_per_example": 4,
        "server": {
            **dataclasses.asdict(config.server_at(0)),
            "slots": "per run",
            "waiting_limit": {str(s): config.server_at(s).waiting_limit for s in config.slots},
        },
        "server_max_completion_tokens_per_s": {
            str(s): round(config.server_at(s).max_completion_tokens_per_s(), 1) for s in config.slots
        },
        "completion_tokens_cycle": {role: list(v) for role, v in DEFAULT_LENGTHS.items()},
        "builder_settings": "defaults (max_concurrency unset: the adaptive limit, ceiling 256)",
        "journal": "on (every call and example state fsynced)",
        "output_dir": display_path(work_dir),
    }
    runs = []
    with loopback_reachable():
        embedder_load_s = warm_up(config.recipes, config.server_at(8), work_dir)
        for recipe in config.recipes:
            domain = build_config(recipe, "http://127.0.0.1:1", work_dir, rounds=1, attacks_per_round=1).domain
            for slots in config.slots:
                with LoopbackEndpoint(domain, server=config.server_at(slots)) as endpoint:
                    build = build_config(
                        recipe,
                        endpoint.url,
                        work_dir / f"{domain}-s{slots}",
                        rounds=config.rounds,
                        attacks_per_round=config.attacks_per_round(slots),
                    )
                    run = {"recipe": display_path(recipe), **measure_build(endpoint, build)}
                logger.info(
                    "throughput: %s at %d slots: %.1f s, ratio to bound %.3f (batch fill %.3f, server busy %.3f), peak"
                    " limit %s, builder CPU %.1f ms/example",
                    domain,
                    slots,
                    run["wall_s"],
                    run["ratio_to_bound"],
                    run["batch_fill"],
                    run["server_busy_share"],
                    run["adaptive_limit"]["peak_limit"],
                    run["cpu_ms_per_example"],
                )
                runs.append(run)
    ratios = {run["domain"]: {} for run in runs}
    for run in runs:
        ratios[run["domain"]][str(run["slots"])] = run["ratio_to_bound"]
    lowest = min(run["ratio_to_bound"] for run in runs)
    return {
        "settings": settings,
        "runs": runs,
        "ratio_to_bound": ratios,
        "embedder_load_s": round(embedder_load_s, 2),
        "goal": {"ratio_to_bound_min": config.goal, "lowest": lowest, "met": lowest >= config.goal},
    }
