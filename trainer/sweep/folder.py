"""The sweep folder: the setup record (`sweep.json`: the pool and training recipe its cells belong to), created or
reopened (another setup is refused unless `--fresh`), and which cells a previous run finished (`cell.json`, written
last) and which are left to do. Training is keyed by the *set* of a cell's rows plus the training recipe
(`training_key`): cells with the same key train once.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from nanoflux.recipe import changed_fields, to_dict
from nanoflux.runfolder import write_atomic
from trainer.sweep.config import (
    BASE_SCORES,
    CELL_FILE,
    EVAL_CELL_FIELDS,
    SETUP_FILE,
    SweepConfig,
    SweepError,
    train_identity,
)
from trainer.sweep.pool import Cell, Pool, digest
from trainer.sweep.report import REPORT_FILES

logger = logging.getLogger(__name__)


def training_key(cell: Cell, train_setup: dict[str, Any]) -> str:
    """What a cell's training depends on: its set of rows and the training recipe (steps included). Cells with the same
    key train once; the trainer shuffles the rows with its seed, so their order is not what it trains on."""
    return digest({"rows": cell.row_set, "train": train_setup})


def setup_record(pool: Pool, train: Any, evaluation: Any) -> dict[str, Any]:
    """What decides every cell's result besides its own settings: the pool, the train and the eval recipes."""
    train_setup = train_identity(train)
    eval_setup = {k: v for k, v in to_dict(evaluation).items() if k not in EVAL_CELL_FIELDS}
    return {"pool": {"source": pool.source, "fingerprint": pool.fingerprint}, "train": train_setup, "eval": eval_setup}


def prepare_output_dir(config: SweepConfig, setup: dict[str, Any], fresh: bool) -> Path:
    """Create or reopen the sweep folder; refuse to mix cells of another pool or training recipe unless `fresh` (a
    changed evaluation recipe only re-evaluates the finished cells)."""
    output_dir = Path(config.output_dir)
    record = output_dir / SETUP_FILE
    # The pool by content (its path may be written another way, or move), and the training recipe.
    guarded = {"pool": setup["pool"]["fingerprint"], "train": setup["train"]}
    fingerprint = digest(guarded)
    if fresh:
        for name in ("cells", "cells-hub", "base-eval-dev", "base-eval-test"):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for path in [
            output_dir / SETUP_FILE,
            output_dir / BASE_SCORES,
            *(output_dir / name for name in REPORT_FILES),
            *output_dir.glob("*.png"),
        ]:
            path.unlink(missing_ok=True)
    elif record.exists():
        previous = json.loads(record.read_text())
        if previous["fingerprint"] != fingerprint:
            changed = (
                ", ".join(changed_fields(previous["setup"], guarded))
                or "recipe fields added or removed by another NanoFlux version"
            )
            raise SweepError(
                f"output_dir {output_dir} holds a sweep of a different setup (changed: {changed}). "
                "Fix: re-run with --fresh to start over, or pass another --output_dir"
            )
        logger.info("Resuming the sweep in %s", output_dir)
    (output_dir / "cells").mkdir(parents=True, exist_ok=True)
    write_atomic(
        record,
        (
            json.dumps({"fingerprint": fingerprint, "setup": guarded, "eval": setup["eval"]}, indent=2, sort_keys=True)
            + "\n"
        ).encode(),
    )
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


def finished_cells(
    output_dir: Path, cells: list[Cell], keys: dict[str, str], current_eval: str
) -> tuple[dict[str, dict[str, Any]], list[tuple[Cell, dict[str, Any] | None]]]:
    """Without compute: the records of the cells a previous run finished with this evaluation recipe, and the cells
    left to do, in order, each with its record when it has one (to re-evaluate, or a shared training to copy again)."""
    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Cell, dict[str, Any] | None]] = []
    for cell in cells:
        record = read_record(output_dir / "cells" / cell.id, cell)
        if record is not None and record.get("training_key") != keys[cell.id]:
            record = None  # trained on another set of rows or recipe (or by an older NanoFlux): run it again
        source = records.get(record["same_data_as"]) if record is not None and record["same_data_as"] else None
        if (
            record is not None
            and record["same_data_as"]
            and (source is None or source["training_key"] != keys[cell.id])
        ):
            todo.append((cell, record))  # the cell whose training it shared runs again (or is gone): copy anew below
        elif record is not None and (record["status"] != "ok" or record.get("eval_fingerprint") == current_eval):
            logger.info("Cell %s: finished already", cell.id)
            records[cell.id] = record
        else:
            todo.append((cell, record))
    return records, todo
