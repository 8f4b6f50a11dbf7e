"""Ablation sweeps: curate subsets of one candidate pool over a grid of curation settings, train a LoRA adapter on
each, choose on the dev rows, report the chosen cells on the test rows (`nanoflux sweep`).

Usage:
    nanoflux sweep --config configs/sweeps/local.yaml        # embedded default: a 2x2 grid, minutes on CPU
    nanoflux sweep --config configs/sweeps/medical.yaml      # the paper's ablations for one domain (GPU, Hub)
    nanoflux sweep --config configs/sweeps/local.yaml --publish_cell CELL_ID --push_to_hub org/name [--hub_dir DIR]

`main(config)` reads top to bottom: read the pool (a build's `pool/`, or a published version); list the cells (the
full grid, or one dimension at a time around a reference cell) and curate each one's rows with the builder's own
`curate` (no new generation); refuse, before any compute, rows that ask a question of the evaluation's test or dev
rows; fix how many optimizer steps each cell trains (`steps_policy`); check that the sweep folder holds this setup
(pool and training recipe) or nothing. Then, for each cell not finished yet (trainer.sweep_cells), with progress across
the cells (a bar on a terminal, log lines elsewhere): write its rows as a build-shaped folder (so `nanoflux publish`
can release it), put them in the cells repo as a commit tagged by their fingerprint, train an adapter on that tag
(`trainer.train`, or an HF Job), evaluate it on the dev rows, and write `cell.json` last, atomically: a killed sweep
redoes only the cells without one. Training is keyed by the *set* of a cell's rows plus the training recipe: a cell
with the same rows as an earlier one, in any order, shares its adapter and results (the trainer shuffles the rows with
its seed, so their order in the file is not what it trains on); a changed evaluation recipe re-evaluates the finished
cells' adapters without training. Then the selection on dev (trainer.sweep_select): per benchmark and overall, each
compared with every other trained cell, ties and differences within the noise named as such; only the selected cells
(and the base model) are evaluated on the test rows. Finally the report (trainer.sweep_report):
`results.parquet`, `results.md` and one plot per swept dimension. With `push_to_hub`, the report goes to the dataset
repo under `ablations/<name>/` in one commit and is summarised in its card; with `publish_cell`, that cell's rows are
first released as the repo's next version by the same code as `nanoflux publish`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from builder import curate
from nanoflux.hub import open_target
from nanoflux.progress import Progress
from nanoflux.recipe import ConfigError, changed_fields, to_dict
from nanoflux.runfolder import write_atomic
from trainer.sweep_cells import (  # noqa: F401  (re-exported)
    Cell,
    Pool,
    base_scores,
    dev_details,
    digest,
    eval_fingerprint,
    evaluate_cell,
    evaluate_test,
    finish,
    run_cell,
)
from trainer.sweep_config import (  # noqa: F401  (re-exported: `from trainer.sweep import ...` is the public surface)
    BASE_SCORES,
    CELL_FILE,
    EVAL_CELL_FIELDS,
    SETUP_FILE,
    TRAIN_CELL_FIELDS,
    CellSettings,
    GridConfig,
    SweepConfig,
    SweepError,
    build_sweep_config,
    cell_id,
    check_steps_policy,
    hub_name,
    stage_configs,
)
from trainer.sweep_report import (  # noqa: F401
    DIMENSION_TITLES,
    DIMENSIONS,
    REPORT_FILES,
    Report,
    card_section,
    cell_label,
    display,
    results_markdown,
    results_table,
    with_section,
    write_report,
)
from trainer.sweep_select import (  # noqa: F401
    TIE_BREAK,
    select_cells,
    verdict,
)

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0  # off a terminal: at most one progress line per 30 s (a cell finishing later logs at once)

# --- pool and cells --------------------------------------------------------------------------------------


def read_pool(config: SweepConfig) -> Pool:
    """The pool's rows: a build's `pool/pool.parquet`, or the data of a published version at its commit."""
    import pyarrow.parquet as pq

    local = Path(config.pool)
    if config.pool_revision is None:
        path = local / "pool" / "pool.parquet"
        if not path.is_file():
            raise SweepError(
                f"pool: {local} holds no pool/pool.parquet, so it is not a finished build. Fix: run `nanoflux build`"
                " to the end first, or name another output dir"
            )
        return Pool(pq.read_table(path).to_pylist(), str(local), hashlib.sha256(path.read_bytes()).hexdigest(), local)

    from huggingface_hub.errors import HfHubHTTPError

    from builder import DATA_PATH

    repo, revision = config.pool, config.pool_revision
    try:
        with open_target(config.pool_hub_dir) as api:
            commit = api.dataset_info(repo, revision=revision).sha
            path = api.hf_hub_download(repo, DATA_PATH, repo_type="dataset", revision=commit)
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


def training_key(cell: Cell, train_setup: dict[str, Any]) -> str:
    """What a cell's training depends on: its set of rows and the training recipe (steps included). Cells with the same
    key train once; the trainer shuffles the rows with its seed, so their order is not what it trains on."""
    return digest({"rows": cell.row_set, "train": train_setup})


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
        if (key := cell_id(cell)) not in seen:
            seen.add(key)
            settings.append(cell)
    return settings


def curate_cell(pool_rows: list[dict[str, Any]], settings: CellSettings, require_valid: bool) -> Cell:
    """A cell's rows: the builder's `curate` with the cell's policy and size (same pool, same rows, same order)."""
    rows = curate(pool_rows, settings.curation(require_valid), settings.size)
    return Cell(cell_id(settings), settings, rows, dataset_fingerprint(rows), row_set_fingerprint(rows))


# --- the sweep folder ------------------------------------------------------------------------------------


def setup_record(pool: Pool, train: Any, evaluation: Any) -> dict[str, Any]:
    """What decides every cell's result besides its own settings: the pool, the train and the eval recipes."""
    train_setup = {k: v for k, v in to_dict(train).items() if k not in TRAIN_CELL_FIELDS}
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
    """Without compute: the records of the cells a previous run finished with this evaluation recipe, and the cells left
    to do, in order, each with its record when it has one (to re-evaluate, or a shared training to copy again)."""
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


def cell_steps(config: SweepConfig, train: Any, cells: list[Cell]) -> int | None:
    """fixed_steps: the optimizer steps every cell trains (`steps`, else the recipe's max_steps, else what the largest
    cell takes in num_train_epochs on one device); fixed_epochs: None (the recipe's epochs, max_steps -1)."""
    if config.steps_policy == "fixed_epochs":
        return None
    if config.steps is not None:
        return config.steps
    if train.max_steps > 0:
        return train.max_steps
    largest = max((len(cell.rows) for cell in cells), default=0)
    per_epoch = max(
        1, math.ceil(math.ceil(largest / train.per_device_train_batch_size) / train.gradient_accumulation_steps)
    )
    return max(1, math.ceil(train.num_train_epochs * per_epoch))


def check_training_rows(cells: list[Cell], evaluation: Any) -> None:
    """Refuse, before any compute, cell rows that ask a question of the evaluation's test rows or dev rows (a dev row
    in training would make the choice on dev optimistic; a test row, the reported score)."""
    from nanoflux.benchmarks import EvalError
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


# --- publishing ------------------------------------------------------------------------------------------


def publish_report(report: Report, files: list[Path]) -> dict[str, Any]:
    """With `publish_cell`, release that cell as the next version (`builder.publish.publish`); then one commit adds the
    report under `ablations/<name>/` (results.md without local folders) and the card's `## Ablations: <name>` section.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    from builder import publish_version

    config = report.config
    repo = config.push_to_hub
    with open_target(config.hub_dir) as api:
        release = None
        if config.publish_cell:
            release = publish_version(
                Path(config.output_dir) / "cells" / config.publish_cell, repo, api=api, private=config.private
            )
            if release is None:
                logger.warning(
                    "Cell %s adds no row that is new to %s: no version was published", config.publish_cell, repo
                )
        try:
            head = api.repo_info(repo, repo_type="dataset").sha
            try:
                card = Path(api.hf_hub_download(repo, "README.md", repo_type="dataset", revision=head)).read_text()
            except EntryNotFoundError:
                card = f"# {repo}\n"
            public_md = results_markdown(report, public=True).encode()
            operations = [
                CommitOperationAdd(
                    f"ablations/{config.name}/{path.name}",
                    io.BytesIO(public_md if path.name == "results.md" else path.read_bytes()),
                )
                for path in files
            ]
            operations.append(
                CommitOperationAdd(
                    "README.md",
                    io.BytesIO(
                        with_section(card, f"## Ablations: {config.name}", card_section(report, release)).encode()
                    ),
                )
            )
            commit = api.create_commit(
                repo,
                repo_type="dataset",
                operations=operations,
                commit_message=f"NanoFlux ablations: {config.name} ({len(report.records)} cells)",
                parent_commit=head,  # a release meanwhile: fail rather than overwrite its card
            )
        except HfHubHTTPError as err:
            done = f"{release.version} was published; " if release else ""
            raise SweepError(
                f"attaching the report to {repo} failed ({str(err).splitlines()[0]}); {done}the report is in"
                f" {config.output_dir}. Fix: run the same command again without --publish_cell (every cell is"
                " finished, nothing is retrained)"
            ) from None
    logger.info("Report attached to %s under ablations/%s: commit %s", repo, config.name, commit.oid[:12])
    return {"release": dataclasses.asdict(release) if release else None, "report_commit": commit.oid}


# --- main ------------------------------------------------------------------------------------------------


def main(config: SweepConfig, *, fresh: bool = False) -> dict[str, Any]:
    """`nanoflux sweep`: run (or resume) every cell on the dev rows, select on dev, evaluate the selected cells on the
    test rows, write the report, publish if asked. Returns what happened."""
    started = time.perf_counter()
    pool = read_pool(config)
    cells = [curate_cell(pool.rows, settings, config.require_valid) for settings in grid_settings(config)]
    if config.publish_cell and config.publish_cell not in {cell.id for cell in cells}:
        raise SweepError(
            f"publish_cell: no cell {config.publish_cell!r} in this sweep (cells: {', '.join(c.id for c in cells)})."
            " Fix: pick one from results.md"
        )
    recipe_train, _ = stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check")
    try:
        check_steps_policy(config, recipe_train)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    steps = cell_steps(config, recipe_train, cells)
    train_setup, eval_setup = stage_configs(
        config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check", max_steps=steps
    )
    setup = setup_record(pool, train_setup, eval_setup)
    benchmarks = [(bench.name, bench.title) for bench in eval_setup.benchmarks]
    check_training_rows(cells, eval_setup)
    if config.push_to_hub:
        from builder import publish_preflight

        # Pre-flight before any compute: the dataset repo is writable.
        with open_target(config.hub_dir) as api:
            publish_preflight(api, config.push_to_hub, private=config.private)
    output_dir = prepare_output_dir(config, setup, fresh)

    judged_ok = sum(row.get("judge_status") == "ok" for row in pool.rows)
    logger.info(
        "Sweep %s: pool %s (%d rows, %d judged ok), %d cells, %s",
        config.name,
        pool.source,
        len(pool.rows),
        judged_ok,
        len(cells),
        f"{steps} optimizer steps each" if steps else f"{train_setup.num_train_epochs} epochs each",
    )
    for cell in cells:
        logger.info("  %-32s %5d rows  (%s)", cell.id, len(cell.rows), cell_label(cell.settings))

    current_eval = eval_fingerprint(eval_setup)
    keys = {cell.id: training_key(cell, setup["train"]) for cell in cells}
    records, todo = finished_cells(output_dir, cells, keys, current_eval)
    outcome: dict[str, list[str]] = {
        "ran": [],
        "reused": [],
        "empty": [],
        "skipped": [cell.id for cell in cells if cell.id in records],
        "reevaluated": [],
    }
    trainings = len({keys[cell.id] for cell, _ in todo if cell.rows} - {r["training_key"] for r in records.values()})
    logger.info(
        "Sweep %s: %d cells, %d finished before, %d to run now (%d trainings: cells with the same set of rows train"
        " once)",
        config.name,
        len(cells),
        len(records),
        len(todo),
        trainings,
    )

    progress = (
        Progress(len(todo), desc=f"sweep {config.name}", unit="cell", interval=PROGRESS_INTERVAL_S) if todo else None
    )
    for index, (cell, record) in enumerate(todo, 1):
        progress.set_description(f"sweep {config.name} [{cell.id}]")
        cell_dir = output_dir / "cells" / cell.id
        if record is not None and not record["same_data_as"]:  # finished, but under another evaluation recipe
            logger.info(
                "Cell %s (%d/%d): the evaluation recipe changed; evaluating its adapter again",
                cell.id,
                index,
                len(todo),
            )
            record = finish(cell_dir, {**record, **evaluate_cell(config, cell_dir, record["dataset"]["tag"])})
            outcome["reevaluated"].append(cell.id)
        else:
            # A cell that shared a training takes that cell's results anew (it may just have run or been re-evaluated).
            same = next(
                (
                    r
                    for r in records.values()
                    if r["training_key"] == keys[cell.id] and r["status"] == "ok" and not r["same_data_as"]
                ),
                None,
            )
            logger.info(
                "Cell %s (%d/%d): %d rows%s",
                cell.id,
                index,
                len(todo),
                len(cell.rows),
                f", the same set as {same['cell_id']}" if same else "",
            )
            record = run_cell(config, pool, cell, cell_dir, same, steps, keys[cell.id])
            outcome["reused" if record["same_data_as"] else "empty" if record["status"] == "empty" else "ran"].append(
                cell.id
            )
        records[cell.id] = record
        progress.update()
    if progress is not None:
        progress.close()

    ordered = [records[cell.id] for cell in cells]
    selection = select_cells(
        ordered, benchmarks, dev_details(output_dir), samples=eval_setup.bootstrap_samples, seed=eval_setup.seed
    )
    test: dict[str, dict[str, Any]] = {}
    if selection["test_cells"]:
        progress = Progress(
            len(selection["test_cells"]),
            desc=f"sweep {config.name}: test rows",
            unit="cell",
            interval=PROGRESS_INTERVAL_S,
        )
        for cell_name in selection["test_cells"]:
            progress.set_description(f"sweep {config.name}: test rows [{cell_name}]")
            test[cell_name] = evaluate_test(config, records[cell_name])
            progress.update()
        progress.close()
    report = Report(config, pool, ordered, benchmarks, setup, selection, test)
    files = write_report(report)
    for name, title in benchmarks:
        choice = selection["benchmarks"].get(name)
        if choice is not None:
            score = test[choice["cell"]][name]
            logger.info(
                "%s: selected on dev %s (dev %.3f; %s), test %.3f [%.3f, %.3f] (base on test %.3f)",
                title,
                choice["cell"],
                choice["dev_accuracy"],
                verdict(choice),
                score["accuracy"],
                score["ci_low"],
                score["ci_high"],
                score["base"]["accuracy"],
            )
    summary = {
        "cells": [cell.id for cell in cells],
        **outcome,
        "steps_policy": config.steps_policy,
        "steps": steps,
        "selected": {name: choice["cell"] for name, choice in selection["benchmarks"].items()},
        "selected_overall": (selection["overall"] or {}).get("cell"),
        "tested": selection["test_cells"],
        "report": [str(path) for path in files],
        "output_dir": str(output_dir),
    }
    if config.push_to_hub:
        summary.update(publish_report(report, files))
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    logger.info(
        "Sweep finished in %.0f s: %d cells trained, %d reused, %d empty, %d re-evaluated, %d finished before; %d"
        " selected on dev and evaluated on test. Report: %s",
        summary["wall_time_s"],
        *(len(outcome[k]) for k in ("ran", "reused", "empty", "reevaluated", "skipped")),
        len(test),
        output_dir / "results.md",
    )
    return summary


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux sweep [--config RECIPE] [--fresh] [--field value ...]`."""
    main(build_sweep_config(args.config, overrides), fresh=args.fresh)
