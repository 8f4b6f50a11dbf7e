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
(pool and training recipe) or nothing. Then, for each cell not finished yet (trainer.sweep_cells): write its rows as
a build-shaped folder (so `nanoflux publish` can release it), put them in the cells repo as a commit tagged by their
fingerprint, train an adapter on that tag (`trainer.train`, or an HF Job), evaluate it on the dev rows, and write
`cell.json` last, atomically: a killed sweep redoes only the cells without one. Cells whose rows equal a finished
cell's reuse its results; a changed evaluation recipe re-evaluates the finished cells' adapters without training.
Then the selection on dev (trainer.sweep_select): per benchmark and overall, each compared with its runner-up; only
the selected cells (and the base model) are evaluated on the test rows. Finally the report (trainer.sweep_report):
`results.parquet`, `results.md` and one plot per swept dimension. With `push_to_hub`, the report goes to the dataset
repo under `ablations/<name>/` in one commit and is summarised in its card; with `publish_cell`, that cell's rows are
first released as the repo's next version by the same code as `nanoflux publish`.
"""

from __future__ import annotations

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

from builder.config import ConfigError, changed_fields, to_dict
from builder.curation import curate
from builder.journal import write_atomic
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
    check_steps_policy,
    stage_configs,
)
from trainer.sweep_report import DIMENSION_TITLES, DIMENSIONS, REPORT_FILES, Report, card_section, cell_label, display, results_markdown, results_table, with_section, write_report  # noqa: F401
from trainer.sweep_select import select_cells

logger = logging.getLogger(__name__)

# --- pool and cells --------------------------------------------------------------------------------------


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
        for path in [output_dir / SETUP_FILE, output_dir / BASE_SCORES, *(output_dir / name for name in REPORT_FILES), *output_dir.glob("*.png")]:
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
    per_epoch = max(1, math.ceil(math.ceil(largest / train.per_device_train_batch_size) / train.gradient_accumulation_steps))
    return max(1, math.ceil(train.num_train_epochs * per_epoch))


def check_training_rows(cells: list[Cell], evaluation: Any) -> None:
    """Refuse, before any compute, cell rows that ask a question of the evaluation's test rows or dev rows (a dev row
    in training would make the choice on dev optimistic; a test row, the reported score)."""
    from trainer.baseline import TestRowsInTraining, check_no_test_rows
    from trainer.benchmarks import EvalError

    questions = {row["id"]: str(row.get("question") or "") for cell in cells for row in cell.rows}
    try:
        check_no_test_rows(questions.values(), evaluation, field_name="pool", what=f"the cells' training data ({len(questions)} rows)", partitions=("test", "dev"),
                           fix="decontaminate the build against these benchmarks, or sweep a pool without those rows")  # fmt: skip
    except TestRowsInTraining as err:
        raise SweepError(str(err)) from None
    except (EvalError, OSError, ValueError) as err:
        raise SweepError(f"eval_recipe: cannot read the test and dev rows to check the cells against ({str(err).splitlines()[0]}). Fix: check the benchmarks") from None


# --- publishing ------------------------------------------------------------------------------------------


def publish_report(report: Report, files: list[Path]) -> dict[str, Any]:
    """With `publish_cell`, release that cell as the next version (`builder.publish.publish`); then one commit adds the
    report under `ablations/<name>/` (results.md without local folders) and the card's `## Ablations: <name>` section."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    from builder import publish

    config = report.config
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
            public_md = results_markdown(report, public=True).encode()
            operations = [
                CommitOperationAdd(f"ablations/{config.name}/{path.name}", io.BytesIO(public_md if path.name == "results.md" else path.read_bytes()))
                for path in files
            ]
            operations.append(CommitOperationAdd("README.md", io.BytesIO(with_section(card, f"## Ablations: {config.name}", card_section(report, release)).encode())))
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
                f"attaching the report to {repo} failed ({str(err).splitlines()[0]}); {done}the report is in {config.output_dir}. "
                "Fix: run the same command again without --publish_cell (every cell is finished, nothing is retrained)"
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
        raise SweepError(f"publish_cell: no cell {config.publish_cell!r} in this sweep (cells: {', '.join(c.id for c in cells)}). Fix: pick one from results.md")
    recipe_train, _ = stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check")
    try:
        check_steps_policy(config, recipe_train)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    steps = cell_steps(config, recipe_train, cells)
    train_setup, eval_setup = stage_configs(config, Path(config.output_dir) / "cells" / "CELL", tag="cell-check", max_steps=steps)
    setup = setup_record(pool, train_setup, eval_setup)
    benchmarks = [(bench.name, bench.title) for bench in eval_setup.benchmarks]
    check_training_rows(cells, eval_setup)
    if config.push_to_hub:
        from builder import publish

        # Pre-flight before any compute: the dataset repo is writable.
        with publish.open_target(config.hub_dir) as api:
            publish.preflight(api, config.push_to_hub, private=config.private)
    output_dir = prepare_output_dir(config, setup, fresh)

    judged_ok = sum(row.get("judge_status") == "ok" for row in pool.rows)
    logger.info("Sweep %s: pool %s (%d rows, %d judged ok), %d cells, %s", config.name, pool.source, len(pool.rows), judged_ok, len(cells),
                f"{steps} optimizer steps each" if steps else f"{train_setup.num_train_epochs} epochs each")  # fmt: skip
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
            keys = ("scores", "partition", "eval_fingerprint")
            update = {k: source.get(k) for k in keys} if source else evaluate_cell(config, cell_dir, record["dataset"]["tag"])
            record = finish(cell_dir, {**record, **update})
            reevaluated.append(cell.id)
        elif record is not None:
            logger.info("Cell %s: finished already", cell.id)
            skipped.append(cell.id)
        else:
            same = next((r for r in records.values() if r["dataset"]["fingerprint"] == cell.fingerprint and r["status"] == "ok"), None)
            logger.info("Cell %s: %d rows", cell.id, len(cell.rows))
            record = run_cell(config, pool, cell, cell_dir, same, steps)
            (reused if record["same_data_as"] else empty if record["status"] == "empty" else ran).append(cell.id)
        records[cell.id] = record

    ordered = [records[cell.id] for cell in cells]
    selection = select_cells(ordered, benchmarks, dev_details(output_dir), samples=eval_setup.bootstrap_samples, seed=eval_setup.seed)
    test = {cell: evaluate_test(config, records[cell]) for cell in selection["test_cells"]}
    report = Report(config, pool, ordered, benchmarks, setup, selection, test)
    files = write_report(report)
    for name, title in benchmarks:
        choice = selection["benchmarks"].get(name)
        if choice is not None:
            score = test[choice["cell"]][name]
            logger.info("%s: selected on dev %s (dev %.3f), test %.3f [%.3f, %.3f] (base on test %.3f)", title, choice["cell"], choice["dev_accuracy"],
                        score["accuracy"], score["ci_low"], score["ci_high"], score["base"]["accuracy"])  # fmt: skip
    summary = {
        "cells": [cell.id for cell in cells],
        "ran": ran,
        "reused": reused,
        "empty": empty,
        "skipped": skipped,
        "reevaluated": reevaluated,
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
        "Sweep finished in %.0f s: %d cells trained, %d reused, %d empty, %d re-evaluated, %d finished before; %d selected on dev and "
        "evaluated on test. Report: %s",
        summary["wall_time_s"], len(ran), len(reused), len(empty), len(reevaluated), len(skipped), len(test), output_dir / "results.md",
    )  # fmt: skip
    return summary
