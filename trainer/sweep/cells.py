"""One sweep cell: its rows as a publishable build folder (a `BuildFolder`) and a tagged commit of the cells repo, its
training run, its evaluation on the dev rows (what cells are chosen on), and, for a selected cell, its evaluation on
the test rows. The base model is scored once per partition for the whole sweep (`base.json`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from builder import BuildFolder
from nanoflux.recipe import from_dict, to_dict
from nanoflux.runfolder import write_atomic
from trainer.sweep.config import (
    BASE_SCORES,
    CELL_FILE,
    EVAL_CELL_FIELDS,
    TEST_FILE,
    SweepConfig,
    SweepError,
    stage_configs,
)
from trainer.sweep.labels import cell_label
from trainer.sweep.pool import Cell, Pool, digest
from trainer.sweep.select import adapter_of

logger = logging.getLogger(__name__)

# --- the cell's rows -------------------------------------------------------------------------------------


def write_build_files(pool: Pool, cell: Cell, folder: BuildFolder, config: SweepConfig) -> None:
    """The config, summary and run identity of the build the cell's rows would have come out of: the pool's build with
    the cell's curation policy. With the cell's curated rows, its folder is then a finished build that `nanoflux
    publish` releases."""
    from builder import BuildConfig, recipe_fingerprint

    policy = cell.settings.curation(config.require_valid)
    build_config = {**pool.build.read_config(), "curation": dataclasses.asdict(policy), "output_dir": str(folder)}
    summary = pool.build.read_summary()
    summary.update(kept=len(cell.rows), target_size=policy.target_size)
    for stats in summary["per_round"]:
        stats["kept"] = sum(row["round"] == stats["round"] for row in cell.rows)
    fingerprint, recipe = recipe_fingerprint(from_dict(BuildConfig, build_config), summary["prompt_hashes"])
    curated_by = {"sweep": config.name, "cell": cell.id, "pool": pool.source, "pool_fingerprint": pool.fingerprint}
    folder.write_config(build_config)
    folder.write_summary(summary)
    write_atomic(
        folder.file(BuildFolder.RUN),
        json.dumps(
            {"fingerprint": fingerprint, "recipe": recipe, "curated_by": curated_by}, indent=2, sort_keys=True
        ).encode(),
    )


def put_cell_data(config: SweepConfig, cell: Cell, cell_dir: Path) -> tuple[str, str]:
    """The cell's rows as a commit of the cells repo tagged `cell-<fingerprint>` (reused when it exists): training
    reads them through the same pinned-version path as a published dataset. Returns (tag, commit)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    from nanoflux.hub import open_target

    repo = config.cells_repo or f"local/{config.name}-cells"
    tag = f"cell-{cell.fingerprint[:16]}"
    hub_dir = None if config.backend == "jobs" else str(Path(config.output_dir) / "cells-hub")
    try:
        with open_target(hub_dir) as api:
            api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
            tags = {t.name: t.target_commit for t in api.list_repo_refs(repo, repo_type="dataset").tags}
            if tag in tags:
                return tag, tags[tag]
            data = BuildFolder(cell_dir).file(BuildFolder.DATA).read_bytes()
            commit = api.create_commit(
                repo,
                repo_type="dataset",
                operations=[CommitOperationAdd(BuildFolder.DATA, io.BytesIO(data))],
                commit_message=f"Sweep {config.name}: cell {cell.id} ({len(cell.rows)} rows)",
            )
            api.create_tag(repo, tag=tag, revision=commit.oid, repo_type="dataset")
    except HfHubHTTPError as err:
        raise SweepError(
            f"cells_repo: cannot write the rows of cell {cell.id} to {repo} ({str(err).splitlines()[0]}). Fix: check"
            " HF_TOKEN and cells_repo"
        ) from None
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
        raise SweepError(
            f"training job for {train_config.push_to_hub}: {str(err).splitlines()[0]}. Fix: see `nanoflux jobs logs"
            " <job_id>`, then run the sweep again"
        ) from None
    return json.loads(Path(path).read_text())


def training_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The training compute of a cell, from its training summary."""
    compute = summary.get("compute") or {}
    return {
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "train_tokens": summary["train_tokens"],
        "wall_time_s": summary["wall_time_s"],
        "device_seconds": compute.get("device_seconds"),
        "device": summary["device"],
        "device_name": compute.get("device_name") or summary["gpu"],
        "gpu": summary["gpu"],
        "loss_first": summary["loss"]["first"],
        "loss_last": summary["loss"]["last"],
        "dataset": summary["dataset"]["pinned"],
    }


def scores_record(results: dict[str, Any], base: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per benchmark: the adapter's accuracy with its CI, and the base model's (same partition) as the reference."""
    scores = {}
    for bench in results["benchmarks"]:
        adapter = results["results"][bench["name"]]["adapter"]
        scores[bench["name"]] = {
            "title": bench["title"],
            **{k: adapter[k] for k in ("n", "correct", "accuracy", "ci_low", "ci_high", "unparseable")},
            "base": base[bench["name"]],
        }
    return scores


def _evaluate(eval_config: Any, what: str) -> dict[str, Any]:
    from nanoflux.rows import EvalError
    from trainer.evaluation.run import main as eval_main

    try:
        return eval_main(eval_config)
    except EvalError as err:
        raise SweepError(f"{what}: {err}") from None


def base_scores(config: SweepConfig, eval_config: Any) -> dict[str, dict[str, float]]:
    """The base model's accuracy and CI per benchmark on `eval_config.partition`: evaluated once per evaluation recipe
    and partition (kept in base.json, so a resumed sweep does not evaluate it again), not once per cell."""
    output_dir, partition = Path(config.output_dir), eval_config.partition
    fingerprint = eval_fingerprint(eval_config)
    path = output_dir / BASE_SCORES
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved = {
        key: value for key, value in saved.items() if key in ("dev", "test")
    }  # an older, single-partition file is stale
    if saved.get(partition, {}).get("eval_fingerprint") == fingerprint:
        return saved[partition]["scores"]
    base_config = copy.deepcopy(eval_config)
    base_config.adapter, base_config.evaluate_base, base_config.output_dir = (
        None,
        True,
        str(output_dir / f"base-eval-{partition}"),
    )
    logger.info("Evaluating the base model once on the %s rows, for every cell", partition)
    results = _evaluate(base_config, f"base model ({partition} rows)")
    saved[partition] = {
        "eval_fingerprint": fingerprint,
        "scores": {
            name: {k: r["base"][k] for k in ("n", "accuracy", "ci_low", "ci_high")}
            for name, r in results["results"].items()
        },
    }
    write_atomic(path, (json.dumps(saved, indent=2, sort_keys=True) + "\n").encode())
    return saved[partition]["scores"]


def evaluate_cell(config: SweepConfig, cell_dir: Path, tag: str) -> dict[str, Any]:
    """The cell's adapter on the dev rows of the sweep's benchmarks (the base model's dev scores shared): what the
    cells are chosen on. Returns the scores, their partition and the eval fingerprint."""
    _, eval_config = stage_configs(config, cell_dir, tag=tag, partition="dev")
    base = base_scores(config, eval_config)
    (cell_dir / "eval.yaml").write_text(yaml.safe_dump(to_dict(eval_config), sort_keys=False))
    results = _evaluate(eval_config, f"cell {cell_dir.name}")
    return {
        "scores": scores_record(results, base),
        "partition": results["partition"],
        "eval_fingerprint": eval_fingerprint(eval_config),
    }


def eval_fingerprint(eval_config: Any) -> str:
    return digest({k: v for k, v in to_dict(eval_config).items() if k not in EVAL_CELL_FIELDS})


def run_cell(
    config: SweepConfig,
    pool: Pool,
    cell: Cell,
    cell_dir: Path,
    same_data: dict[str, Any] | None,
    max_steps: int | None,
    training_key: str,
) -> dict[str, Any]:
    """Curated rows → cell folder → cells repo → adapter (`max_steps` under fixed_steps) → evaluation on the dev rows
    → `cell.json` (written last). With `same_data` (a finished cell of the same `training_key`: the same set of rows
    and training recipe), the cell's own rows are written (in its order, publishable) and that cell's adapter, training
    and scores are reused: nothing is trained or evaluated."""
    from trainer.train_config import TrainError

    # What a killed run left behind is overwritten; its training checkpoints (save_steps) are resumed from. A test
    # evaluation of an earlier adapter of this cell no longer holds.
    for stale in ("eval", "test-eval"):
        shutil.rmtree(cell_dir / stale, ignore_errors=True)
    (cell_dir / TEST_FILE).unlink(missing_ok=True)
    cell_dir.mkdir(parents=True, exist_ok=True)
    folder = BuildFolder(cell_dir)
    folder.write_curated(cell.rows)
    if pool.build is not None:
        write_build_files(pool, cell, folder, config)
    record: dict[str, Any] = {
        "cell_id": cell.id,
        "label": cell_label(cell.settings),
        "settings": dataclasses.asdict(cell.settings),
        "require_valid": config.require_valid,
        "pool": {"source": pool.source, "fingerprint": pool.fingerprint},
        "dataset": {
            "rows": len(cell.rows),
            "fingerprint": cell.fingerprint,
            "row_set": cell.row_set,
            "ids": [row["id"] for row in cell.rows],
        },
        "training_key": training_key,
        "same_data_as": None,
        "training": None,
        "scores": {},
        "partition": "dev",
        "eval_fingerprint": None,
    }
    if not cell.rows:
        logger.warning("Cell %s: no pool row fits its settings; nothing to train", cell.id)
        record["status"] = "empty"
    elif same_data is not None:
        order = "in the same order" if same_data["dataset"]["fingerprint"] == cell.fingerprint else "in another order"
        logger.info(
            "Cell %s: the same %d rows as cell %s (%s): shares its training and results",
            cell.id,
            len(cell.rows),
            same_data["cell_id"],
            order,
        )
        record.update(
            status="ok",
            same_data_as=same_data["cell_id"],
            **{k: same_data[k] for k in ("training", "scores", "partition", "eval_fingerprint")},
        )
        record["dataset"].update({k: same_data["dataset"][k] for k in ("repo", "tag", "commit")})
    else:
        tag, commit = put_cell_data(config, cell, cell_dir)
        record["dataset"].update(repo=config.cells_repo or f"local/{config.name}-cells", tag=tag, commit=commit)
        train_config, _ = stage_configs(config, cell_dir, tag=tag, max_steps=max_steps)
        (cell_dir / "train.yaml").write_text(yaml.safe_dump(to_dict(train_config), sort_keys=False))
        try:
            summary = train_cell(config, train_config)
        except TrainError as err:
            raise SweepError(f"cell {cell.id}: {err}") from None
        record.update(status="ok", training=training_record(summary), **evaluate_cell(config, cell_dir, tag))
    return finish(cell_dir, record)


def finish(cell_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write `cell.json`, atomically and last: from then on the cell is finished."""
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_atomic(cell_dir / CELL_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


# --- the selected cells on the test rows -----------------------------------------------------------------


def read_details(path: Path) -> list[tuple[str, bool]] | None:
    """(id, correct) of every example of an evaluation's details file, in order; None when there is none."""
    if not path.is_file():
        return None
    return [(str(d["id"]), bool(d["correct"])) for d in map(json.loads, path.read_text().splitlines()) if d]


def dev_details(output_dir: Path) -> Any:
    """(record, benchmark) -> the cell's per-example dev results, for the paired comparisons of the selection."""
    return lambda record, name: read_details(
        output_dir / "cells" / adapter_of(record) / "eval" / "details" / f"{name}-adapter.jsonl"
    )


def evaluate_test(config: SweepConfig, record: dict[str, Any]) -> dict[str, Any]:
    """A selected cell's adapter on the test rows (kept in its `test.json`, so a resumed sweep does not evaluate it
    again): per benchmark its scores, the base model's test scores, and the paired difference to the base model."""
    from nanoflux.scoring import paired_comparison

    output_dir = Path(config.output_dir)
    cell_dir = output_dir / "cells" / adapter_of(record)
    _, eval_config = stage_configs(config, cell_dir, tag=record["dataset"]["tag"], partition="test")
    current = eval_fingerprint(eval_config)
    path = cell_dir / TEST_FILE
    if path.is_file() and (saved := json.loads(path.read_text()))["eval_fingerprint"] == current:
        return saved["scores"]
    base = base_scores(config, eval_config)
    logger.info("Cell %s: selected on dev, evaluating it on the test rows", record["cell_id"])
    (cell_dir / "test-eval.yaml").write_text(yaml.safe_dump(to_dict(eval_config), sort_keys=False))
    results = _evaluate(eval_config, f"cell {cell_dir.name} (test rows)")
    scores = scores_record(results, base)
    for name, score in scores.items():
        tuned = read_details(cell_dir / "test-eval" / "details" / f"{name}-adapter.jsonl")
        plain = read_details(output_dir / "base-eval-test" / "details" / f"{name}-base.jsonl")
        same = tuned is not None and plain is not None and [i for i, _ in tuned] == [i for i, _ in plain]
        score["vs_base"] = (
            paired_comparison(
                [c for _, c in tuned],
                [c for _, c in plain],
                samples=eval_config.bootstrap_samples,
                seed=eval_config.seed,
            )
            if same
            else None
        )
    write_atomic(
        path,
        (
            json.dumps({"eval_fingerprint": current, "partition": results["partition"], "scores": scores}, indent=2)
            + "\n"
        ).encode(),
    )
    return scores
