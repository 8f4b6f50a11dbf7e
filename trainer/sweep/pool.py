"""A sweep's candidate pool and its cells' rows: reading the pool (a build's `pool/`, or a published version), the
cells' settings in a stable order (the full grid, or one dimension at a time around a reference cell), each cell's rows
curated with the builder's own `curate` under the cell's curation policy (no new generation), the fingerprints that
identify those rows, and the guard that refuses, before any compute, rows that ask a question of the evaluation's test
or dev rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import BuildFolder, curate
from nanoflux.hub import open_target
from trainer.sweep.config import CellSettings, SweepConfig, SweepError, cell_id


@dataclass
class Pool:
    """The candidate rows every cell curates from, and where they came from."""

    rows: list[dict[str, Any]]
    source: str
    fingerprint: str
    """sha256 of the build's pool file, or the published version's commit."""
    build: BuildFolder | None = None
    """A build's output folder: its config and summary make each cell a publishable build."""


@dataclass
class Cell:
    id: str
    settings: CellSettings
    rows: list[dict[str, Any]]
    fingerprint: str
    """sha256 of the curated rows' ids, in order."""
    row_set: str
    """sha256 of the curated rows' ids, sorted: cells with the same set of rows (in any order) share one training."""


def digest(data: Any) -> str:
    """sha256 of data as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def read_pool(config: SweepConfig) -> Pool:
    """The pool's rows: a build's pool (`BuildFolder.POOL_DATA`), or the data of a published version at its commit."""
    import pyarrow.parquet as pq

    if config.pool_revision is None:
        build = BuildFolder(Path(config.pool))
        if build.missing((BuildFolder.POOL_DATA,)):
            raise SweepError(
                f"pool: {build} holds no {BuildFolder.POOL_DATA}, so it is not a finished build. Fix: run `nanoflux"
                " build` to the end first, or name another output dir"
            )
        digest = hashlib.sha256(build.file(BuildFolder.POOL_DATA).read_bytes()).hexdigest()
        return Pool(build.read_pool(), str(build), digest, build)

    from huggingface_hub.errors import HfHubHTTPError

    repo, revision = config.pool, config.pool_revision
    try:
        with open_target(config.pool_hub_dir) as api:
            commit = api.dataset_info(repo, revision=revision).sha
            path = api.hf_hub_download(repo, BuildFolder.DATA, repo_type="dataset", revision=commit)
    except HfHubHTTPError as err:
        raise SweepError(
            f"pool: cannot read {repo}@{revision} ({str(err).splitlines()[0]}). Fix: check the repo id, pool_revision"
            " and HF_TOKEN (or pool_hub_dir)"
        ) from None
    return Pool(pq.read_table(path).to_pylist(), f"{repo}@{revision}", commit)


def _row_ids(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' ids (`version/id` for published rows, whose ids repeat across versions)."""
    return [f"{row['version']}/{row['id']}" if row.get("version") else row["id"] for row in rows]


def dataset_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows' ids in order: what a cell's data file holds (and its tag in the cells repo)."""
    return hashlib.sha256("\n".join(_row_ids(rows)).encode()).hexdigest()


def row_set_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows' ids sorted: the same for the same rows in any order."""
    return hashlib.sha256("\n".join(sorted(_row_ids(rows))).encode()).hexdigest()


def grid_settings(config: SweepConfig) -> list[CellSettings]:
    """The cells' settings in a stable order, each once."""
    values = config.grid.values()
    if config.design == "grid":
        combos = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    else:
        reference = dataclasses.asdict(config.reference)
        combos = [reference] + [{**reference, dim: value} for dim, options in values.items() for value in options]
    settings, seen = [], set()
    for combo in combos:
        cell = CellSettings(**combo)
        cell.validate("grid")
        if (key := cell_id(cell)) not in seen:
            seen.add(key)
            settings.append(cell)
    return settings


def curate_cell(pool_rows: list[dict[str, Any]], settings: CellSettings, require_valid: bool) -> Cell:
    """A cell's rows: the builder's `curate` with the cell's policy, its size included (same pool, same rows, same
    order)."""
    rows = curate(pool_rows, settings.curation(require_valid))
    return Cell(cell_id(settings), settings, rows, dataset_fingerprint(rows), row_set_fingerprint(rows))


def check_training_rows(cells: list[Cell], evaluation: Any) -> None:
    """Refuse, before any compute, cell rows that ask a question of the evaluation's test rows or dev rows (a dev row
    in training would make the choice on dev optimistic; a test row, the reported score)."""
    from nanoflux.rows import EvalError
    from trainer.baseline import TestRowsInTraining, check_no_test_rows

    questions = {row["id"]: str(row.get("question") or "") for cell in cells for row in cell.rows}
    try:
        check_no_test_rows(
            questions.values(),
            evaluation,
            field_name="pool",
            what=f"the cells' training data ({len(questions)} rows)",
            partitions=("test", "dev"),
            fix="decontaminate the build against these benchmarks, or sweep a pool without those rows",
        )
    except TestRowsInTraining as err:
        raise SweepError(str(err)) from None
    except (EvalError, OSError, ValueError) as err:
        raise SweepError(
            f"eval_recipe: cannot read the test and dev rows to check the cells against ({str(err).splitlines()[0]})."
            " Fix: check the benchmarks"
        ) from None


def cell_steps(config: SweepConfig, train: Any, cells: list[Cell]) -> int | None:
    """fixed_steps: the optimizer steps every cell trains (`steps`, else the recipe's max_steps, else what the largest
    cell takes in num_train_epochs on one device); fixed_epochs: None (the recipe's epochs, max_steps -1)."""
    if config.steps_policy == "fixed_epochs":
        return None
    if config.steps is not None:
        return config.steps
    sft = train.sft
    if sft["max_steps"] > 0:
        return sft["max_steps"]
    largest = max((len(cell.rows) for cell in cells), default=0)
    per_epoch = max(
        1, math.ceil(math.ceil(largest / sft["per_device_train_batch_size"]) / sft["gradient_accumulation_steps"])
    )
    return max(1, math.ceil(sft["num_train_epochs"] * per_epoch))
