"""A sweep's recipe: the candidate pool, the grid of curation settings, the steps policy, and the train and eval
recipes every cell runs with. `stage_configs` turns them into one cell's TrainConfig and EvalConfig, parsed by the
stages' own `build_*_config`, so a wrong field fails before any model is loaded."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import CurationConfig
from nanoflux.errors import NanoFluxError
from nanoflux.recipe import (
    ConfigError,
    check_levels,
    check_range,
    check_repo_id,
    fail,
    from_dict,
    is_repo_id,
    load_recipe,
    merge,
    parse_overrides,
)

DESIGNS = ("grid", "one_at_a_time")
SWEEP_BACKENDS = ("local", "jobs")
STEPS_POLICIES = ("fixed_epochs", "fixed_steps")
CELL_FILE = "cell.json"
TEST_FILE = "test.json"  # a selected cell's test scores, written after the selection on dev
SETUP_FILE = "sweep.json"
# Fields of the stage recipes that the sweep sets per cell, or that say where and how a run goes rather than what
# it computes: they are not part of the sweep's identity.
TRAIN_CELL_FIELDS = (
    "dataset_name",
    "revision",
    "hub_dir",
    "benchmark",
    "eval_split",
    "eval_recipe",
    "output_dir",
    "push_to_hub",
    "adapter_hub_dir",
    "private",
    "license",
    "jobs",
)
TRAIN_CELL_SFT_FIELDS = ("logging_steps", "save_strategy", "save_steps")  # of the training recipe's `sft:` block
EVAL_CELL_FIELDS = ("adapter", "adapter_optional", "baseline_adapter", "evaluate_base", "compute", "output_dir")
BASE_SCORES = (  # the base model's scores per partition, evaluated once per evaluation recipe, shared by every cell
    "base.json"
)


class SweepError(NanoFluxError, RuntimeError):
    """The sweep cannot go on (no pool, a different setup in the folder, a failed cell); the message says the fix."""


# --- config ----------------------------------------------------------------------------------------------


@dataclass
class CellSettings:
    """One cell's curation: the quality band, the complexity band, how many rows, and the ranking. With the sweep's
    `require_valid`, exactly a builder curation policy (`curation`): the cell's rows are `curate(pool, policy)`."""

    quality_levels: list[int] = field(default_factory=lambda: [4])
    """Reasoning-quality levels kept (L1..L5 are bands of the 1-5 judge score; L4 = 3.5-4.49)."""
    complexity_levels: list[int] | None = None
    """Judge-rated complexity levels (1-5) kept; null keeps all."""
    size: int = 200
    """Most rows kept: the cell policy's `curation.target_size`."""
    prefer_defender_failed: bool = True
    """Questions the Defender failed first (else build order)."""

    def validate(self, path: str) -> None:
        check_levels(f"{path}.quality_levels", self.quality_levels)
        if self.complexity_levels is not None:
            check_levels(f"{path}.complexity_levels", self.complexity_levels)
        check_range(f"{path}.size", self.size, 1, 100000)
        # One spelling per band, so that [4, 3] and [3, 4] are the same cell.
        self.quality_levels = sorted(set(self.quality_levels))
        self.complexity_levels = sorted(set(self.complexity_levels)) if self.complexity_levels is not None else None

    def curation(self, require_valid: bool) -> CurationConfig:
        """The builder's curation policy for this cell, its size included (`builder.curate` applies it)."""
        return CurationConfig(
            require_valid=require_valid,
            prefer_defender_failed=self.prefer_defender_failed,
            quality_levels=list(self.quality_levels),
            complexity_levels=list(self.complexity_levels) if self.complexity_levels is not None else None,
            target_size=self.size,
        )


def cell_id(settings: CellSettings) -> str:
    """A cell's readable, filesystem-safe name, e.g. `L4-c3-n200-fail-first` or `L3+L4-n50-build-order`: the quality
    levels, the complexity levels (no `c` part: every complexity), the size and the ranking. Settings are canonical
    after `validate` (levels sorted, each once), so the same settings always name the same cell and two cells of a
    sweep never share a name (a sweep's `require_valid` is the same for every cell)."""
    parts = ["+".join(f"L{level}" for level in settings.quality_levels)]
    if settings.complexity_levels is not None:
        parts.append("+".join(f"c{level}" for level in settings.complexity_levels))
    parts += [f"n{settings.size}", "fail-first" if settings.prefer_defender_failed else "build-order"]
    return "-".join(parts)


def hub_name(cell: str) -> str:
    """A cell id as part of a Hub repo name, which allows no `+` (`L3+L4-n50` -> `L3_L4-n50`; ids hold no `_`)."""
    return cell.replace("+", "_")


@dataclass
class GridConfig:
    """The values each swept dimension takes. A band may be written as one level (`4`) or a list (`[3, 4]`)."""

    quality_levels: list[list[int]] = field(default_factory=lambda: [[4]])
    """Quality bands, e.g. [1, 2, 3, 4, 5] (one cell per level) or [[1, 2, 3], [4, 5]] (score 1-3.49 vs 3.5-5)."""
    complexity_levels: list[list[int] | None] = field(default_factory=lambda: [None])
    """Complexity bands, e.g. [[1, 2], 3, [4, 5]]; null keeps every complexity."""
    sizes: list[int] = field(default_factory=lambda: [200])
    """Dataset sizes (each a cell's `curation.target_size`), e.g. [25, 50, 100, 200]."""
    prefer_defender_failed: list[bool] = field(default_factory=lambda: [True])
    """Rankings: [true, false] compares "Defender failures first" with build order."""

    def values(self) -> dict[str, list[Any]]:
        return {
            "quality_levels": self.quality_levels,
            "complexity_levels": self.complexity_levels,
            "size": self.sizes,
            "prefer_defender_failed": self.prefer_defender_failed,
        }

    def validate(self, path: str) -> None:
        for name, values in self.values().items():
            field_name = "sizes" if name == "size" else name
            if not values:
                fail(f"{path}.{field_name}", values, "no values", "list at least one value")
            for i, value in enumerate(values):
                if name in ("quality_levels", "complexity_levels") and value is not None:
                    check_levels(f"{path}.{field_name}[{i}]", value)
                elif name == "size":
                    check_range(f"{path}.sizes[{i}]", value, 1, 100000)
        if None in self.quality_levels:
            fail(
                f"{path}.quality_levels",
                self.quality_levels,
                "a quality band cannot be null",
                "list the levels, e.g. [1, 2, 3, 4, 5]",
            )


@dataclass
class SweepConfig:
    """An ablation sweep: one candidate pool, a grid of curation settings, and the train and eval recipes for each
    cell."""

    name: str = "sweep"
    """Names the sweep's folder, its cells repo and its report's folder `ablations/<name>/` in the dataset repo."""
    pool: str = "outputs/local"
    """The candidate pool: a build's output dir (every judged example, from `pool/`), or with `pool_revision` a
    published dataset repo (`org/name`: only the rows that version kept)."""
    pool_revision: str | None = None
    """Read `pool` as a published dataset repo at this version (`v2`) or commit."""
    pool_hub_dir: str | None = None
    """Read the `pool` repo from this local repository folder instead of the Hub."""
    require_valid: bool = True
    """Every cell keeps only questions the Judge validated (false: the quality band alone decides)."""
    design: str = "grid"
    """`grid`: every combination of the grid's values; `one_at_a_time`: the reference cell, then each dimension's
    values with the other dimensions at the reference (the usual ablation)."""
    grid: GridConfig = field(default_factory=GridConfig)
    reference: CellSettings = field(default_factory=CellSettings)
    """The centre of a `one_at_a_time` design (default: the builder's own curation, L4, size 200)."""
    train_recipe: str = "configs/train/local.yaml"
    """Training recipe applied to every cell (its data, output and push fields are set per cell)."""
    train_overrides: dict = field(default_factory=dict)
    """Fields of the training recipe to change for the sweep, e.g. {max_steps: 20}."""
    steps_policy: str = "fixed_epochs"
    """`fixed_epochs`: every cell trains the training recipe's `num_train_epochs` (its max_steps must be -1), so a cell
    with more rows also takes more optimizer steps and dataset size is confounded with training steps. `fixed_steps`:
    every cell trains the same number of optimizer steps (`steps`), so sizes are compared at equal steps (a smaller
    cell repeats its rows more often)."""
    steps: int | None = None
    """fixed_steps: the optimizer steps of every cell; null: the training recipe's max_steps when set, else the steps
    the largest cell takes in `num_train_epochs` (one device)."""
    eval_recipe: str = "configs/eval/local.yaml"
    """Evaluation recipe for every cell's adapter: each cell is scored on the dev rows of its benchmarks (the cells are
    chosen there), the selected cells also on the test rows. Its `compute` and `baseline_adapter` are not run per
    cell."""
    eval_overrides: dict = field(default_factory=dict)
    """Fields of the evaluation recipe to change for the sweep, e.g. {limit: 200}."""
    backend: str = "local"
    """`local`: train in this process; `jobs`: train each cell as a Hugging Face Job (`trainer/jobs.py`; its flavor,
    timeout and image are the training recipe's `jobs.flavor`, `jobs.timeout`, `jobs.image`: set them in
    train_overrides)."""
    cells_repo: str | None = None
    """Dataset repo holding each cell's rows as a commit tagged `cell-<fingerprint>`, which training reads. Local
    backend: `local/<name>-cells` in `<output_dir>/cells-hub`; jobs: a Hub repo the jobs can read (required)."""
    adapter_repo: str | None = None
    """Jobs backend: each cell's job pushes its adapter to `<adapter_repo>-<cell_id>`, evaluated from there."""
    output_dir: str | None = None
    """Cells, report and setup record; null means outputs/sweeps/<name>."""
    push_to_hub: str | None = None
    """Attach the report to this dataset repo under `ablations/<name>/` (one commit) and summarise it in its card."""
    publish_cell: str | None = None
    """Release this cell's rows as the next version of `push_to_hub` first (same release as `nanoflux publish`)."""
    hub_dir: str | None = None
    """Publish to this local repository folder instead of the Hub."""
    private: bool = False
    """Create the dataset repo as private."""

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            fail(
                "name",
                self.name,
                "not usable in folder, repo and tag names",
                "use up to 64 letters, digits, '.', '_' and '-'",
            )
        if self.output_dir is None:
            self.output_dir = f"outputs/sweeps/{self.name}"
        if not self.pool.strip():
            fail(
                "pool",
                self.pool,
                "empty",
                "name a build's output dir (e.g. outputs/medical) or a dataset repo (org/name)",
            )
        if self.pool_revision is not None and not is_repo_id(self.pool):
            fail(
                "pool",
                self.pool,
                "with pool_revision set, the pool is a published dataset repo",
                "write it as org/name, or remove pool_revision to name a build's output dir",
            )
        if self.pool_hub_dir is not None and self.pool_revision is None:
            fail(
                "pool_hub_dir",
                self.pool_hub_dir,
                "set without pool_revision",
                "set pool_revision to the version to read (e.g. v1), or remove pool_hub_dir",
            )
        if self.design not in DESIGNS:
            fail("design", self.design, "unknown design", f"use one of {', '.join(DESIGNS)}")
        self.grid.validate("grid")
        self.reference.validate("reference")
        if self.steps_policy not in STEPS_POLICIES:
            fail("steps_policy", self.steps_policy, "unknown steps policy", f"use one of {', '.join(STEPS_POLICIES)}")
        if self.steps is not None:
            if self.steps_policy != "fixed_steps":
                fail(
                    "steps",
                    self.steps,
                    "set with steps_policy fixed_epochs",
                    "set steps_policy: fixed_steps, or remove steps",
                )
            check_range("steps", self.steps, 1, 10_000_000)
        if self.backend not in SWEEP_BACKENDS:
            fail("backend", self.backend, "unknown backend", f"use one of {', '.join(SWEEP_BACKENDS)}")
        if self.backend == "jobs":
            if importlib.util.find_spec("trainer.jobs") is None:
                fail(
                    "backend",
                    self.backend,
                    "backend jobs needs trainer/jobs.py (HF Jobs submission), which this install does not have",
                    "use backend: local",
                )
            for name in ("cells_repo", "adapter_repo"):
                if getattr(self, name) is None:
                    fail(
                        name,
                        None,
                        "HF Jobs read the cells' rows from, and push adapters to, the Hub",
                        f"set {name} to a Hub repo id (org/name)",
                    )
        for name in ("cells_repo", "adapter_repo", "push_to_hub"):
            value = getattr(self, name)
            if value is not None:
                check_repo_id(name, value)
        if self.publish_cell is not None and self.push_to_hub is None:
            fail(
                "publish_cell",
                self.publish_cell,
                "publishing needs a dataset repo",
                "set push_to_hub to the repo (org/name)",
            )
        if self.publish_cell is not None and self.pool_revision is not None:
            fail(
                "publish_cell",
                self.publish_cell,
                "a published pool's rows are already released",
                "sweep a build's output dir to publish a cell of it",
            )
        if self.hub_dir is not None and self.push_to_hub is None:
            fail(
                "hub_dir",
                self.hub_dir,
                "set without push_to_hub",
                "set push_to_hub to the dataset repo (org/name), or remove hub_dir",
            )


def build_sweep_config(recipe: str | Path | None, cli_args: list[str] | None = None) -> SweepConfig:
    """Recipe + `--field value` overrides → a validated SweepConfig whose train and eval recipes also resolve (errors
    name the field, the value and the fix, before any model is loaded)."""
    data = merge(load_recipe(recipe), parse_overrides(cli_args or []))
    grid = data.get("grid")
    if isinstance(grid, dict):
        # A band written as one level (`4`) is the band [4].
        for key in ("quality_levels", "complexity_levels"):
            if isinstance(grid.get(key), list):
                grid[key] = [[v] if isinstance(v, int) and not isinstance(v, bool) else v for v in grid[key]]
    config = from_dict(SweepConfig, data)
    config.validate()
    train, _ = stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check")
    stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check", partition="test")
    check_steps_policy(config, train)
    return config


def check_steps_policy(config: SweepConfig, train: Any) -> None:
    """fixed_epochs needs a training recipe that runs its epochs (max_steps -1)."""
    if config.steps_policy == "fixed_epochs" and train.sft["max_steps"] != -1:
        fail(
            "steps_policy",
            config.steps_policy,
            "fixed_epochs trains num_train_epochs in every cell, but the training recipe sets max_steps"
            f" {train.sft['max_steps']}",
            "set steps_policy: fixed_steps (every cell trains that many steps), or set train_overrides.sft.max_steps:"
            " -1",
        )


def _cli_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """`{a: {b: 1}}` → `["--a.b=1"]`: the overrides as the stage's own CLI would take them (JSON is YAML)."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            args += _cli_args(value, f"{prefix}{key}.")
        else:
            args.append(f"--{prefix}{key}={json.dumps(value)}")
    return args


def stage_configs(
    config: SweepConfig, cell_dir: Path, *, tag: str, partition: str = "dev", max_steps: int | None = None
) -> tuple[Any, Any]:
    """(TrainConfig, EvalConfig) for a cell: the sweep's recipes and overrides, then the cell's data, adapter, steps
    (`max_steps`, fixed_steps), evaluation partition (dev: choosing; test: the selected cells) and output folders,
    parsed by the stages' own `build_*_config`."""
    from trainer.evaluation.config import build_eval_config
    from trainer.train_config import build_train_config

    jobs = config.backend == "jobs"
    cell_train = {
        "jobs": {"backend": config.backend},
        "dataset_name": config.cells_repo or f"local/{config.name}-cells",
        "revision": tag,
        "hub_dir": None if jobs else str(Path(config.output_dir) / "cells-hub"),
        "benchmark": None,
        "eval_split": None,
        "eval_recipe": None,  # the sweep checks every cell's rows against the evaluation's test and dev rows itself
        "output_dir": str(cell_dir / "adapter"),
        "push_to_hub": f"{config.adapter_repo}-{hub_name(cell_dir.name)}" if jobs else None,
        "adapter_hub_dir": None,
        "private": True,
        **({"sft": {"max_steps": max_steps}} if max_steps is not None else {}),
    }
    cell_eval = {
        "adapter": cell_train["push_to_hub"] or cell_train["output_dir"],  # a job's adapter is evaluated from the Hub
        "adapter_optional": False,
        "baseline_adapter": (
            None
        ),  # a fixed reference, not a property of the cell: evaluate it once with `nanoflux eval`
        "evaluate_base": False,  # the same for every cell: scored once (see base_scores)
        "compute": None,  # the cell's training compute comes from its training summary
        "partition": partition,
        "output_dir": str(cell_dir / ("eval" if partition == "dev" else "test-eval")),
    }
    try:
        train = build_train_config(config.train_recipe, _cli_args(config.train_overrides) + _cli_args(cell_train))
    except ConfigError as err:
        raise ConfigError(f"train_recipe {config.train_recipe} with train_overrides: {err}") from None
    try:
        evaluation = build_eval_config(config.eval_recipe, _cli_args(config.eval_overrides) + _cli_args(cell_eval))
    except ConfigError as err:
        raise ConfigError(f"eval_recipe {config.eval_recipe} with eval_overrides: {err}") from None
    return train, evaluation


def train_identity(train: Any) -> dict[str, Any]:
    """What a cell's training computes, from its TrainConfig: the recipe without the fields the sweep sets per cell or
    that say where and how a run goes (`TRAIN_CELL_FIELDS`, `TRAIN_CELL_SFT_FIELDS`)."""
    from nanoflux.recipe import to_dict

    identity = {k: v for k, v in to_dict(train).items() if k not in TRAIN_CELL_FIELDS}
    identity["sft"] = {k: v for k, v in identity["sft"].items() if k not in TRAIN_CELL_SFT_FIELDS}
    return identity
