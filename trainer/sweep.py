"""Ablation sweeps: curate subsets of one candidate pool over a grid of curation settings, train and evaluate a LoRA
adapter on each, and report the scores against every swept dimension (`nanoflux sweep`).

Usage:
    nanoflux sweep --config configs/sweeps/local.yaml        # embedded default: a 2x2 grid, minutes on CPU
    nanoflux sweep --config configs/sweeps/medical.yaml      # the paper's ablations for one domain (GPU, Hub)
    nanoflux sweep --config configs/sweeps/local.yaml --publish_cell CELL_ID --push_to_hub org/name [--hub_dir DIR]

`main(config)` reads top to bottom: read the pool (a build's `pool/`, or a published version); check that the sweep
folder holds this setup (pool and training recipe) or nothing; list the cells (the full grid, or one dimension at
a time around a reference cell) and curate each one's rows with the builder's own `curate` (no new generation). Then,
for each cell not finished yet: write its rows as a build-shaped folder (so `nanoflux publish` can release it), put
them in the cells repo as a commit tagged by their fingerprint, train an adapter on that tag (`trainer.train`, or an
HF Job), evaluate it (`trainer.evaluate`), and write `cell.json` last, atomically: a killed sweep redoes only the
cells without one. Cells whose rows equal a finished cell's reuse its results instead of training again; a changed
evaluation recipe re-evaluates the finished cells' adapters without training them again.
Finally the report: `results.parquet`, `results.md` and one plot per swept dimension, best cell per benchmark
marked. With `push_to_hub`, the report goes to the dataset repo under `ablations/<name>/` in one commit and is
summarised in its card; with `publish_cell`, that cell's rows are first released as the repo's next version by the
same code as `nanoflux publish`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from builder.config import ConfigError, CurationConfig, changed_fields, check_levels, check_range, check_repo_id, fail, from_dict, is_repo_id, load_recipe, merge, parse_overrides, to_dict
from builder.curation import curate
from builder.dataset import write_rows
from builder.journal import write_atomic

logger = logging.getLogger(__name__)

DESIGNS = ("grid", "one_at_a_time")
SWEEP_BACKENDS = ("local", "jobs")
DIMENSIONS = ("quality_levels", "complexity_levels", "size", "prefer_defender_failed")
DIMENSION_TITLES = {
    "quality_levels": "reasoning-quality band",
    "complexity_levels": "judge-rated complexity",
    "size": "dataset size (rows requested)",
    "prefer_defender_failed": "ranking",
}
DATA_FILE = "train-00000-of-00001.parquet"
CELL_FILE = "cell.json"
SETUP_FILE = "sweep.json"
REPORT_FILES = ("results.parquet", "results.md")
# Fields of the stage recipes that the sweep sets per cell, or that say where and how a run goes rather than what
# it computes: they are not part of the sweep's identity.
TRAIN_CELL_FIELDS = (
    "dataset_name", "revision", "hub_dir", "benchmark", "eval_split", "output_dir", "push_to_hub", "adapter_hub_dir", "private",
    "license", "logging_steps", "save_steps", "backend", "flavor", "job_timeout", "job_image", "job_package", "job_namespace",
)  # fmt: skip
EVAL_CELL_FIELDS = ("adapter", "adapter_optional", "baseline_adapter", "evaluate_base", "compute", "output_dir")
BASE_SCORES = "base.json"  # the base model's scores, evaluated once per evaluation recipe and shared by every cell


class SweepError(RuntimeError):
    """The sweep cannot go on (no pool, a different setup in the folder, a failed cell); the message says the fix."""


# --- config ----------------------------------------------------------------------------------------------


@dataclass
class CellSettings:
    """One cell's curation: the quality band, the complexity band, how many rows, and the ranking."""

    quality_levels: list[int] = field(default_factory=lambda: [4])
    """Reasoning-quality levels kept (L1..L5 are bands of the 1-5 judge score; L4 = 3.5-4.49)."""
    complexity_levels: list[int] | None = None
    """Judge-rated complexity levels (1-5) kept; null keeps all."""
    size: int = 200
    """Most rows kept (the builder's `target_size`)."""
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
        """The builder's curation policy for this cell (`builder.curation.curate` applies it)."""
        return CurationConfig(
            require_valid=require_valid,
            prefer_defender_failed=self.prefer_defender_failed,
            quality_levels=list(self.quality_levels),
            complexity_levels=list(self.complexity_levels) if self.complexity_levels is not None else None,
        )


@dataclass
class GridConfig:
    """The values each swept dimension takes. A band may be written as one level (`4`) or a list (`[3, 4]`)."""

    quality_levels: list[list[int]] = field(default_factory=lambda: [[4]])
    """Quality bands, e.g. [1, 2, 3, 4, 5] (one cell per level) or [[1, 2, 3], [4, 5]] (score 1-3.49 vs 3.5-5)."""
    complexity_levels: list[list[int] | None] = field(default_factory=lambda: [None])
    """Complexity bands, e.g. [[1, 2], 3, [4, 5]]; null keeps every complexity."""
    sizes: list[int] = field(default_factory=lambda: [200])
    """Dataset sizes, e.g. [25, 50, 100, 200]."""
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
            fail(f"{path}.quality_levels", self.quality_levels, "a quality band cannot be null", "list the levels, e.g. [1, 2, 3, 4, 5]")


@dataclass
class SweepConfig:
    """An ablation sweep: one candidate pool, a grid of curation settings, and the train and eval recipes for each cell."""

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
    eval_recipe: str = "configs/eval/local.yaml"
    """Evaluation recipe applied to every cell's adapter (its `compute` and `baseline_adapter` are not run per cell)."""
    eval_overrides: dict = field(default_factory=dict)
    """Fields of the evaluation recipe to change for the sweep, e.g. {limit: 200}."""
    backend: str = "local"
    """`local`: train in this process; `jobs`: train each cell as a Hugging Face Job (`trainer/jobs.py`; its flavor,
    timeout and image are the training recipe's `flavor`, `job_timeout`, `job_image`, set them in train_overrides)."""
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
            fail("name", self.name, "not usable in folder, repo and tag names", "use up to 64 letters, digits, '.', '_' and '-'")
        if self.output_dir is None:
            self.output_dir = f"outputs/sweeps/{self.name}"
        if not self.pool.strip():
            fail("pool", self.pool, "empty", "name a build's output dir (e.g. outputs/medical) or a dataset repo (org/name)")
        if self.pool_revision is not None and not is_repo_id(self.pool):
            fail("pool", self.pool, "with pool_revision set, the pool is a published dataset repo", "write it as org/name, or remove pool_revision to name a build's output dir")
        if self.pool_hub_dir is not None and self.pool_revision is None:
            fail("pool_hub_dir", self.pool_hub_dir, "set without pool_revision", "set pool_revision to the version to read (e.g. v1), or remove pool_hub_dir")
        if self.design not in DESIGNS:
            fail("design", self.design, "unknown design", f"use one of {', '.join(DESIGNS)}")
        self.grid.validate("grid")
        self.reference.validate("reference")
        if self.backend not in SWEEP_BACKENDS:
            fail("backend", self.backend, "unknown backend", f"use one of {', '.join(SWEEP_BACKENDS)}")
        if self.backend == "jobs":
            if importlib.util.find_spec("trainer.jobs") is None:
                fail("backend", self.backend, "backend jobs needs trainer/jobs.py (HF Jobs submission), which this install does not have", "use backend: local")
            for name in ("cells_repo", "adapter_repo"):
                if getattr(self, name) is None:
                    fail(name, None, "HF Jobs read the cells' rows from, and push adapters to, the Hub", f"set {name} to a Hub repo id (org/name)")
        for name in ("cells_repo", "adapter_repo", "push_to_hub"):
            value = getattr(self, name)
            if value is not None:
                check_repo_id(name, value)
        if self.publish_cell is not None and self.push_to_hub is None:
            fail("publish_cell", self.publish_cell, "publishing needs a dataset repo", "set push_to_hub to the repo (org/name)")
        if self.publish_cell is not None and self.pool_revision is not None:
            fail("publish_cell", self.publish_cell, "a published pool's rows are already released", "sweep a build's output dir to publish a cell of it")
        if self.hub_dir is not None and self.push_to_hub is None:
            fail("hub_dir", self.hub_dir, "set without push_to_hub", "set push_to_hub to the dataset repo (org/name), or remove hub_dir")


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
    stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check")
    return config


def _cli_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """`{a: {b: 1}}` → `["--a.b=1"]`: the overrides as the stage's own CLI would take them (JSON is YAML)."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            args += _cli_args(value, f"{prefix}{key}.")
        else:
            args.append(f"--{prefix}{key}={json.dumps(value)}")
    return args


def stage_configs(config: SweepConfig, cell_dir: Path, *, tag: str) -> tuple[Any, Any]:
    """(TrainConfig, EvalConfig) for a cell: the sweep's recipes and overrides, then the cell's data, adapter and
    output folders, parsed by the stages' own `build_*_config`."""
    from trainer.evaluate import build_eval_config
    from trainer.train import build_train_config

    jobs = config.backend == "jobs"
    cell_train = {
        "backend": config.backend,
        "dataset_name": config.cells_repo or f"local/{config.name}-cells",
        "revision": tag,
        "hub_dir": None if jobs else str(Path(config.output_dir) / "cells-hub"),
        "benchmark": None,
        "eval_split": None,
        "output_dir": str(cell_dir / "adapter"),
        "push_to_hub": f"{config.adapter_repo}-{cell_dir.name}" if jobs else None,
        "adapter_hub_dir": None,
        "private": True,
    }
    cell_eval = {
        "adapter": cell_train["push_to_hub"] or cell_train["output_dir"],  # a job's adapter is evaluated from the Hub
        "adapter_optional": False,
        "baseline_adapter": None,  # a fixed reference, not a property of the cell: evaluate it once with `nanoflux eval`
        "evaluate_base": False,  # the same for every cell: scored once (see base_scores)
        "compute": None,  # the cell's training compute comes from its training summary
        "output_dir": str(cell_dir / "eval"),
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


# --- pool and cells --------------------------------------------------------------------------------------


@dataclass
class Pool:
    """The candidate rows every cell curates from, and where they came from."""

    rows: list[dict[str, Any]]
    source: str
    fingerprint: str
    """sha256 of the build's pool file, or the published version's commit."""
    build_dir: Path | None = None
    """A build's output dir: its config.yaml and summary.json make each cell a publishable build."""


def read_pool(config: SweepConfig) -> Pool:
    """The pool's rows: a build's `pool/pool.parquet`, or the data of a published version at its commit."""
    import pyarrow.parquet as pq

    local = Path(config.pool)
    if config.pool_revision is None:
        path = local / "pool" / "pool.parquet"
        if not path.is_file():
            raise SweepError(f"pool: {local} holds no pool/pool.parquet, so it is not a finished build. Fix: run `nanoflux build` to the end first, or name another output dir")
        return Pool(pq.read_table(path).to_pylist(), str(local), hashlib.sha256(path.read_bytes()).hexdigest(), local)

    from huggingface_hub.errors import HfHubHTTPError

    from builder.publish import DATA_PATH, open_target

    repo, revision = config.pool, config.pool_revision
    try:
        with open_target(config.pool_hub_dir) as api:
            commit = api.dataset_info(repo, revision=revision).sha
            path = api.hf_hub_download(repo, DATA_PATH, repo_type="dataset", revision=commit)
    except HfHubHTTPError as err:
        raise SweepError(f"pool: cannot read {repo}@{revision} ({str(err).splitlines()[0]}). Fix: check the repo id, pool_revision and HF_TOKEN (or pool_hub_dir)") from None
    return Pool(pq.read_table(path).to_pylist(), f"{repo}@{revision}", commit)


@dataclass
class Cell:
    id: str
    settings: CellSettings
    rows: list[dict[str, Any]]
    fingerprint: str
    """sha256 of the curated rows' ids, in order."""


def cell_label(settings: CellSettings) -> str:
    return ", ".join(f"{_short(dim)} {display(dim, getattr(settings, dim))}" for dim in DIMENSIONS)


def cell_id(settings: CellSettings, require_valid: bool) -> str:
    """A readable name plus a stable hash of the settings: the same settings always name the same cell."""
    key = json.dumps({**dataclasses.asdict(settings), "require_valid": require_valid}, sort_keys=True)
    quality = "".join(map(str, settings.quality_levels))
    complexity = "".join(map(str, settings.complexity_levels)) if settings.complexity_levels is not None else "all"
    ranking = "failfirst" if settings.prefer_defender_failed else "buildorder"
    return f"q{quality}-c{complexity}-n{settings.size}-{ranking}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def dataset_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows' ids in order (`version/id` for published rows, whose ids repeat across versions)."""
    ids = [f"{row['version']}/{row['id']}" if row.get("version") else row["id"] for row in rows]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def grid_settings(config: SweepConfig) -> list[CellSettings]:
    """The cells' settings in a stable order, each once."""
    values = config.grid.values()
    if config.design == "grid":
        combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    else:
        reference = dataclasses.asdict(config.reference)
        combos = [reference] + [{**reference, dim: value} for dim, options in values.items() for value in options]
    settings, seen = [], set()
    for combo in combos:
        cell = CellSettings(**combo)
        cell.validate("grid")
        if (key := cell_id(cell, config.require_valid)) not in seen:
            seen.add(key)
            settings.append(cell)
    return settings


def curate_cell(pool_rows: list[dict[str, Any]], settings: CellSettings, require_valid: bool) -> Cell:
    """A cell's rows: the builder's `curate` with the cell's policy and size (same pool, same rows, same order)."""
    rows = curate(pool_rows, settings.curation(require_valid), settings.size)
    return Cell(cell_id(settings, require_valid), settings, rows, dataset_fingerprint(rows))


# --- the sweep folder ------------------------------------------------------------------------------------


def setup_record(pool: Pool, train: Any, evaluation: Any) -> dict[str, Any]:
    """What decides every cell's result besides its own settings: the pool, the train and the eval recipes."""
    train_setup = {k: v for k, v in to_dict(train).items() if k not in TRAIN_CELL_FIELDS}
    eval_setup = {k: v for k, v in to_dict(evaluation).items() if k not in EVAL_CELL_FIELDS}
    return {"pool": {"source": pool.source, "fingerprint": pool.fingerprint}, "train": train_setup, "eval": eval_setup}


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def prepare_output_dir(config: SweepConfig, setup: dict[str, Any], fresh: bool) -> Path:
    """Create or reopen the sweep folder; refuse to mix cells of another pool or training recipe unless `fresh` (a
    changed evaluation recipe only re-evaluates the finished cells)."""
    output_dir = Path(config.output_dir)
    record = output_dir / SETUP_FILE
    # The pool by content (its path may be written another way, or move), and the training recipe.
    guarded = {"pool": setup["pool"]["fingerprint"], "train": setup["train"]}
    fingerprint = _fingerprint(guarded)
    if fresh:
        for name in ("cells", "cells-hub"):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for path in [output_dir / SETUP_FILE, *(output_dir / name for name in REPORT_FILES), *output_dir.glob("*.png")]:
            path.unlink(missing_ok=True)
    elif record.exists():
        previous = json.loads(record.read_text())
        if previous["fingerprint"] != fingerprint:
            changed = ", ".join(changed_fields(previous["setup"], guarded)) or "recipe fields added or removed by another NanoFlux version"
            raise SweepError(
                f"output_dir {output_dir} holds a sweep of a different setup (changed: {changed}). "
                "Fix: re-run with --fresh to start over, or pass another --output_dir"
            )
        logger.info("Resuming the sweep in %s", output_dir)
    (output_dir / "cells").mkdir(parents=True, exist_ok=True)
    write_atomic(record, (json.dumps({"fingerprint": fingerprint, "setup": guarded, "eval": setup["eval"]}, indent=2, sort_keys=True) + "\n").encode())
    return output_dir


def read_record(cell_dir: Path, cell: Cell) -> dict[str, Any] | None:
    """The finished cell's record, or None when the cell has not finished."""
    path = cell_dir / CELL_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["dataset"]["fingerprint"] != cell.fingerprint:
        logger.warning("Cell %s was finished on other rows: running it again", cell.id)
        return None
    return record


def write_build_files(pool: Pool, cell: Cell, cell_dir: Path, config: SweepConfig) -> None:
    """config.yaml, summary.json and run.json of the build the cell's rows would have come out of (the pool's build
    with the cell's curation): the cell folder is then a finished build that `nanoflux publish` releases."""
    from builder.build import recipe_fingerprint
    from builder.config import BuildConfig

    build_config = yaml.safe_load((pool.build_dir / "config.yaml").read_text())
    build_config.update(curation=dataclasses.asdict(cell.settings.curation(config.require_valid)), target_size=cell.settings.size, output_dir=str(cell_dir))
    summary = json.loads((pool.build_dir / "summary.json").read_text())
    summary.update(kept=len(cell.rows), target_size=cell.settings.size)
    for stats in summary["per_round"]:
        stats["kept"] = sum(row["round"] == stats["round"] for row in cell.rows)
    fingerprint, recipe = recipe_fingerprint(from_dict(BuildConfig, build_config), summary["prompt_hashes"])
    curated_by = {"sweep": config.name, "cell": cell.id, "pool": pool.source, "pool_fingerprint": pool.fingerprint}
    (cell_dir / "config.yaml").write_text(yaml.safe_dump(build_config, sort_keys=False))
    (cell_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (cell_dir / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "recipe": recipe, "curated_by": curated_by}, indent=2, sort_keys=True))


def put_cell_data(config: SweepConfig, cell: Cell, cell_dir: Path) -> tuple[str, str]:
    """The cell's rows as a commit of the cells repo tagged `cell-<fingerprint>` (reused when it exists): training
    reads them through the same pinned-version path as a published dataset. Returns (tag, commit)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    from builder.publish import DATA_PATH, open_target

    repo = config.cells_repo or f"local/{config.name}-cells"
    tag = f"cell-{cell.fingerprint[:16]}"
    hub_dir = None if config.backend == "jobs" else str(Path(config.output_dir) / "cells-hub")
    try:
        with open_target(hub_dir) as api:
            api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
            tags = {t.name: t.target_commit for t in api.list_repo_refs(repo, repo_type="dataset").tags}
            if tag in tags:
                return tag, tags[tag]
            data = (cell_dir / "data" / DATA_FILE).read_bytes()
            commit = api.create_commit(
                repo,
                repo_type="dataset",
                operations=[CommitOperationAdd(DATA_PATH, io.BytesIO(data))],
                commit_message=f"Sweep {config.name}: cell {cell.id} ({len(cell.rows)} rows)",
            )
            api.create_tag(repo, tag=tag, revision=commit.oid, repo_type="dataset")
    except HfHubHTTPError as err:
        raise SweepError(f"cells_repo: cannot write the rows of cell {cell.id} to {repo} ({str(err).splitlines()[0]}). Fix: check HF_TOKEN and cells_repo") from None
    return tag, commit.oid


# --- one cell --------------------------------------------------------------------------------------------


def train_cell(config: SweepConfig, train_config: Any) -> dict[str, Any]:
    """Train the cell's adapter here, or as a Hugging Face Job that pushes it to `push_to_hub`; returns the training
    summary (a job's is read back from the adapter repo)."""
    if config.backend == "local":
        from trainer.train import main as train_main

        return train_main(train_config)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from trainer.jobs import JobsError
    from trainer.jobs import main as run_job

    try:
        run_job(train_config)  # submits, follows the logs, and returns once the job has completed
        path = hf_hub_download(train_config.push_to_hub, "training_summary.json", repo_type="model")
    except (JobsError, HfHubHTTPError) as err:
        raise SweepError(f"training job for {train_config.push_to_hub}: {str(err).splitlines()[0]}. Fix: see `nanoflux jobs logs <job_id>`, then run the sweep again") from None
    return json.loads(Path(path).read_text())


def training_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The training compute of a cell, from its training summary."""
    return {
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "train_tokens": summary["train_tokens"],
        "wall_time_s": summary["wall_time_s"],
        "device": summary["device"],
        "gpu": summary["gpu"],
        "loss_first": summary["loss"]["first"],
        "loss_last": summary["loss"]["last"],
        "dataset": summary["dataset"]["pinned"],
    }


def scores_record(results: dict[str, Any], base: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per benchmark: the adapter's accuracy with its CI, and the base model's as the reference."""
    scores = {}
    for bench in results["benchmarks"]:
        adapter = results["results"][bench["name"]]["adapter"]
        scores[bench["name"]] = {
            "title": bench["title"],
            **{k: adapter[k] for k in ("n", "correct", "accuracy", "ci_low", "ci_high", "unparseable")},
            "base": base[bench["name"]],
        }
    return scores


def base_scores(config: SweepConfig, eval_config: Any) -> dict[str, dict[str, float]]:
    """The base model's accuracy and CI per benchmark: evaluated once per evaluation recipe (kept in base.json, so a
    resumed sweep does not evaluate it again), not once per cell."""
    from trainer.evaluate import EvalError
    from trainer.evaluate import main as eval_main

    output_dir = Path(config.output_dir)
    fingerprint = eval_fingerprint(eval_config)
    path = output_dir / BASE_SCORES
    if path.is_file() and (saved := json.loads(path.read_text()))["eval_fingerprint"] == fingerprint:
        return saved["scores"]
    base_config = copy.deepcopy(eval_config)
    base_config.adapter, base_config.evaluate_base, base_config.output_dir = None, True, str(output_dir / "base-eval")
    logger.info("Evaluating the base model once, for every cell")
    try:
        results = eval_main(base_config)
    except EvalError as err:
        raise SweepError(f"base model: {err}") from None
    scores = {name: {k: r["base"][k] for k in ("accuracy", "ci_low", "ci_high")} for name, r in results["results"].items()}
    write_atomic(path, (json.dumps({"eval_fingerprint": fingerprint, "scores": scores}, indent=2) + "\n").encode())
    return scores


def evaluate_cell(config: SweepConfig, cell_dir: Path, tag: str) -> dict[str, Any]:
    """The cell's adapter on the sweep's benchmarks (the base model's scores shared): scores and the eval fingerprint."""
    from trainer.evaluate import EvalError
    from trainer.evaluate import main as eval_main

    _, eval_config = stage_configs(config, cell_dir, tag=tag)
    base = base_scores(config, eval_config)
    (cell_dir / "eval.yaml").write_text(yaml.safe_dump(to_dict(eval_config), sort_keys=False))
    try:
        results = eval_main(eval_config)
    except EvalError as err:
        raise SweepError(f"cell {cell_dir.name}: {err}") from None
    return {"scores": scores_record(results, base), "eval_fingerprint": eval_fingerprint(eval_config)}


def eval_fingerprint(eval_config: Any) -> str:
    return _fingerprint({k: v for k, v in to_dict(eval_config).items() if k not in EVAL_CELL_FIELDS})


def run_cell(config: SweepConfig, pool: Pool, cell: Cell, cell_dir: Path, same_data: dict[str, Any] | None) -> dict[str, Any]:
    """Curated rows → cell folder → cells repo → adapter → evaluation → `cell.json` (written last)."""
    from trainer.train import TrainError

    # What a killed run left behind is overwritten; its training checkpoints (save_steps) are resumed from.
    shutil.rmtree(cell_dir / "eval", ignore_errors=True)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_rows(cell.rows, cell_dir / "data" / DATA_FILE, cell_dir / "curated.jsonl")
    if pool.build_dir is not None:
        write_build_files(pool, cell, cell_dir, config)
    record: dict[str, Any] = {
        "cell_id": cell.id,
        "label": cell_label(cell.settings),
        "settings": dataclasses.asdict(cell.settings),
        "require_valid": config.require_valid,
        "pool": {"source": pool.source, "fingerprint": pool.fingerprint},
        "dataset": {"rows": len(cell.rows), "fingerprint": cell.fingerprint, "ids": [row["id"] for row in cell.rows]},
        "same_data_as": None,
        "training": None,
        "scores": {},
        "eval_fingerprint": None,
    }
    if not cell.rows:
        logger.warning("Cell %s: no pool row fits its settings; nothing to train", cell.id)
        record["status"] = "empty"
    elif same_data is not None:
        logger.info("Cell %s: the same rows as cell %s, whose results it reuses", cell.id, same_data["cell_id"])
        record.update(status="ok", same_data_as=same_data["cell_id"], **{k: same_data[k] for k in ("training", "scores", "eval_fingerprint")})
        record["dataset"].update({k: same_data["dataset"][k] for k in ("repo", "tag", "commit")})
    else:
        tag, commit = put_cell_data(config, cell, cell_dir)
        record["dataset"].update(repo=config.cells_repo or f"local/{config.name}-cells", tag=tag, commit=commit)
        train_config, _ = stage_configs(config, cell_dir, tag=tag)
        (cell_dir / "train.yaml").write_text(yaml.safe_dump(to_dict(train_config), sort_keys=False))
        try:
            summary = train_cell(config, train_config)
        except TrainError as err:
            raise SweepError(f"cell {cell.id}: {err}") from None
        record.update(status="ok", training=training_record(summary), **evaluate_cell(config, cell_dir, tag))
    return finish(cell_dir, record)


def finish(cell_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write `cell.json`, atomically and last: from then on the cell is finished."""
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(cell_dir / CELL_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


# --- report ----------------------------------------------------------------------------------------------


def display(dim: str, value: Any) -> str:
    """How a setting reads in tables and plots: L3-L4, complexity 2-3 / all, 50, failed first / build order."""
    if dim == "quality_levels":
        return _levels(value, "L")
    if dim == "complexity_levels":
        return "all" if value is None else _levels(value, "")
    if dim == "prefer_defender_failed":
        return "failed first" if value else "build order"
    return str(value)


def _levels(levels: list[int], prefix: str) -> str:
    if len(levels) > 1 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"{prefix}{levels[0]}-{prefix}{levels[-1]}" if prefix else f"{levels[0]}-{levels[-1]}"
    return ",".join(f"{prefix}{level}" for level in levels)


def _short(dim: str) -> str:
    return {"quality_levels": "quality", "complexity_levels": "complexity", "size": "size", "prefer_defender_failed": "ranking"}[dim]


def _order(dim: str, value: Any) -> tuple:
    if dim in ("quality_levels", "complexity_levels"):
        return (1, ()) if value is None else (0, tuple(value))
    return (0, value)


def results_table(records: list[dict[str, Any]], benchmarks: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per cell and benchmark (scores empty for a cell without rows); `best` marks the best cell of each
    benchmark: highest adapter accuracy, then fewer rows (cheaper), then the earlier cell."""
    table = []
    for record in records:
        training = record["training"] or {}
        for name, title in benchmarks:
            score = record["scores"].get(name) or {}
            base = score.get("base") or {}
            table.append({
                "cell_id": record["cell_id"],
                **{dim: record["settings"][dim] for dim in DIMENSIONS},
                "require_valid": record["require_valid"],
                "status": record["status"],
                "rows": record["dataset"]["rows"],
                "dataset_fingerprint": record["dataset"]["fingerprint"],
                "same_data_as": record["same_data_as"],
                "train_steps": training.get("steps"),
                "train_tokens": training.get("train_tokens"),
                "train_wall_time_s": training.get("wall_time_s"),
                "train_loss_last": training.get("loss_last"),
                "benchmark": name,
                "benchmark_title": title,
                "n": score.get("n"),
                "accuracy": score.get("accuracy"),
                "ci_low": score.get("ci_low"),
                "ci_high": score.get("ci_high"),
                "unparseable": score.get("unparseable"),
                "base_accuracy": base.get("accuracy"),
                "base_ci_low": base.get("ci_low"),
                "base_ci_high": base.get("ci_high"),
                "best": False,
            })  # fmt: skip
    for name, _ in benchmarks:
        scored = [(i, row) for i, row in enumerate(table) if row["benchmark"] == name and row["accuracy"] is not None and not math.isnan(row["accuracy"])]
        if scored:
            best = min(scored, key=lambda item: (-item[1]["accuracy"], item[1]["rows"], item[0]))
            best[1]["best"] = True
    return table


def _schema() -> Any:
    import pyarrow as pa

    levels = pa.list_(pa.int32())
    floats = ("train_wall_time_s", "train_loss_last", "accuracy", "ci_low", "ci_high", "base_accuracy", "base_ci_low", "base_ci_high")
    types = {
        "cell_id": pa.string(), "quality_levels": levels, "complexity_levels": levels, "size": pa.int32(),
        "prefer_defender_failed": pa.bool_(), "require_valid": pa.bool_(), "status": pa.string(), "rows": pa.int32(),
        "dataset_fingerprint": pa.string(), "same_data_as": pa.string(), "train_steps": pa.int64(), "train_tokens": pa.int64(),
        "benchmark": pa.string(), "benchmark_title": pa.string(), "n": pa.int32(), "unparseable": pa.int32(), "best": pa.bool_(),
        **{name: pa.float64() for name in floats},
    }  # fmt: skip
    order = [
        "cell_id", *DIMENSIONS, "require_valid", "status", "rows", "dataset_fingerprint", "same_data_as", "train_steps",
        "train_tokens", "train_wall_time_s", "train_loss_last", "benchmark", "benchmark_title", "n", "accuracy", "ci_low",
        "ci_high", "unparseable", "base_accuracy", "base_ci_low", "base_ci_high", "best",
    ]  # fmt: skip
    return pa.schema([(name, types[name]) for name in order])


def swept_dimensions(records: list[dict[str, Any]]) -> list[str]:
    """The dimensions that take more than one value across the cells."""
    return [dim for dim in DIMENSIONS if len({json.dumps(r["settings"][dim]) for r in records}) > 1]


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def results_markdown(
    config: SweepConfig, pool: Pool, records: list[dict[str, Any]], table: list[dict[str, Any]], benchmarks: list[tuple[str, str]], setup: dict[str, Any], *, public: bool = False
) -> str:
    """`results.md`: what was swept on which pool, the best cell per benchmark, every cell, and the plots. The `public`
    copy (uploaded to the dataset repo) names no local folder."""
    source = f"a build's pool ({Path(pool.source).name})" if public and pool.build_dir is not None else f"`{pool.source}`"
    cells_dir = "<sweep output_dir>/cells" if public else str(Path(config.output_dir) / "cells")
    swept = swept_dimensions(records)
    train, evaluation = setup["train"], setup["eval"]
    fixed = [f"{_short(dim)} {display(dim, records[0]['settings'][dim])}" for dim in DIMENSIONS if dim not in swept and records]
    lines = [
        f"# NanoFlux ablation sweep: {config.name}",
        "",
        f"- Pool: {source} ({len(pool.rows)} rows; fingerprint `{pool.fingerprint[:16]}`)",
        f"- Design: {'every combination of the grid' if config.design == 'grid' else 'one dimension at a time around the reference cell'}, "
        f"{len(records)} cells; swept: {', '.join(DIMENSION_TITLES[d] for d in swept) or 'nothing'}"
        + (f"; fixed: {', '.join(fixed)}" if fixed else "")
        + f"; judge-validated only: {config.require_valid}",
        "- Curation: the builder's own (`builder.curation.curate`), no new generation; a cell's dataset fingerprint is the sha256 of its rows' ids in order",
        f"- Training: `{train['model']}`, LoRA r={train['lora_r']}, lr {train['learning_rate']}, "
        + (f"{train['max_steps']} steps" if train["max_steps"] > 0 else f"{train['num_train_epochs']} epochs")
        + f", batch {train['per_device_train_batch_size']}x{train['gradient_accumulation_steps']}, seed {train['seed']}",
        f"- Evaluation: `{evaluation['model']}` + each cell's adapter, greedy, max {evaluation['max_new_tokens']} new tokens; "
        "accuracy with a 95% bootstrap CI; the base model's accuracy is the reference",
        "",
        "## Best cell per benchmark",
        "",
        "| benchmark | best cell | settings | rows | accuracy (%) | 95% CI (%) | base model (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    records_by_id = {r["cell_id"]: r for r in records}
    for name, title in benchmarks:
        best = next((row for row in table if row["benchmark"] == name and row["best"]), None)
        if best is None:
            lines.append(f"| {title} | – | no cell had rows to train on | – | – | – | – |")
            continue
        lines.append(
            f"| {title} | `{best['cell_id']}` | {records_by_id[best['cell_id']]['label']} | {best['rows']} | {_pct(best['accuracy'])} | "
            f"{_pct(best['ci_low'])} – {_pct(best['ci_high'])} | {_pct(best['base_accuracy'])} |"
        )
    header = "| cell | quality | complexity | size | ranking | rows | steps | train tokens | train s |"
    lines += ["", "## Every cell", "", "Accuracy (%) of base + the cell's adapter, [95% CI]; ★ marks the best cell of a benchmark.", ""]
    lines += [header + "".join(f" {title} |" for _, title in benchmarks), "|---" * (9 + len(benchmarks)) + "|"]
    for record in records:
        training = record["training"] or {}
        cells = []
        for name, _ in benchmarks:
            row = next(r for r in table if r["cell_id"] == record["cell_id"] and r["benchmark"] == name)
            cells.append("–" if row["accuracy"] is None else f"{'★ ' if row['best'] else ''}{_pct(row['accuracy'])} [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]")
        note = f" (= `{record['same_data_as']}`)" if record["same_data_as"] else ""
        settings = record["settings"]
        lines.append(
            f"| `{record['cell_id']}`{note} | {display('quality_levels', settings['quality_levels'])} | {display('complexity_levels', settings['complexity_levels'])} "
            f"| {settings['size']} | {display('prefer_defender_failed', settings['prefer_defender_failed'])} | {record['dataset']['rows']} "
            f"| {training.get('steps', '–')} | {training.get('train_tokens', '–')} | {training.get('wall_time_s', '–')} |" + "".join(f" {c} |" for c in cells)
        )
    lines += ["", "A size larger than the rows that fit a cell's bands gives fewer rows (see `rows`); cells with the same rows share one training run.", ""]
    if swept:
        lines += ["## Plots", ""] + [f"![accuracy vs {DIMENSION_TITLES[dim]}]({dim}.png)" for dim in swept] + [""]
    lines += [
        "## Publish a cell",
        "",
        "Each cell folder is a finished build of the pool with that cell's curation. Release one as the next dataset version:",
        "",
        "```bash",
        f"nanoflux publish {cells_dir}/<cell_id> --repo_id org/name",
        "nanoflux sweep --config <this sweep's recipe> --publish_cell <cell_id> --push_to_hub org/name   # also attaches this report",
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_dimension(table: list[dict[str, Any]], dim: str, benchmarks: list[tuple[str, str]], path: Path, title: str) -> None:
    """Accuracy (95% CI error bars) against one dimension, one panel per benchmark, one line per combination of the
    other swept dimensions; the base model dashed, the best cell of each benchmark starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [row for row in table if row["accuracy"] is not None]
    others = [d for d in DIMENSIONS if d != dim and len({json.dumps(row[d]) for row in table}) > 1]
    values = sorted({json.dumps(row[dim]) for row in table}, key=lambda v: _order(dim, json.loads(v)))
    x_of = {value: i for i, value in enumerate(values)}
    columns = min(3, len(benchmarks))
    rows_n = math.ceil(len(benchmarks) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows_n + 0.6))
    FigureCanvasAgg(figure)
    for index, (name, bench_title) in enumerate(benchmarks):
        axes = figure.add_subplot(rows_n, columns, index + 1)
        points = [row for row in scored if row["benchmark"] == name]
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in points:
            key = ", ".join(f"{_short(d)} {display(d, row[d])}" for d in others) or "cells"
            groups.setdefault(key, []).append(row)
        # In a one-at-a-time design, cells that vary another dimension are single points here: leave them out.
        if any(len(group) > 1 for group in groups.values()):
            groups = {key: group for key, group in groups.items() if len(group) > 1}
        for g, (label, group) in enumerate(sorted(groups.items())):
            group.sort(key=lambda row: x_of[json.dumps(row[dim])])
            offset = (g - (len(groups) - 1) / 2) * 0.06
            xs = [x_of[json.dumps(row[dim])] + offset for row in group]
            ys = [row["accuracy"] for row in group]
            errors = [[max(0.0, row["accuracy"] - row["ci_low"]) for row in group], [max(0.0, row["ci_high"] - row["accuracy"]) for row in group]]
            axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
            for x, row in zip(xs, group):
                if row["best"]:
                    axes.plot([x], [row["accuracy"]], marker="*", markersize=16, color="gold", markeredgecolor="black", zorder=5, linestyle="none", label="best cell")
        base = next((row["base_accuracy"] for row in points if row["base_accuracy"] is not None), None)
        if base is not None:
            axes.axhline(base, linestyle="--", color="gray", linewidth=1, label="base model")
        axes.set_xticks(range(len(values)), [display(dim, json.loads(v)) for v in values])
        axes.set_xlim(-0.5, len(values) - 0.5)
        axes.set_ylim(0, 1.05)
        axes.set_title(bench_title, fontsize=10)
        axes.set_xlabel(DIMENSION_TITLES[dim])
        if index % columns == 0:
            axes.set_ylabel("accuracy (95% bootstrap CI)")
        if index == 0:
            axes.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(config: SweepConfig, pool: Pool, records: list[dict[str, Any]], benchmarks: list[tuple[str, str]], setup: dict[str, Any]) -> list[Path]:
    """results.parquet, results.md and `<dimension>.png` per swept dimension in the sweep folder; returns the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output_dir = Path(config.output_dir)
    table = results_table(records, benchmarks)
    pq.write_table(pa.Table.from_pylist(table, schema=_schema()), output_dir / "results.parquet")
    (output_dir / "results.md").write_text(results_markdown(config, pool, records, table, benchmarks, setup))
    files = [output_dir / name for name in REPORT_FILES]
    for stale in output_dir.glob("*.png"):
        stale.unlink()
    for dim in swept_dimensions(records):
        path = output_dir / f"{dim}.png"
        plot_dimension(table, dim, benchmarks, path, f"{config.name}: accuracy vs {DIMENSION_TITLES[dim]}")
        files.append(path)
    return files


# --- publishing ------------------------------------------------------------------------------------------


def card_section(config: SweepConfig, records: list[dict[str, Any]], benchmarks: list[tuple[str, str]], release: Any) -> str:
    """The card's `## Ablations: <name>` section: the best cell per benchmark and where the full report is."""
    table = results_table(records, benchmarks)
    by_id = {r["cell_id"]: r for r in records}
    folder = f"ablations/{config.name}"
    lines = [
        f"## Ablations: {config.name}",
        "",
        f"{len(records)} curations of one candidate pool were each used to train a LoRA adapter "
        f"({'every combination of the grid' if config.design == 'grid' else 'one dimension at a time'}; swept: "
        f"{', '.join(DIMENSION_TITLES[d] for d in swept_dimensions(records)) or 'nothing'}). Best cell per benchmark "
        "(accuracy of the base model + adapter, 95% bootstrap CI):",
        "",
        "| benchmark | best cell | settings | rows | accuracy (%) | base model (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, title in benchmarks:
        best = next((row for row in table if row["benchmark"] == name and row["best"]), None)
        if best is not None:
            accuracy = f"{_pct(best['accuracy'])} [{_pct(best['ci_low'])}, {_pct(best['ci_high'])}]"
            lines.append(f"| {title} | `{best['cell_id']}` | {by_id[best['cell_id']]['label']} | {best['rows']} | {accuracy} | {_pct(best['base_accuracy'])} |")
    lines.append("")
    if release is not None:
        lines += [f"Version {release.version} holds the rows of cell `{config.publish_cell}` ({by_id[config.publish_cell]['label']}).", ""]
    lines += [f"Every cell, the plots and the results table: [`{folder}/results.md`]({folder}/results.md), `{folder}/results.parquet`.", ""]
    return "\n".join(lines)


def with_section(card: str, heading: str, section: str) -> str:
    """`card` with its `heading` section replaced by `section` (appended when there is none)."""
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(card):
        return pattern.sub(lambda _: section + "\n", card, count=1)
    return card.rstrip() + "\n\n" + section


def publish_report(
    config: SweepConfig, pool: Pool, records: list[dict[str, Any]], benchmarks: list[tuple[str, str]], setup: dict[str, Any], files: list[Path]
) -> dict[str, Any]:
    """With `publish_cell`, release that cell as the next version (`builder.publish.publish`); then one commit adds the
    report under `ablations/<name>/` (results.md without local folders) and the card's `## Ablations: <name>` section."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    from builder import publish

    repo = config.push_to_hub
    with publish.open_target(config.hub_dir) as api:
        release = None
        if config.publish_cell:
            release = publish.publish(Path(config.output_dir) / "cells" / config.publish_cell, repo, api=api, private=config.private)
            if release is None:
                logger.warning("Cell %s adds no row that is new to %s: no version was published", config.publish_cell, repo)
        try:
            head = api.repo_info(repo, repo_type="dataset").sha
            try:
                card = Path(api.hf_hub_download(repo, "README.md", repo_type="dataset", revision=head)).read_text()
            except EntryNotFoundError:
                card = f"# {repo}\n"
            section = card_section(config, records, benchmarks, release)
            public_md = results_markdown(config, pool, records, results_table(records, benchmarks), benchmarks, setup, public=True).encode()
            operations = [
                CommitOperationAdd(f"ablations/{config.name}/{path.name}", io.BytesIO(public_md if path.name == "results.md" else path.read_bytes()))
                for path in files
            ]
            operations.append(CommitOperationAdd("README.md", io.BytesIO(with_section(card, f"## Ablations: {config.name}", section).encode())))
            commit = api.create_commit(
                repo,
                repo_type="dataset",
                operations=operations,
                commit_message=f"NanoFlux ablations: {config.name} ({len(records)} cells)",
                parent_commit=head,  # a release meanwhile: fail rather than overwrite its card
            )
        except HfHubHTTPError as err:
            done = f"{release.version} was published; " if release else ""
            raise SweepError(
                f"attaching the report to {repo} failed ({str(err).splitlines()[0]}); {done}the report is in {config.output_dir}. "
                "Fix: run the same command again without --publish_cell (every cell is finished, nothing is retrained)"
            ) from None
    logger.info("Report attached to %s under ablations/%s: commit %s", repo, config.name, commit.oid[:12])
    return {"release": dataclasses.asdict(release) if release else None, "report_commit": commit.oid}


# --- main ------------------------------------------------------------------------------------------------


def main(config: SweepConfig, *, fresh: bool = False) -> dict[str, Any]:
    """`nanoflux sweep`: run (or resume) every cell, write the report, publish if asked. Returns what happened."""
    started = time.perf_counter()
    pool = read_pool(config)
    train_setup, eval_setup = stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check")
    setup = setup_record(pool, train_setup, eval_setup)
    benchmarks = [(bench.name, bench.title) for bench in eval_setup.benchmarks]

    cells = [curate_cell(pool.rows, settings, config.require_valid) for settings in grid_settings(config)]
    if config.publish_cell and config.publish_cell not in {cell.id for cell in cells}:
        raise SweepError(f"publish_cell: no cell {config.publish_cell!r} in this sweep (cells: {', '.join(c.id for c in cells)}). Fix: pick one from results.md")
    if config.push_to_hub:
        from builder import publish

        # Pre-flight before any compute: the dataset repo is writable.
        with publish.open_target(config.hub_dir) as api:
            publish.preflight(api, config.push_to_hub, private=config.private)
    output_dir = prepare_output_dir(config, setup, fresh)

    judged_ok = sum(row.get("judge_status") == "ok" for row in pool.rows)
    logger.info("Sweep %s: pool %s (%d rows, %d judged ok), %d cells", config.name, pool.source, len(pool.rows), judged_ok, len(cells))
    for cell in cells:
        logger.info("  %-48s %4d rows  (%s)", cell.id, len(cell.rows), cell_label(cell.settings))

    current_eval = eval_fingerprint(eval_setup)
    ran, skipped, reused, empty, reevaluated = [], [], [], [], []
    records: dict[str, dict[str, Any]] = {}
    for cell in cells:
        cell_dir = output_dir / "cells" / cell.id
        record = read_record(cell_dir, cell)
        source = records.get(record["same_data_as"]) if record and record["same_data_as"] else None
        if record is not None and record["same_data_as"] and source is None:
            record = None  # the cell it reused is no longer in the sweep: run it on its own
        if record is not None and record["status"] == "ok" and record.get("eval_fingerprint") != current_eval:
            logger.info("Cell %s: the evaluation recipe changed; evaluating its adapter again", cell.id)
            update = {k: source[k] for k in ("scores", "eval_fingerprint")} if source else evaluate_cell(config, cell_dir, record["dataset"]["tag"])
            record = finish(cell_dir, {**record, **update})
            reevaluated.append(cell.id)
        elif record is not None:
            logger.info("Cell %s: finished already", cell.id)
            skipped.append(cell.id)
        else:
            same = next((r for r in records.values() if r["dataset"]["fingerprint"] == cell.fingerprint and r["status"] == "ok"), None)
            logger.info("Cell %s: %d rows", cell.id, len(cell.rows))
            record = run_cell(config, pool, cell, output_dir / "cells" / cell.id, same)
            (reused if record["same_data_as"] else empty if record["status"] == "empty" else ran).append(cell.id)
        records[cell.id] = record

    ordered = [records[cell.id] for cell in cells]
    files = write_report(config, pool, ordered, benchmarks, setup)
    table = results_table(ordered, benchmarks)
    best = {row["benchmark"]: row["cell_id"] for row in table if row["best"]}
    for name, title in benchmarks:
        row = next((r for r in table if r["benchmark"] == name and r["best"]), None)
        if row is not None:
            logger.info("Best on %s: %s, accuracy %.3f [%.3f, %.3f] (base %.3f)", title, row["cell_id"], row["accuracy"], row["ci_low"], row["ci_high"], row["base_accuracy"])
    summary = {
        "cells": [cell.id for cell in cells],
        "ran": ran,
        "reused": reused,
        "empty": empty,
        "skipped": skipped,
        "reevaluated": reevaluated,
        "best": best,
        "report": [str(path) for path in files],
        "output_dir": str(output_dir),
    }
    if config.push_to_hub:
        summary.update(publish_report(config, pool, ordered, benchmarks, setup, files))
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    logger.info(
        "Sweep finished in %.0f s: %d cells trained, %d reused, %d empty, %d re-evaluated, %d finished before. Report: %s",
        summary["wall_time_s"], len(ran), len(reused), len(empty), len(reevaluated), len(skipped), output_dir / "results.md",
    )  # fmt: skip
    return summary
