"""`nanoflux sweep`: ablations. Curate subsets of one candidate pool over a grid of curation settings, train a LoRA
adapter on each, choose on the dev rows, report the chosen cells on the test rows.

Usage:
    nanoflux sweep --config configs/sweeps/local.yaml        # embedded default: a 2x2 grid, minutes on CPU
    nanoflux sweep --config configs/sweeps/medical.yaml      # the paper's ablations for one domain (GPU, Hub)
    nanoflux sweep --config configs/sweeps/local.yaml --publish_cell CELL_ID --push_to_hub org/name [--hub_dir DIR]

`main(config)` reads top to bottom: read the pool (a build's `pool/`, or a published version) and curate each cell's
rows with the builder's own `curate` (trainer.sweep.pool); fix how many optimizer steps each cell trains
(`steps_policy`) and resolve the cells' train and eval recipes; refuse, before any compute, rows that ask a question of
the evaluation's test or dev rows; check that the sweep folder holds this setup (pool and training recipe) or nothing
(trainer.sweep.folder). Then, for each cell not finished yet (trainer.sweep.cells), with progress across the cells (a
bar on a terminal, log lines elsewhere): write its rows as a build-shaped folder (so `nanoflux publish` can release
it), put them in the cells repo as a commit tagged by their fingerprint, train an adapter on that tag (`trainer.train`,
or an HF Job), evaluate it on the dev rows, and write `cell.json` last, atomically: a killed sweep redoes only the
cells without one. A cell with the same set of rows as an earlier one, in any order, shares its adapter and results
(the trainer shuffles the rows with its seed); a changed evaluation recipe re-evaluates the finished cells' adapters
without training. Then the selection on dev (trainer.sweep.select): per benchmark and overall, each compared with every
other trained cell, ties and differences within the noise named as such; only the selected cells (and the base model)
are evaluated on the test rows. Finally the report (trainer.sweep.report): `results.parquet`, `results.md` and one plot
per swept dimension. With `push_to_hub`, the report goes to the dataset repo under `ablations/<name>/` in one commit
and is summarised in its card; with `publish_cell`, that cell's rows are first released as the repo's next version by
the same code as `nanoflux publish` (trainer.sweep.publish)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from nanoflux.progress import Progress
from nanoflux.recipe import ConfigError
from trainer.sweep.cells import dev_details, eval_fingerprint, evaluate_cell, evaluate_test, finish, run_cell
from trainer.sweep.config import SweepConfig, SweepError, build_sweep_config, check_steps_policy, stage_configs
from trainer.sweep.folder import finished_cells, prepare_output_dir, setup_record, training_key
from trainer.sweep.labels import cell_label
from trainer.sweep.pool import Cell, Pool, cell_steps, check_training_rows, curate_cell, grid_settings, read_pool
from trainer.sweep.publish import check_dataset_repo, publish_report
from trainer.sweep.report import Report, write_report
from trainer.sweep.select import select_cells, verdict

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0  # off a terminal: at most one progress line per 30 s (a cell finishing later logs at once)


def main(config: SweepConfig, *, fresh: bool = False) -> dict[str, Any]:
    """`nanoflux sweep`: run (or resume) every cell on the dev rows, select on dev, evaluate the selected cells on the
    test rows, write the report, publish if asked. Returns what happened."""
    started = time.perf_counter()
    pool = read_pool(config)
    cells = curate_cells(config, pool)
    steps, train_setup, eval_setup = cell_recipes(config, cells)
    setup = setup_record(pool, train_setup, eval_setup)
    check_training_rows(cells, eval_setup)
    if config.push_to_hub:
        check_dataset_repo(config)  # before any compute: the dataset repo is writable
    output_dir = prepare_output_dir(config, setup, fresh)
    log_cells(config, pool, cells, steps, train_setup)

    keys = {cell.id: training_key(cell, setup["train"]) for cell in cells}
    records, todo = finished_cells(output_dir, cells, keys, eval_fingerprint(eval_setup))
    outcome = run_cells(config, pool, records, todo, keys, steps)

    ordered = [records[cell.id] for cell in cells]
    benchmarks = [(bench.name, bench.title) for bench in eval_setup.benchmarks]
    selection = select_cells(
        ordered, benchmarks, dev_details(output_dir), samples=eval_setup.bootstrap_samples, seed=eval_setup.seed
    )
    test = evaluate_selected(config, records, selection["test_cells"])
    report = Report(config, pool, ordered, benchmarks, setup, selection, test)
    files = write_report(report)
    log_selection(benchmarks, selection, test)

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
    log_summary(summary, outcome, len(test), output_dir)
    return summary


def curate_cells(config: SweepConfig, pool: Pool) -> list[Cell]:
    """Every cell's rows, curated from the pool with its settings (no new generation)."""
    cells = [curate_cell(pool.rows, settings, config.require_valid) for settings in grid_settings(config)]
    if config.publish_cell and config.publish_cell not in {cell.id for cell in cells}:
        raise SweepError(
            f"publish_cell: no cell {config.publish_cell!r} in this sweep (cells: {', '.join(c.id for c in cells)})."
            " Fix: pick one from results.md"
        )
    return cells


def cell_recipes(config: SweepConfig, cells: list[Cell]) -> tuple[int | None, Any, Any]:
    """(optimizer steps of every cell or None, the cells' TrainConfig, their EvalConfig), as a placeholder cell's: what
    the sweep's setup record and its checks read."""
    placeholder = Path(config.output_dir) / "cells" / "CELL"
    recipe_train, _ = stage_configs(config, placeholder, tag="cell-check")
    try:
        check_steps_policy(config, recipe_train)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    steps = cell_steps(config, recipe_train, cells)
    train_setup, eval_setup = stage_configs(config, placeholder, tag="cell-check", max_steps=steps)
    return steps, train_setup, eval_setup


def log_cells(config: SweepConfig, pool: Pool, cells: list[Cell], steps: int | None, train_setup: Any) -> None:
    judged_ok = sum(row.get("judge_status") == "ok" for row in pool.rows)
    logger.info(
        "Sweep %s: pool %s (%d rows, %d judged ok), %d cells, %s",
        config.name,
        pool.source,
        len(pool.rows),
        judged_ok,
        len(cells),
        f"{steps} optimizer steps each" if steps else f"{train_setup.sft['num_train_epochs']} epochs each",
    )
    for cell in cells:
        logger.info("  %-32s %5d rows  (%s)", cell.id, len(cell.rows), cell_label(cell.settings))


def run_cells(
    config: SweepConfig,
    pool: Pool,
    records: dict[str, dict[str, Any]],
    todo: list[tuple[Cell, dict[str, Any] | None]],
    keys: dict[str, str],
    steps: int | None,
) -> dict[str, list[str]]:
    """Run (or re-evaluate) every cell left to do, in order, adding its record to `records` as it finishes. Returns
    which cells ran, reused a shared training, were empty, were finished before (skipped) and were re-evaluated."""
    outcome: dict[str, list[str]] = {"ran": [], "reused": [], "empty": [], "skipped": list(records), "reevaluated": []}
    trainings = len({keys[cell.id] for cell, _ in todo if cell.rows} - {r["training_key"] for r in records.values()})
    logger.info(
        "Sweep %s: %d cells, %d finished before, %d to run now (%d trainings: cells with the same set of rows train"
        " once)",
        config.name,
        len(records) + len(todo),
        len(records),
        len(todo),
        trainings,
    )
    if not todo:
        return outcome
    progress = Progress(len(todo), desc=f"sweep {config.name}", unit="cell", interval=PROGRESS_INTERVAL_S)
    for index, (cell, record) in enumerate(todo, 1):
        progress.set_description(f"sweep {config.name} [{cell.id}]")
        cell_dir = Path(config.output_dir) / "cells" / cell.id
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
    progress.close()
    return outcome


def evaluate_selected(
    config: SweepConfig, records: dict[str, dict[str, Any]], selected: list[str]
) -> dict[str, dict[str, Any]]:
    """The cells selected on dev, evaluated on the test rows: {cell id: {benchmark: test score}}."""
    test: dict[str, dict[str, Any]] = {}
    if not selected:
        return test
    progress = Progress(
        len(selected), desc=f"sweep {config.name}: test rows", unit="cell", interval=PROGRESS_INTERVAL_S
    )
    for cell_name in selected:
        progress.set_description(f"sweep {config.name}: test rows [{cell_name}]")
        test[cell_name] = evaluate_test(config, records[cell_name])
        progress.update()
    progress.close()
    return test


def log_selection(
    benchmarks: list[tuple[str, str]], selection: dict[str, Any], test: dict[str, dict[str, Any]]
) -> None:
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


def log_summary(summary: dict[str, Any], outcome: dict[str, list[str]], tested: int, output_dir: Path) -> None:
    logger.info(
        "Sweep finished in %.0f s: %d cells trained, %d reused, %d empty, %d re-evaluated, %d finished before; %d"
        " selected on dev and evaluated on test. Report: %s",
        summary["wall_time_s"],
        *(len(outcome[k]) for k in ("ran", "reused", "empty", "reevaluated", "skipped")),
        tested,
        output_dir / "results.md",
    )


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux sweep [--config RECIPE] [--fresh] [--field value ...]`."""
    main(build_sweep_config(args.config, overrides), fresh=args.fresh)
