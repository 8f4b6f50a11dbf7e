"""Ablation sweeps: recipes, deterministic cell curation, the steps policy, the setup guard, the selection on dev,
the report — and, marked `slow`, a real 2x2 sweep on the packaged SmolLM2 over a pool built by the scripted roles:
every cell scored on dev, the selected cells alone on test, killed with SIGKILL after its first cell and resumed, a
lost cell marker redone alone, a cell published as the next version with the report under `ablations/`.

The pool (tests/scripted_roles.py) has three valid rows the Judge handled: q2 (L4, Defender failed), q0 (L4, Defender
right) and q4 (L3); q1 was ruled invalid. The grid L3/L4 x size 1/2 gives cells of [q4], [q4] (the same rows: reused),
[q2] and [q2, q0]."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.curation import curate
from builder.dataset import write_rows
from nanoflux.benchmarks import test_questions
from nanoflux.recipe import ConfigError, from_dict
from tests import scripted_roles
from trainer.sweep.config import CellSettings, SweepConfig, SweepError, build_sweep_config, cell_id, hub_name
from trainer.sweep.folder import prepare_output_dir
from trainer.sweep.labels import DIMENSIONS
from trainer.sweep.pool import Pool, cell_steps, curate_cell, dataset_fingerprint, grid_settings, read_pool
from trainer.sweep.publish import with_section
from trainer.sweep.report import Report, write_report
from trainer.sweep.run import main
from trainer.sweep.select import TIE_BREAK, finding, select_cells, verdict

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"
REPO = "local/nanoflux-medical"
BENCHMARKS = [("medqa", "MedQA (USMLE, 4 options)"), ("pubmedqa", "PubMedQA (PQA-L)")]
# The fixture benchmarks with their dev rows (what cells are chosen on), limited to 2 rows per partition.
SWEEP_BENCHMARKS = [
    {
        "format": "medqa",
        "path": str(FIXTURES / "medqa.jsonl"),
        "split": "test",
        "limit": 2,
        "dev": {"holdout_from": "test", "size": 3, "seed": 0},
    },
    {
        "format": "pubmedqa",
        "path": str(FIXTURES / "pubmedqa.parquet"),
        "split": "train",
        "limit": 2,
        "ids_file": str(FIXTURES / "pubmedqa_test_ids.json"),
        "dev": {"exclude_ids_file": str(FIXTURES / "pubmedqa_test_ids.json")},
    },
]


# --- helpers ---------------------------------------------------------------------------------------------


def _row(
    i: int, *, quality: int, complexity: int, failed: bool, round_: int = 0, status: str = "ok", valid: bool = True
) -> dict:
    return {
        "id": f"r{round_:02d}-a{i:04d}",
        "round": round_,
        "attack_index": i,
        "question": f"question {i}",
        "judge_status": status,
        "novel": True,
        "question_valid": valid,
        "quality_level": quality,
        "judge_complexity": complexity,
        "defender_correct": not failed,
    }


def _hand_made_pool() -> list[dict]:
    rows = [
        _row(0, quality=4, complexity=3, failed=False),
        _row(1, quality=4, complexity=2, failed=True),
        _row(2, quality=3, complexity=3, failed=True),
        _row(3, quality=4, complexity=4, failed=False, status="parse_error"),
        _row(0, quality=4, complexity=3, failed=True, round_=1),
        _row(1, quality=5, complexity=3, failed=False, round_=1),
        _row(2, quality=4, complexity=3, failed=False, round_=1, valid=False),
        _row(3, quality=4, complexity=5, failed=True, round_=1),
    ]
    return rows


def _config(**fields) -> SweepConfig:
    config = from_dict(
        SweepConfig,
        {
            "train_recipe": str(ROOT / "configs/train/local.yaml"),
            "eval_recipe": str(ROOT / "configs/eval/local.yaml"),
            **fields,
        },
    )
    config.validate()
    return config


# --- fast: recipes and settings --------------------------------------------------------------------------


def test_both_sweep_recipes_load_and_validate(monkeypatch):
    monkeypatch.chdir(ROOT)
    local = build_sweep_config("configs/sweeps/local.yaml")
    assert (local.pool, local.design, local.backend, local.require_valid) == ("outputs/local", "grid", "local", False)
    assert len(grid_settings(local)) == 4 and (local.steps_policy, local.steps) == (
        "fixed_steps",
        4,
    )  # two sizes at equal steps

    medical = build_sweep_config("configs/sweeps/medical.yaml")
    assert (medical.pool, medical.design, medical.train_recipe, medical.eval_recipe) == (
        "outputs/medical",
        "one_at_a_time",
        "configs/train/qwen3-4b-lora.yaml",
        "configs/eval/medical.yaml",
    )
    assert medical.grid.quality_levels == [[1], [2], [3], [4], [5]] and medical.grid.sizes == [25, 50, 100, 200]
    assert medical.grid.complexity_levels == [[1, 2], [3], [4, 5]]
    settings = grid_settings(medical)
    # The reference (L4, any complexity, 200, failures first) once, then every other value of each dimension.
    assert len(settings) == 1 + 4 + 3 + 3 + 1
    assert settings[0] == CellSettings([4], None, 200, True)
    assert (
        sum(s.quality_levels == [4] and s.complexity_levels is None and s.prefer_defender_failed for s in settings)
        == 4
    )  # the sizes
    assert (medical.steps_policy, medical.steps) == ("fixed_epochs", None)


def test_a_band_written_as_one_level_is_a_band_and_cell_ids_name_the_settings():
    config = build_sweep_config(
        None,
        [
            "--train_recipe",
            str(ROOT / "configs/train/local.yaml"),
            "--eval_recipe",
            str(ROOT / "configs/eval/local.yaml"),
            "--grid.quality_levels",
            "[4, [4, 3]]",
            "--grid.sizes",
            "[50, 25]",
            "--steps_policy",
            "fixed_steps",
        ],
    )
    assert config.grid.quality_levels == [[4], [4, 3]]
    assert [cell_id(s) for s in grid_settings(config)] == [
        "L4-n50-fail-first",
        "L4-n25-fail-first",
        "L3+L4-n50-fail-first",
        "L3+L4-n25-fail-first",
    ]
    # The same settings name the same cell, whatever their spelling or position in the grid.
    same = CellSettings([3, 4, 4], [3], 200, False)
    same.validate("cell")
    assert cell_id(same) == "L3+L4-c3-n200-build-order"
    multi = CellSettings([4], [2, 1, 2], 25, True)
    multi.validate("cell")
    assert cell_id(multi) == "L4-c1+c2-n25-fail-first"


def test_cell_ids_are_unique_and_safe_in_folders_and_hub_repo_names():
    from itertools import chain, combinations

    from nanoflux.recipe import is_repo_id

    bands = [
        list(c) for c in chain.from_iterable(combinations(range(1, 6), k) for k in range(1, 6))
    ]  # every non-empty band: 31
    ids = [
        cell_id(CellSettings(q, c, n, ranking))
        for q in bands
        for c in [None, *bands]
        for n in (1, 20, 200)
        for ranking in (True, False)
    ]
    assert len(ids) == 31 * 32 * 3 * 2 == len(set(ids))  # one name per setting
    for name in ids:
        assert re.fullmatch(r"L[1-5](\+L[1-5])*(-c[1-5](\+c[1-5])*)?-n\d+-(fail-first|build-order)", name), name
        assert name == Path(name).name and is_repo_id(f"org/lora-{hub_name(name)}"), (
            name
        )  # a folder name; a Hub repo name (jobs)
    assert len({hub_name(name) for name in ids}) == len(ids)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid.sizes", "[0]"], "grid.sizes[0]: out of range (got 0). Fix: use a value >= 1"),
        (
            ["--grid.quality_levels", "[6]"],
            "grid.quality_levels[0]: levels must be a non-empty list of integers 1-5 (got [6])",
        ),
        (["--grid.size", "[5]"], "grid.size: unknown field of grid (got [5]). Fix: did you mean `grid.sizes`?"),
        (["--design", "random"], "design: unknown design (got 'random'). Fix: use one of grid, one_at_a_time"),
        (["--publish_cell", "abc"], "publish_cell: publishing needs a dataset repo (got 'abc'). Fix: set push_to_hub"),
        (["--hub_dir", "outputs/hub"], "hub_dir: set without push_to_hub"),
        (
            ["--pool", "outputs/x/y", "--pool_revision", "v1"],
            "pool: with pool_revision set, the pool is a published dataset repo",
        ),
        (
            ["--train_overrides.sft.max_steps", "0"],
            "with train_overrides: sft.max_steps: out of range (got 0). Fix: use -1",
        ),
        (
            ["--train_overrides.lora.alph", "4"],
            "with train_overrides: lora.alph: unknown field of lora (got 4). Fix: did you mean `lora.alpha`?",
        ),
        (["--eval_overrides.max_new_tokens", "0"], "with eval_overrides: max_new_tokens: out of range (got 0)"),
        (["--name", "a b"], "name: not usable in folder, repo and tag names (got 'a b')"),
        (
            ["--steps_policy", "equal"],
            "steps_policy: unknown steps policy (got 'equal'). Fix: use one of fixed_epochs, fixed_steps",
        ),
        (
            ["--steps_policy", "fixed_epochs"],
            "steps: set with steps_policy fixed_epochs (got 4). Fix: set steps_policy: fixed_steps, or remove steps",
        ),
        (
            ["--steps_policy", "fixed_epochs", "--steps", "null"],
            (
                "steps_policy: fixed_epochs trains num_train_epochs in every cell, but the training recipe sets"
                " max_steps 10"
            ),
        ),
        (["--steps", "0"], "steps: out of range (got 0). Fix: use a value >= 1"),
        (
            ["--eval_overrides.benchmarks", "[{format: medqa, path: samples/benchmarks/medqa.jsonl, split: test}]"],
            "medqa has no dev split",
        ),
    ],
)
def test_bad_values_fail_naming_the_field_the_value_and_the_fix(monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as err:
        build_sweep_config("configs/sweeps/local.yaml", args)
    assert message in str(err.value)


def test_the_jobs_backend_says_what_it_needs(monkeypatch):
    import importlib.util

    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as err:
        build_sweep_config("configs/sweeps/local.yaml", ["--backend", "jobs"])
    if importlib.util.find_spec("trainer.jobs") is None:
        assert "backend: backend jobs needs trainer/jobs.py" in str(err.value) and "Fix: use backend: local" in str(
            err.value
        )
    else:
        assert "cells_repo: HF Jobs read the cells' rows from" in str(err.value)


# --- fast: curation of a cell ----------------------------------------------------------------------------


def test_curation_of_a_cell_is_the_builders_and_is_deterministic(tmp_path):
    rows = _hand_made_pool()
    settings = CellSettings([4], None, 3, True)
    settings.validate("cell")
    cell = curate_cell(rows, settings, require_valid=True)
    # Defender failures first (r00-a0001, r01-a0000, r01-a0003), then the solved one would follow: cut at size 3.
    assert [r["id"] for r in cell.rows] == ["r00-a0001", "r01-a0000", "r01-a0003"]
    assert settings.curation(True).target_size == 3  # the size dimension is the policy's target_size
    assert cell.rows == curate(rows, settings.curation(True))  # the builder's own curation, not a copy
    assert (
        cell.fingerprint
        == hashlib.sha256(b"r00-a0001\nr01-a0000\nr01-a0003").hexdigest()
        == dataset_fingerprint(cell.rows)
    )

    # Through the pool file on disk, read twice: the same rows in the same order, the same fingerprint.
    build = tmp_path / "build"
    write_rows(rows, build / "pool" / "pool.parquet", build / "pool.jsonl")
    config = _config(pool=str(build))
    first, second = read_pool(config), read_pool(config)
    assert first.fingerprint == second.fingerprint
    runs = [curate_cell(pool.rows, settings, True) for pool in (first, second, first)]
    assert [[r["id"] for r in run.rows] for run in runs] == [[r["id"] for r in cell.rows]] * 3
    assert {run.fingerprint for run in runs} == {cell.fingerprint}

    # Each setting is honoured: complexity band, build order, no validity requirement.
    def ids(settings: CellSettings, require_valid: bool = True) -> list[str]:
        settings.validate("cell")
        return [r["id"] for r in curate_cell(rows, settings, require_valid).rows]

    assert ids(CellSettings([4], [3], 10, True)) == ["r01-a0000", "r00-a0000"]
    assert ids(CellSettings([4], None, 10, False)) == ["r00-a0000", "r00-a0001", "r01-a0000", "r01-a0003"]
    assert ids(CellSettings([4], [3], 10, False), require_valid=False) == ["r00-a0000", "r01-a0000", "r01-a0002"]
    assert ids(CellSettings([1, 2], None, 10, True)) == []


def test_published_rows_are_fingerprinted_with_their_version():
    rows = [{"id": "r00-a0000", "version": "v1"}, {"id": "r00-a0000", "version": "v2"}]
    assert dataset_fingerprint(rows) == hashlib.sha256(b"v1/r00-a0000\nv2/r00-a0000").hexdigest()
    assert dataset_fingerprint(rows) != dataset_fingerprint(rows[::-1])


# --- fast: the sweep folder, the pool, the report --------------------------------------------------------


def test_a_sweep_folder_of_another_setup_is_refused_unless_fresh(tmp_path):
    config = _config(pool=str(tmp_path / "build"), output_dir=str(tmp_path / "sweep"))
    setup = {"pool": {"source": "a", "fingerprint": "1"}, "train": {"max_steps": 2}, "eval": {"limit": 2}}
    prepare_output_dir(config, setup, fresh=False)
    (tmp_path / "sweep" / "cells" / "some-cell").mkdir()
    prepare_output_dir(config, setup, fresh=False)  # the same setup reopens
    changed = {**setup, "train": {"max_steps": 3}}
    with pytest.raises(
        SweepError, match=r"different setup \(changed: train\.max_steps: 2 -> 3\)\. Fix: re-run with --fresh"
    ):
        prepare_output_dir(config, changed, fresh=False)
    prepare_output_dir(config, changed, fresh=True)
    assert not (tmp_path / "sweep" / "cells" / "some-cell").exists()


def test_a_pool_that_is_not_a_finished_build_fails_before_any_model_loads(tmp_path):
    (tmp_path / "build").mkdir()
    with pytest.raises(
        SweepError, match=r"pool: .*build holds no pool/pool\.parquet.*Fix: run `nanoflux build` to the end"
    ):
        main(_config(pool=str(tmp_path / "build"), output_dir=str(tmp_path / "sweep")))
    assert not (tmp_path / "sweep").exists()


def _record(
    cell: str,
    quality: list[int],
    size: int,
    rows: int,
    accuracies: dict[str, float | None],
    *,
    same_as: str | None = None,
) -> dict:
    scores = {
        name: {
            "title": title,
            "n": 20,
            "correct": round(20 * acc),
            "accuracy": acc,
            "ci_low": max(0.0, acc - 0.2),
            "ci_high": min(1.0, acc + 0.2),
            "unparseable": 1,
            "base": {"accuracy": 0.25, "ci_low": 0.1, "ci_high": 0.45},
        }
        for name, title in BENCHMARKS
        if (acc := accuracies.get(name)) is not None
    }
    settings = {"quality_levels": quality, "complexity_levels": None, "size": size, "prefer_defender_failed": True}
    return {
        "cell_id": cell,
        "label": f"cell {cell}",
        "settings": settings,
        "require_valid": True,
        "status": "ok" if rows else "empty",
        "dataset": {"rows": rows, "fingerprint": (same_as or cell) * 8},
        "same_data_as": same_as,
        "partition": "dev",
        "training": (
            {"steps": 4, "epochs": 0.32, "train_tokens": 1000 * rows, "wall_time_s": 1.5, "loss_last": 1.0}
            if rows
            else None
        ),
        "scores": scores,
    }


def _details(accuracies: dict[str, dict[str, float]], n: int = 20) -> dict:
    """Per-example dev results matching each cell's accuracy: the first round(n * acc) examples right."""
    return {
        (cell, name): [(str(i), i < round(n * acc)) for i in range(n)]
        for cell, by_bench in accuracies.items()
        for name, acc in by_bench.items()
    }


DEV = {
    "a": {"medqa": 0.40, "pubmedqa": 0.60},
    "b": {"medqa": 0.55, "pubmedqa": 0.60},
    "c": {"medqa": 0.55, "pubmedqa": 0.50},
}


def _records() -> list[dict]:
    return [
        _record("a", [3], 25, 25, DEV["a"]),
        _record("b", [3], 50, 50, DEV["b"]),  # ties a on pubmedqa with more rows: a is selected
        _record("c", [4], 25, 25, DEV["c"]),  # ties b on medqa with fewer rows: c is selected
        _record("d", [4], 50, 0, {}),  # no rows: no scores
        _record("e", [5], 25, 25, DEV["c"], same_as="c"),  # c's rows: the same adapter, never c's runner-up
    ]


def test_cells_are_selected_on_dev_and_compared_with_their_runner_up():
    details = _details({**DEV, "e": DEV["c"]})
    selection = select_cells(
        _records(), BENCHMARKS, lambda record, name: details.get((record["cell_id"], name)), samples=500
    )
    medqa, pubmedqa = selection["benchmarks"]["medqa"], selection["benchmarks"]["pubmedqa"]
    assert (medqa["cell"], medqa["runner_up"], pubmedqa["cell"], pubmedqa["runner_up"]) == ("c", "b", "a", "b")
    # Equal dev accuracy on the same examples: a paired difference of 0, not significant.
    assert (
        medqa["comparison"]["method"] == "paired bootstrap + McNemar"
        and medqa["comparison"]["delta"] == 0
        and not medqa["comparison"]["significant"]
    )
    overall = selection["overall"]  # macro-mean dev accuracy: a .50, b .575, c .525
    assert (overall["cell"], overall["runner_up"], overall["dev_macro_accuracy"]) == ("b", "c", pytest.approx(0.575))
    assert (
        not overall["comparison"]["significant"]
        and overall["comparison"]["ci_low"] <= 0 <= overall["comparison"]["ci_high"]
    )
    assert selection["test_cells"] == ["b", "c", "a"]  # overall first, then each benchmark's; d and e are never tested
    # Every other trained cell is compared (e is c's adapter: named as sharing it, never compared), ties are named, and
    # the rule that decided is recorded.
    assert selection["tie_break"] == TIE_BREAK
    assert (medqa["decided_by"], medqa["tied"], medqa["same_adapter"], medqa["not_significant"]) == (
        "rows",
        ["b"],
        ["e"],
        ["b", "a"],
    )
    assert (pubmedqa["decided_by"], pubmedqa["tied"], pubmedqa["not_significant"]) == ("rows", ["b"], ["b", "c"])
    assert set(medqa["comparisons"]) == {"b", "a"} and medqa["comparisons"]["a"]["delta"] == pytest.approx(0.15)
    assert (overall["decided_by"], overall["tied"], overall["not_significant"]) == ("accuracy", [], ["c", "a"])
    assert verdict(medqa) == "no significant difference from `b`, `a`"
    said = finding(medqa, "MedQA", medqa["dev_accuracy"])
    assert said.startswith(
        "MedQA: `c` (`e` shares its training: the same rows) ties with `b` at 55.0% on dev; it was chosen by the"
        " tie-break: fewer rows."
    )
    assert "**No significant difference** from `b` (+0.0 [+0.0, +0.0] points, McNemar p = 1), `a` (+15.0 [" in said
    # The choice does not depend on the order of the records (the tie-break is rows, then the cell id, never position).
    for seed in range(3):
        shuffled = random.Random(seed).sample(_records(), 5)
        again = select_cells(
            shuffled, BENCHMARKS, lambda record, name: details.get((record["cell_id"], name)), samples=500
        )
        assert {k: v["cell"] for k, v in again["benchmarks"].items()} == {"medqa": "c", "pubmedqa": "a"} and again[
            "overall"
        ]["cell"] == "b"
    # Equal accuracy and equal rows on another adapter: the first cell id in alphabetical order, said so.
    twins = [_record("z", [3], 25, 25, {"medqa": 0.5}), _record("y", [4], 25, 25, {"medqa": 0.5})]
    twin = select_cells(twins, BENCHMARKS[:1], lambda record, name: None)["benchmarks"]["medqa"]
    assert (twin["cell"], twin["decided_by"], twin["tied"]) == ("y", "cell_id", ["z"])
    assert "chosen by the tie-break: the first cell id in alphabetical order" in finding(
        twin, "MedQA", 0.5
    ) and "the 95% CIs overlap" in finding(twin, "MedQA", 0.5)

    # A clear difference on 100 paired examples is significant; without per-example results, the CIs decide.
    strong = [_record("x", [4], 25, 25, {"medqa": 0.9}), _record("y", [3], 25, 25, {"medqa": 0.5})]
    for record in strong:
        record["scores"]["medqa"].update(
            n=100,
            ci_low=record["scores"]["medqa"]["accuracy"] - 0.08,
            ci_high=record["scores"]["medqa"]["accuracy"] + 0.08,
        )
    details = _details({"x": {"medqa": 0.9}, "y": {"medqa": 0.5}}, n=100)
    paired = select_cells(
        strong, BENCHMARKS[:1], lambda record, name: details[(record["cell_id"], name)], samples=500
    )["benchmarks"]["medqa"]["comparison"]
    assert paired["significant"] and paired["p_value"] < 1e-6 and paired["ci_low"] > 0.25
    clear = select_cells(strong, BENCHMARKS[:1], lambda record, name: details[(record["cell_id"], name)], samples=500)[
        "benchmarks"
    ]["medqa"]
    assert clear["not_significant"] == [] and verdict(clear).startswith(
        "significantly better than every other cell (runner-up `y`: McNemar p = "
    )
    assert "It is significantly better than every other cell on dev (runner-up `y`: +40.0 [" in finding(
        clear, "MedQA", 0.9
    )
    unpaired = select_cells(strong, BENCHMARKS[:1], lambda record, name: None)["benchmarks"]["medqa"]["comparison"]
    assert unpaired["method"] == "95% CI overlap" and unpaired["significant"]
    overlapping = select_cells(_records(), BENCHMARKS, lambda record, name: None)
    assert (
        overlapping["benchmarks"]["medqa"]["comparison"]["method"] == "95% CI overlap"
        and not overlapping["benchmarks"]["medqa"]["comparison"]["significant"]
    )
    assert overlapping["overall"]["comparison"] is None  # reported as not compared, never as a difference
    assert verdict(overlapping["overall"]).startswith(
        "not compared with `c`"
    ) and "the data do not show it is better" in finding(overlapping["overall"], "Overall", 0.575)


def test_the_report_selects_on_dev_and_reports_test_for_the_selected_cells_only(tmp_path):
    import pyarrow.parquet as pq

    records = _records()
    config = _config(pool=str(tmp_path), output_dir=str(tmp_path / "sweep"), name="demo")
    (tmp_path / "sweep").mkdir()
    setup = {
        "train": {
            "model": "m",
            "lora": {"r": 8},
            "sft": {
                "learning_rate": 2e-4,
                "max_steps": -1,
                "num_train_epochs": 1,
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "seed": 0,
            },
        },
        "eval": {"model": "m", "max_new_tokens": 8},
    }
    details = _details({**DEV, "e": DEV["c"]})
    selection = select_cells(
        records, BENCHMARKS, lambda record, name: details.get((record["cell_id"], name)), samples=500
    )
    test_score = {
        "n": 40,
        "correct": 20,
        "accuracy": 0.5,
        "ci_low": 0.35,
        "ci_high": 0.65,
        "unparseable": 0,
        "base": {"accuracy": 0.3, "ci_low": 0.15, "ci_high": 0.45},
        "vs_base": {"n": 40, "delta": 0.2, "ci_low": 0.05, "ci_high": 0.35, "wins": 10, "losses": 2, "p_value": 0.039},
    }
    test = {cell: {name: dict(test_score) for name, _ in BENCHMARKS} for cell in selection["test_cells"]}
    pool = Pool([{}] * 7, "outputs/x", "f" * 64)
    files = write_report(Report(config, pool, records, BENCHMARKS, setup, selection, test))
    assert sorted(p.name for p in files) == [
        "quality_levels.png",
        "results.md",
        "results.parquet",
        "selection.json",
        "size.png",
    ]
    for png in (tmp_path / "sweep").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    table = pq.read_table(tmp_path / "sweep" / "results.parquet").to_pylist()
    dev = [row for row in table if row["partition"] == "dev"]
    tested = [row for row in table if row["partition"] == "test"]
    assert len(dev) == 10 and {tuple(DIMENSIONS)} <= {tuple(k for k in row if k in DIMENSIONS) for row in table}
    assert {row["cell_id"] for row in tested} == {"a", "b", "c"} and len(
        tested
    ) == 6  # test rows: the selected cells only
    assert {(row["benchmark"], row["cell_id"]) for row in dev if row["selected"]} == {
        ("medqa", "c"),
        ("pubmedqa", "a"),
    }
    assert {row["cell_id"] for row in table if row["selected_overall"]} == {"b"}
    empty = [row for row in table if row["cell_id"] == "d"]
    assert [row["accuracy"] for row in empty] == [None, None] and {row["rows"] for row in empty} == {0}
    assert (
        table[0]["quality_levels"] == [3]
        and table[0]["complexity_levels"] is None
        and table[0]["train_tokens"] == 25000
    )

    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "Selected on dev, reported on test" in md and "test accuracy is reported for the selected cells only" in md
    assert (
        "| MedQA (USMLE, 4 options) | `c` | cell c | 25 | 55.0 [35.0, 75.0] | no significant difference from `b`, `a`;"
        " runner-up `b`: +0.0 [" in md
    )
    # What the dev data support: the tie, the rule that broke it, every cell within the noise; which cells shared a
    # training.
    assert (
        "Selection rule: the highest dev accuracy (overall: the highest macro-mean dev accuracy over the benchmarks);"
        f" {TIE_BREAK}." in md
    )
    assert (
        "- **MedQA (USMLE, 4 options)**: `c` (`e` shares its training: the same rows) ties with `b` at 55.0% on dev;"
        " it was chosen by the tie-break: fewer rows." in md
    )
    assert (
        "- **Overall** (macro-mean): `b` has the highest dev score (57.5%). **No significant difference** from `c`"
        " (+5.0 [" in md
    )
    assert (
        "## Shared training" in md
        and "- `c` trained on 25 rows; shared by `e` (the same order)" in md
        and "| `e` (shares `c`'s training) |" in md
    )
    chosen = json.loads((tmp_path / "sweep" / "selection.json").read_text())
    assert chosen["tie_break"] == TIE_BREAK and chosen["benchmarks"]["medqa"]["not_significant"] == ["b", "a"]
    assert chosen["shared_training"] == [
        {"trained": "c", "rows": 25, "shared_by": [{"cell": "e", "same_order": True}]}
    ]
    assert (
        "| 50.0 [35.0, 65.0] | 30.0 |" in md
    )  # the selected cell's test accuracy and the base model's on the same rows
    assert (
        "**Overall** (highest macro-mean dev accuracy over the benchmarks): `b`" in md
        and "| +20.0 [+5.0, +35.0] points, McNemar p = 0.039 |" in md
    )
    assert "✓ 55.0 [35.0, 75.0]" in md and "![dev accuracy vs dataset size (rows requested)](size.png)" in md
    assert (
        "swept: reasoning-quality band, dataset size (rows requested); fixed: complexity all, ranking failed first"
        in md
    )
    assert (
        "steps policy `fixed_epochs`: 1 epochs in every cell" in md
        and "dataset size is confounded with training steps" in md
    )
    assert (
        "--publish_cell b --push_to_hub" in md and "best" not in md.lower()
    )  # the cell chosen on dev, never "the best on test"


def test_plot_grids_fit_the_benchmarks_and_a_score_of_zero_stays_visible():
    from trainer.sweep.plots import Y_LIMITS, dimension_figure, panel_grid

    # No empty slot where a grid of at most 5 columns has none: 4 benchmarks are 2x2, never 3 columns with 2 empty.
    assert [panel_grid(n) for n in range(1, 13)] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 2),
        (1, 5),
        (2, 3),
        (2, 4),
        (2, 4),
        (3, 3),
        (2, 5),
        (3, 4),
        (3, 4),
    ]
    for count in (3, 4, 7):
        benchmarks = [(f"b{i}", f"Bench {i}") for i in range(count)]
        table = [
            {
                "cell_id": f"L4-n{size}-fail-first",
                "quality_levels": [4],
                "complexity_levels": None,
                "size": size,
                "prefer_defender_failed": True,
                "benchmark": name,
                "partition": "dev",
                "accuracy": accuracy,
                "ci_low": 0.0,
                "ci_high": accuracy + 0.1,
                "base_accuracy": 0.0,
                "selected": size == 50,
            }
            for name, _ in benchmarks
            for size, accuracy in ((25, 0.0), (50, 0.4))
        ]
        figure = dimension_figure(table, "size", benchmarks, "demo")
        figure.canvas.draw()
        rows, columns = panel_grid(count)
        panels = [axes for axes in figure.axes if axes.axison]
        assert len(panels) == count and len(figure.axes) == rows * columns, (
            count
        )  # every slot used; a spare one holds the legend
        assert {axes.get_subplotspec().get_geometry()[:2] for axes in figure.axes} == {(rows, columns)}
        if rows * columns > count:
            (spare,) = [axes for axes in figure.axes if not axes.axison]
            assert spare.get_legend() is not None
        for axes in panels:
            assert axes.get_ylim() == Y_LIMITS and Y_LIMITS[0] < 0
            assert any(
                list(line.get_ydata()) == [0, 0] and line.get_color() == "black" for line in axes.lines
            )  # the line at 0
            (points,) = [line for line in axes.lines if line.get_marker() == "o"]  # every point has a marker
            zero = axes.transData.transform((points.get_xdata()[0], 0.0))[1] - axes.bbox.y0
            radius = points.get_markersize() * figure.dpi / 72 / 2
            assert list(points.get_ydata())[0] == 0.0 and zero > radius, (
                zero,
                radius,
            )  # a 0 point is drawn whole, above the axis
            assert [t.get_text() for t in axes.texts] == ["L4-n50-fail-first"]  # the selected cell, named by its id


# --- fast: the whole sweep with stand-ins for training and evaluation ------------------------------------

# Dev and test accuracy of an adapter trained on this many rows (the base model: 20%), on 20 examples per benchmark:
# the 2-row and 4-row cells tie, the 1-row cell is clearly behind.
FAKE_ACCURACY = {None: 0.2, 1: 0.3, 2: 0.6, 4: 0.6}


@pytest.fixture
def fake_compute(monkeypatch):
    """`trainer.sweep.cells` with training and evaluation replaced by deterministic stand-ins (the rest is real:
    curation, cell folders, the cells repo, the selection, the report): returns the list of trainings, one cell folder
    each."""
    import trainer.sweep.cells as sweep_cells

    trainings: list[str] = []

    def train(config, train_config):
        cell_dir = Path(train_config.output_dir).parent
        trainings.append(cell_dir.name)
        rows = len((cell_dir / "curated.jsonl").read_text().splitlines())
        adapter = Path(train_config.output_dir)
        adapter.mkdir(parents=True)
        (adapter / "fake.json").write_text(json.dumps({"rows": rows}))
        return {
            "steps": train_config.sft["max_steps"],
            "epochs": 1.0,
            "train_tokens": 100 * rows,
            "wall_time_s": 0.1,
            "device": "cpu",
            "gpu": None,
            "compute": {"device_seconds": 0.1, "device_name": "cpu"},
            "loss": {"first": 2.0, "last": 1.0},
            "dataset": {"pinned": f"{train_config.dataset_name}@{train_config.revision}"},
        }

    def evaluate(eval_config, what):
        variant = "adapter" if eval_config.adapter else "base"
        rows = (
            json.loads((Path(eval_config.adapter) / "fake.json").read_text())["rows"] if eval_config.adapter else None
        )
        right = round(20 * FAKE_ACCURACY[rows])
        details = Path(eval_config.output_dir) / "details"
        details.mkdir(parents=True, exist_ok=True)
        results = {"partition": eval_config.partition, "benchmarks": [], "results": {}}
        for bench in eval_config.benchmarks:
            lines = [json.dumps({"id": f"{eval_config.partition}-{i}", "correct": i < right}) for i in range(20)]
            (details / f"{bench.name}-{variant}.jsonl").write_text("\n".join(lines) + "\n")
            score = {
                "n": 20,
                "correct": right,
                "accuracy": right / 20,
                "ci_low": max(0.0, right / 20 - 0.2),
                "ci_high": min(1.0, right / 20 + 0.2),
                "unparseable": 0,
            }
            results["benchmarks"].append({"name": bench.name, "title": bench.title})
            results["results"][bench.name] = {variant: score}
        return results

    monkeypatch.setattr(sweep_cells, "train_cell", train)
    monkeypatch.setattr(sweep_cells, "_evaluate", evaluate)
    monkeypatch.setattr(sweep_cells, "write_build_files", lambda *args: None)  # the hand-made pool has no build recipe
    return trainings


def test_cells_with_the_same_set_of_rows_train_once_and_the_sweep_shows_its_progress(
    tmp_path, fake_compute, caplog, monkeypatch
):
    import trainer.sweep.run

    build = tmp_path / "build"
    write_rows(_hand_made_pool(), build / "pool" / "pool.parquet", build / "pool.jsonl")
    config = _config(
        pool=str(build),
        output_dir=str(tmp_path / "sweep"),
        name="fake",
        steps_policy="fixed_steps",
        steps=2,
        eval_overrides={"benchmarks": SWEEP_BENCHMARKS},
        grid={"quality_levels": [[3], [4]], "sizes": [2, 10], "prefer_defender_failed": [True, False]},
    )
    monkeypatch.setattr(trainer.sweep.run, "PROGRESS_INTERVAL_S", 0.0)  # a line per finished cell
    with caplog.at_level("INFO"):
        summary = main(config)

    # 8 cells, 4 sets of rows: L3 is the one row r00-a0002 in every cell; L4 at size 10 is the same 4 rows in two
    # orders.
    cells = [
        "L3-n2-fail-first",
        "L3-n2-build-order",
        "L3-n10-fail-first",
        "L3-n10-build-order",
        "L4-n2-fail-first",
        "L4-n2-build-order",
        "L4-n10-fail-first",
        "L4-n10-build-order",
    ]
    assert summary["cells"] == cells and sorted(p.name for p in (tmp_path / "sweep" / "cells").iterdir()) == sorted(
        cells
    )
    assert (
        fake_compute
        == summary["ran"]
        == ["L3-n2-fail-first", "L4-n2-fail-first", "L4-n2-build-order", "L4-n10-fail-first"]
    )  # 4 trainings
    assert summary["reused"] == ["L3-n2-build-order", "L3-n10-fail-first", "L3-n10-build-order", "L4-n10-build-order"]
    records = {cell: json.loads((tmp_path / "sweep" / "cells" / cell / "cell.json").read_text()) for cell in cells}
    shared = records["L4-n10-build-order"]
    assert (
        shared["same_data_as"] == "L4-n10-fail-first"
        and shared["training_key"] == records["L4-n10-fail-first"]["training_key"]
    )
    assert (
        shared["dataset"]["ids"]
        == ["r00-a0000", "r00-a0001", "r01-a0000", "r01-a0003"]
        != records["L4-n10-fail-first"]["dataset"]["ids"]
    )
    assert (
        shared["dataset"]["fingerprint"] != records["L4-n10-fail-first"]["dataset"]["fingerprint"]
    )  # its own rows, in its order
    assert (
        shared["scores"] == records["L4-n10-fail-first"]["scores"]
        and not (tmp_path / "sweep" / "cells" / "L4-n10-build-order" / "adapter").exists()
    )
    assert (
        records["L4-n2-build-order"]["training_key"] != records["L4-n2-fail-first"]["training_key"]
    )  # other rows: trained

    # The report: the three 60% cells tie on dev; the 2-row cells win on rows, then by cell id; every tie is named.
    chosen = json.loads((tmp_path / "sweep" / "selection.json").read_text())
    medqa = chosen["benchmarks"]["medqa"]
    assert (medqa["cell"], medqa["decided_by"], medqa["tied"]) == (
        "L4-n2-build-order",
        "cell_id",
        ["L4-n2-fail-first", "L4-n10-build-order", "L4-n10-fail-first"],
    )
    assert medqa["not_significant"] == ["L4-n2-fail-first", "L4-n10-build-order"] and list(
        medqa["comparisons"]
    ) == medqa["not_significant"] + ["L3-n10-build-order"]
    assert medqa["comparisons"]["L3-n10-build-order"][
        "significant"
    ]  # 60% vs 30% on the same 20 examples (one comparison per adapter)
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "- `L4-n10-fail-first` trained on 4 rows; shared by `L4-n10-build-order` (another order)" in md
    assert (
        "- `L3-n2-fail-first` trained on 1 row; shared by `L3-n2-build-order` (the same order), `L3-n10-fail-first`"
        " (the same order)" in md
    )
    assert (
        "ties with `L4-n2-fail-first`, `L4-n10-build-order`, `L4-n10-fail-first` at 60.0% on dev; it was chosen by the"
        " tie-break: the first cell id" in md
    )
    assert sorted(p.name for p in (tmp_path / "sweep").glob("*.png")) == [
        "prefer_defender_failed.png",
        "quality_levels.png",
        "size.png",
    ]

    # Progress across the cells: a log line per finished cell off a terminal (cells done / total, the cell, an ETA).
    lines = [r.getMessage() for r in caplog.records if r.name == "nanoflux.progress"]
    assert lines[0].startswith("sweep fake [L3-n2-fail-first]: 1/8 cells (12%), ") and "ETA " in lines[0]
    assert any(line.startswith("sweep fake [L4-n10-build-order]: 8/8 cells (100%)") for line in lines)
    assert "Sweep fake: 8 cells, 0 finished before, 8 to run now (4 trainings" in caplog.text

    # Resumed: nothing to do. A lost marker of a shared training: that cell trains again, the cell sharing it follows.
    caplog.clear()
    with caplog.at_level("INFO"):
        again = main(config)
    assert (again["ran"], again["reused"], len(again["skipped"])) == ([], [], 8) and len(fake_compute) == 4
    assert "8 finished before, 0 to run now (0 trainings" in caplog.text
    (tmp_path / "sweep" / "cells" / "L4-n10-fail-first" / "cell.json").unlink()
    shutil.rmtree(tmp_path / "sweep" / "cells" / "L4-n10-fail-first" / "adapter")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())  # on a terminal: a tqdm bar, no log lines
    caplog.clear()
    with caplog.at_level("INFO"):
        third = main(config)
    assert (third["ran"], third["reused"], len(fake_compute)) == (["L4-n10-fail-first"], ["L4-n10-build-order"], 5)
    bar = sys.stderr.getvalue()
    assert "sweep fake [L4-n10-build-order]" in bar and "2/2" in bar and "cell/s" in bar
    assert not [r for r in caplog.records if r.name == "nanoflux.progress"]


def test_fixed_steps_trains_every_cell_the_steps_of_the_largest_one(tmp_path):
    from types import SimpleNamespace

    sft = {
        "max_steps": -1,
        "num_train_epochs": 3.0,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
    }
    train = SimpleNamespace(sft=sft)
    cells = [SimpleNamespace(rows=[{}] * n) for n in (5, 25, 17)]
    config = _config(pool=str(tmp_path), steps_policy="fixed_steps")
    assert (
        cell_steps(config, train, cells) == 3 * 4
    )  # 25 rows: 7 batches of 4, 4 optimizer steps (accumulation 2) per epoch
    assert cell_steps(_config(pool=str(tmp_path), steps_policy="fixed_steps", steps=9), train, cells) == 9
    assert cell_steps(config, SimpleNamespace(sft={**sft, "max_steps": 6}), cells) == 6
    assert cell_steps(_config(pool=str(tmp_path)), train, cells) is None  # fixed_epochs: the recipe's epochs


def test_a_pool_row_that_asks_a_test_or_dev_question_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import transformers

    from nanoflux.benchmarks import load_benchmark

    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded")
    )
    dev_question = load_benchmark(_medqa(), partition="dev")[0].question
    for leaked, partition in ((dev_question, "dev"), (next(iter(test_questions(_medqa()).values())), "test")):
        rows = _hand_made_pool()
        rows[1]["question"] = leaked  # r00-a0001: L4, Defender failed, in every cell below
        build = tmp_path / partition / "build"
        write_rows(rows, build / "pool" / "pool.parquet", build / "pool.jsonl")
        config = _config(
            pool=str(build),
            output_dir=str(tmp_path / partition / "sweep"),
            steps_policy="fixed_steps",
            eval_overrides={"benchmarks": SWEEP_BENCHMARKS},
            grid={"quality_levels": [[4]], "sizes": [3]},
        )
        with pytest.raises(
            SweepError,
            match=(
                r"pool: the cells' training data \(3 rows\) holds 1 question\(s\) of the evaluation's test and dev"
                rf" rows \(medqa {partition} row"
            ),
        ):
            main(config)
        assert not (tmp_path / partition / "sweep").exists()


def _medqa() -> Any:
    from nanoflux.benchmarks import BenchmarkConfig

    bench = from_dict(BenchmarkConfig, SWEEP_BENCHMARKS[0])
    bench.validate("medqa")
    return bench


def test_the_card_section_is_replaced_not_repeated():
    card = "---\nlicense: apache-2.0\n---\n# Data\n\n## Citation\n\ncite me\n"
    once = with_section(card, "## Ablations: demo", "## Ablations: demo\n\nfirst\n")
    twice = with_section(once, "## Ablations: demo", "## Ablations: demo\n\nsecond\n")
    assert twice.count("## Ablations: demo") == 1 and "second" in twice and "first" not in twice
    assert twice.startswith("---\nlicense: apache-2.0\n---\n# Data\n\n## Citation\n\ncite me\n")
    other = with_section(twice, "## Ablations: other", "## Ablations: other\n\nthird\n")
    assert "second" in other and "third" in other


# --- slow: a real sweep on the packaged SmolLM2 ----------------------------------------------------------


@pytest.fixture(scope="module")
def pool_build(tmp_path_factory):
    """A finished build of the scripted roles (loopback TGI): its pool has rows in L3 and L4."""
    from huggingface_hub.utils import _http

    from builder import build
    from builder.config import BuildConfig
    from tests.tgi_server import LOOPBACK_HOSTS, ScriptedTGI

    out = tmp_path_factory.mktemp("pool") / "build"
    original = _http.async_hf_request_event_hook

    async def loopback_only(request):  # as the `allow_loopback_offline` fixture does, for this module's scope
        return None if request.url.host in LOOPBACK_HOSTS else await original(request)

    with pytest.MonkeyPatch.context() as mp, ScriptedTGI(responder=scripted_roles.respond) as server:
        mp.setattr(_http, "async_hf_request_event_hook", loopback_only)
        config = from_dict(BuildConfig, scripted_roles.recipe(server.url, str(out)))
        config.validate()
        summary = build.main(config)
    assert summary["judged_ok"] == 4  # q0, q1 (ruled invalid: never curated here), q2, q4
    return out


def test_a_cells_folder_is_a_finished_build_curated_by_the_cells_policy(pool_build, tmp_path):
    """A cell's folder is a BuildFolder: its config is the pool build's with the cell's curation policy (its size as
    `curation.target_size`), its identity the pool build's (curation is not part of it), and publish reads it."""
    from builder import BuildFolder, publish
    from trainer.sweep.cells import write_build_files

    config = _config(pool=str(pool_build), output_dir=str(tmp_path / "sweep"))
    pool = read_pool(config)
    settings = CellSettings([3, 4], None, 1, True)
    settings.validate("cell")
    cell = curate_cell(pool.rows, settings, config.require_valid)
    folder = BuildFolder(tmp_path / "cell")
    assert not folder.finished
    folder.write_curated(cell.rows)
    write_build_files(pool, cell, folder, config)

    assert folder.finished and len(cell.rows) == 1
    written = yaml.safe_load(folder.file(BuildFolder.CONFIG).read_text())
    assert "target_size" not in written and written["curation"] == dataclasses.asdict(settings.curation(True))
    assert written["curation"]["target_size"] == 1 and written["output_dir"] == str(folder)
    assert (folder.read_summary()["kept"], folder.read_summary()["target_size"]) == (1, 1)
    identity = json.loads(folder.file(BuildFolder.RUN).read_text())
    assert identity["fingerprint"] == json.loads(pool.build.file(BuildFolder.RUN).read_text())["fingerprint"]
    _, _, rows = publish.read_build(folder.path)
    assert [row["id"] for row in rows] == [row["id"] for row in cell.rows]


def _sweep_recipe(pool: Path, output_dir: Path) -> dict:
    """A 2x2 grid (quality L3/L4 x size 1/2), 2 optimizer steps per cell (fixed_steps), 2 fixture benchmarks of 2 rows
    per partition (dev: what cells are chosen on; test: the selected cells)."""
    return {
        "name": "tiny",
        "pool": str(pool),
        "grid": {"quality_levels": [3, 4], "sizes": [1, 2]},
        "steps_policy": "fixed_steps",
        "train_recipe": str(ROOT / "configs/train/local.yaml"),
        "train_overrides": {"sft": {"max_steps": 2, "max_length": 256}},
        "eval_recipe": str(ROOT / "configs/eval/local.yaml"),
        "eval_overrides": {
            "benchmarks": SWEEP_BENCHMARKS,
            "max_new_tokens": 4,
            "batch_size": 2,
            "bootstrap_samples": 200,
        },
        "output_dir": str(output_dir),
    }


def _cell_files(sweep: Path) -> dict[str, bytes]:
    return {path.parent.name: path.read_bytes() for path in sorted((sweep / "cells").glob("*/cell.json"))}


def _stable(table: list[dict]) -> list[dict]:
    """The report minus what differs between two runs of the same cell (its wall time)."""
    return [{k: v for k, v in row.items() if k != "train_wall_time_s"} for row in table]


@pytest.fixture(scope="module")
def killed_and_resumed(pool_build, tmp_path_factory, embedded_model_dir):
    """The sweep in a subprocess, killed with SIGKILL as soon as its first cell has finished; then resumed here."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "sweep"
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(_sweep_recipe(pool_build, sweep)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "nanoflux.cli", "sweep", "--config", str(recipe)],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 900  # a loaded 2-core machine can take minutes for the first cell
    while time.monotonic() < deadline and not _cell_files(sweep):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _cell_files(sweep)
    assert 1 <= len(before) < 4, "the kill must land mid-sweep"
    mtimes = {
        cell: (sweep / "cells" / cell / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
        for cell in before
        if (sweep / "cells" / cell / "adapter").exists()
    }

    config = build_sweep_config(recipe)
    summary = main(config)
    return {"recipe": recipe, "sweep": sweep, "config": config, "before": before, "mtimes": mtimes, "summary": summary}


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_cells(killed_and_resumed):
    state = killed_and_resumed
    summary, before, sweep = state["summary"], state["before"], state["sweep"]
    assert len(summary["cells"]) == 4
    assert summary["skipped"] == [cell for cell in summary["cells"] if cell in before]
    assert sorted(summary["ran"] + summary["reused"]) == sorted(
        cell for cell in summary["cells"] if cell not in before
    )
    after = _cell_files(sweep)
    assert set(after) == set(summary["cells"])
    assert {cell: after[cell] for cell in before} == before  # finished records untouched
    for cell, mtime in state["mtimes"].items():  # and their adapters not retrained
        assert (sweep / "cells" / cell / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    # The base model was scored once per partition for the whole sweep (dev before the kill), never per cell.
    base = json.loads((sweep / "base.json").read_text())
    assert set(base) == {"dev", "test"}
    for partition in ("dev", "test"):
        assert sorted((sweep / f"base-eval-{partition}" / "details").glob("*-base.jsonl"))
    assert not list((sweep / "cells").glob("*/*eval/details/*-base.jsonl"))
    for cell in after:
        record = json.loads(after[cell])
        if record["status"] == "ok":
            assert {name: score["base"] for name, score in record["scores"].items()} == base["dev"]["scores"]


@pytest.mark.slow
def test_each_cell_records_its_settings_rows_compute_and_scores(killed_and_resumed, pool_build):
    from localhub import RepoStore

    state = killed_and_resumed
    sweep, cells = state["sweep"], state["summary"]["cells"]
    records = {cell: json.loads((sweep / "cells" / cell / "cell.json").read_text()) for cell in cells}
    questions = {r["id"]: r["question"] for r in map(json.loads, (pool_build / "pool.jsonl").read_text().splitlines())}
    by_settings = {(tuple(r["settings"]["quality_levels"]), r["settings"]["size"]): r for r in records.values()}
    q = scripted_roles.QUESTIONS
    expected = {((3,), 1): [q[4]], ((3,), 2): [q[4]], ((4,), 1): [q[2]], ((4,), 2): [q[2], q[0]]}
    for key, record in by_settings.items():
        assert [questions[i] for i in record["dataset"]["ids"]] == expected[key], key
        assert (
            record["dataset"]["fingerprint"]
            == hashlib.sha256("\n".join(record["dataset"]["ids"]).encode()).hexdigest()
        )
        assert (
            record["status"] == "ok"
            and set(record["scores"]) == {"medqa", "pubmedqa"}
            and record["partition"] == "dev"
        )
        for score in record["scores"].values():
            assert (
                score["n"] == 2
                and score["ci_low"] <= score["accuracy"] <= score["ci_high"]
                and 0 <= score["base"]["accuracy"] <= 1
            )
        assert (
            record["training"]["steps"] == 2
            and record["training"]["train_tokens"] > 0
            and record["training"]["device_seconds"] > 0
        )
        curated = [
            json.loads(line)["id"]
            for line in (sweep / "cells" / record["cell_id"] / "curated.jsonl").read_text().splitlines()
        ]
        assert curated == record["dataset"]["ids"]
    # L3 with size 1 and size 2 is the same single row: trained once, the other cell reuses its results.
    l3 = [by_settings[(3,), 1], by_settings[(3,), 2]]
    assert l3[1]["same_data_as"] == l3[0]["cell_id"] and l3[1]["scores"] == l3[0]["scores"]
    assert not (sweep / "cells" / l3[1]["cell_id"] / "adapter").exists()

    # Training read the cell's rows at their tag in the cells repo, and pinned that commit.
    trained = by_settings[(4,), 2]
    store = RepoStore(sweep / "cells-hub")
    assert store.resolve("dataset", "local/tiny-cells", trained["dataset"]["tag"]) == trained["dataset"]["commit"]
    assert (
        trained["training"]["dataset"]
        == f"local/tiny-cells@{trained['dataset']['tag']}@{trained['dataset']['commit']}"
    )
    train_yaml = yaml.safe_load((sweep / "cells" / trained["cell_id"] / "train.yaml").read_text())
    assert (train_yaml["revision"], train_yaml["sft"]["max_steps"], train_yaml["push_to_hub"]) == (
        trained["dataset"]["tag"],
        2,
        None,
    )


@pytest.mark.slow
def test_the_sweep_selects_on_dev_and_evaluates_only_the_selected_cells_on_test(killed_and_resumed, pool_build):
    state = killed_and_resumed
    sweep, summary = state["sweep"], state["summary"]
    tested = summary["tested"]
    assert tested and tested[0] == summary["selected_overall"] and set(summary["selected"].values()) <= set(tested)
    records = {cell: json.loads((sweep / "cells" / cell / "cell.json").read_text()) for cell in summary["cells"]}
    trained = {cell for cell, r in records.items() if r["same_data_as"] is None and r["status"] == "ok"}
    test_ids: dict[str, set[str]] = {}
    for cell in trained:
        # Every cell's own evaluation used the dev partition...
        dev = json.loads((sweep / "cells" / cell / "eval" / "results.json").read_text())
        assert dev["partition"] == "dev" and dev["variants"] == ["adapter"]
        # ...and only the selected cells were evaluated on test.
        test_file = sweep / "cells" / cell / "test-eval" / "results.json"
        assert test_file.exists() == (cell in {records[c]["same_data_as"] or c for c in tested}), cell
        if test_file.exists():
            results = json.loads(test_file.read_text())
            assert (
                results["partition"] == "test"
                and json.loads((sweep / "cells" / cell / "test.json").read_text())["partition"] == "test"
            )
            for name in ("medqa", "pubmedqa"):
                ids = {
                    d["id"]
                    for d in map(
                        json.loads,
                        (sweep / "cells" / cell / "test-eval" / "details" / f"{name}-adapter.jsonl")
                        .read_text()
                        .splitlines(),
                    )
                }
                test_ids.setdefault(name, set()).update(ids)
    base = {p: json.loads((sweep / f"base-eval-{p}" / "results.json").read_text()) for p in ("dev", "test")}
    assert (base["dev"]["partition"], base["test"]["partition"]) == ("dev", "test")
    for name in ("medqa", "pubmedqa"):
        dev_ids = {
            d["id"]
            for d in map(
                json.loads, (sweep / "base-eval-dev" / "details" / f"{name}-base.jsonl").read_text().splitlines()
            )
        }
        assert dev_ids and test_ids[name] and not dev_ids & test_ids[name]  # the choice never saw a test row
    # No training row asks a question of the evaluation's test (or dev) rows.
    questions = {r["id"]: r["question"] for r in map(json.loads, (pool_build / "pool.jsonl").read_text().splitlines())}
    trained_on = {questions[i].strip().lower() for r in records.values() for i in r["dataset"]["ids"]}
    evaluated = {q.strip().lower() for q in test_questions(_medqa()).values()}
    assert trained_on and not trained_on & evaluated


@pytest.mark.slow
def test_the_report_has_the_table_plots_and_the_selected_cells(killed_and_resumed):
    import pyarrow.parquet as pq

    state = killed_and_resumed
    sweep, summary = state["sweep"], state["summary"]
    assert sorted(Path(p).name for p in summary["report"]) == [
        "quality_levels.png",
        "results.md",
        "results.parquet",
        "selection.json",
        "size.png",
    ]
    table = pq.read_table(sweep / "results.parquet").to_pylist()
    dev = [row for row in table if row["partition"] == "dev"]
    assert len(dev) == 8 and {row["benchmark"] for row in table} == {"medqa", "pubmedqa"}
    assert {row["cell_id"] for row in table if row["partition"] == "test"} == set(summary["tested"])
    for name in ("medqa", "pubmedqa"):
        scores = [row for row in dev if row["benchmark"] == name]
        (selected,) = [row for row in scores if row["selected"]]
        assert (
            selected["accuracy"] == max(row["accuracy"] for row in scores)
            and summary["selected"][name] == selected["cell_id"]
        )
    md = (sweep / "results.md").read_text()
    assert (
        all(cell in md for cell in summary["cells"])
        and "## Selected cells (chosen on dev)" in md
        and "Selected on dev, reported on test" in md
    )
    assert summary["cells"] == [
        "L3-n1-fail-first",
        "L3-n2-fail-first",
        "L4-n1-fail-first",
        "L4-n2-fail-first",
    ]  # readable ids, in the folders too
    assert (
        "- `L3-n1-fail-first` trained on 1 row; shared by `L3-n2-fail-first` (the same order)" in md
        and "What the dev data support:" in md
    )
    assert f"--publish_cell {summary['selected_overall']}" in md
    assert (sweep / "quality_levels.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_lost_cell_marker_redoes_only_that_cell_and_the_report_is_the_same(killed_and_resumed, tmp_path):
    import pyarrow.parquet as pq

    state = killed_and_resumed
    sweep = tmp_path / "sweep"
    shutil.copytree(state["sweep"], sweep)
    reference = pq.read_table(sweep / "results.parquet").to_pylist()
    trained = [cell for cell in state["summary"]["cells"] if (sweep / "cells" / cell / "adapter").exists()]
    lost = random.Random(0).choice(trained)
    (sweep / "cells" / lost / "cell.json").unlink()
    config = build_sweep_config(state["recipe"], ["--output_dir", str(sweep)])
    summary = main(config)
    sharing = [
        c
        for c in state["summary"]["cells"]
        if json.loads((sweep / "cells" / c / "cell.json").read_text())["same_data_as"] == lost
    ]
    assert (
        summary["ran"] == [lost] and summary["reused"] == sharing
    )  # a cell that shared its training takes the new results
    assert sorted(summary["skipped"] + sharing) == sorted(c for c in state["summary"]["cells"] if c != lost)
    assert _stable(pq.read_table(sweep / "results.parquet").to_pylist()) == _stable(reference)


@pytest.mark.slow
def test_a_cell_is_published_as_the_next_version_with_the_report_under_ablations(
    killed_and_resumed, tmp_path, monkeypatch
):
    import transformers

    from localhub import RepoStore, load_version

    state = killed_and_resumed
    sweep = tmp_path / "sweep"
    shutil.copytree(state["sweep"], sweep)
    records = {c: json.loads((sweep / "cells" / c / "cell.json").read_text()) for c in state["summary"]["cells"]}
    chosen = next(c for c, r in records.items() if r["dataset"]["rows"] == 2)

    def no_training(*args, **kwargs):
        raise AssertionError("a model was loaded: every cell is finished")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_training)
    hub = tmp_path / "hub"
    args = ["--output_dir", str(sweep), "--publish_cell", chosen, "--push_to_hub", REPO, "--hub_dir", str(hub)]
    summary = main(build_sweep_config(state["recipe"], args))
    assert summary["release"]["version"] == "v1" and summary["release"]["num_rows"] == 2 and summary["ran"] == []

    # v1 holds exactly the cell's rows, in the cell's order; the card was rendered by the release code.
    v1 = load_version(hub, REPO, "v1").to_list()
    assert [row["id"] for row in v1] == records[chosen]["dataset"]["ids"] and {row["version"] for row in v1} == {"v1"}
    store = RepoStore(hub)
    head = store.resolve("dataset", REPO, "main")
    assert store.resolve("dataset", REPO, "v1") == summary["release"]["commit"] != head == summary["report_commit"]
    files = store.commit("dataset", REPO, head).files
    assert {
        "ablations/tiny/results.parquet",
        "ablations/tiny/results.md",
        "ablations/tiny/quality_levels.png",
        "ablations/tiny/size.png",
    } <= set(files)
    uploaded = store.read_file("dataset", REPO, head, "ablations/tiny/results.md").decode()
    assert str(tmp_path) not in uploaded and str(state["sweep"].parent) not in uploaded  # no local folder goes up
    assert uploaded.split("## Selected cells")[1] == (sweep / "results.md").read_text().split("## Selected cells")[
        1
    ].replace(str(sweep / "cells"), "<sweep output_dir>/cells")
    card = store.read_file("dataset", REPO, head, "README.md").decode()
    assert (
        card.count("## Ablations: tiny") == 1
        and f"Version v1 holds the rows of cell `{chosen}`" in card
        and "ablations/tiny/results.md" in card
    )
    assert "Selected on dev, reported on test" in card and "| selected on dev |" in card
    assert (
        card.startswith("---\n") and "NanoFlux medical reasoning" in card
    )  # the release's card, with the section added
    provenance = json.loads(store.read_file("dataset", REPO, "v1", "provenance.json"))
    assert (
        provenance["curation"]["quality_levels"] == records[chosen]["settings"]["quality_levels"]
        and provenance["rows"] == 2
    )

    # Attaching again (no new cell to publish) replaces the section and adds no version.
    again = main(build_sweep_config(state["recipe"], args[:2] + ["--push_to_hub", REPO, "--hub_dir", str(hub)]))
    assert again["release"] is None and list(store.refs("dataset", REPO)["tags"]) == ["v1"]
    assert store.read_file("dataset", REPO, "main", "README.md").decode().count("## Ablations: tiny") == 1


@pytest.mark.slow
def test_the_jobs_backend_trains_each_cell_as_a_job_reading_and_pushing_through_the_hub(
    pool_build, tmp_path, hub_endpoint, monkeypatch, embedded_model_dir
):
    """`backend: jobs` against a Hub-compatible server on loopback that serves the Jobs API: each cell is submitted
    through huggingface_hub's jobs client, and the job (`nanoflux train` in a process of its own, in a temporary
    folder) reads the cell's rows from the Hub and pushes its adapter there."""
    import trainer.jobs
    from localhub import JobRunner, LocalHub, RepoStore

    submitted = []
    submit = trainer.jobs.main

    def recorded(config, **kwargs):
        submitted.append(config)
        return submit(config, **kwargs)

    monkeypatch.setattr(trainer.jobs, "main", recorded)
    monkeypatch.setenv("HF_TOKEN", "hf_localhub_token")
    # The job's 'image' has NanoFlux installed: this environment's `nanoflux` is first on its PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with LocalHub(tmp_path / "hub", jobs=JobRunner(base_env={**os.environ, "PATH": path})) as hub:
        hub_endpoint(hub.url)
        # PEFT asks huggingface_hub's module-level HfApi (endpoint fixed at import) whether the adapter file exists.
        import huggingface_hub.hf_api

        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
        recipe = tmp_path / "jobs.yaml"
        data = _sweep_recipe(pool_build, tmp_path / "sweep")
        data["eval_overrides"]["benchmarks"] = data["eval_overrides"]["benchmarks"][:1]
        data.update(
            name="tiny-jobs",
            grid={"quality_levels": [4], "sizes": [2]},
            backend="jobs",
            cells_repo="org/tiny-cells",
            adapter_repo="org/tiny-lora",
        )
        data["train_overrides"].update(jobs={"flavor": "a100-large", "package": "nanoflux"})
        recipe.write_text(yaml.safe_dump(data))
        summary = main(build_sweep_config(recipe))

    (cell,) = summary["ran"]
    (config,) = submitted
    assert (config.jobs.backend, config.jobs.flavor, config.hub_dir, config.push_to_hub) == (
        "jobs",
        "a100-large",
        None,
        f"org/tiny-lora-{cell}",
    )
    record = json.loads((tmp_path / "sweep" / "cells" / cell / "cell.json").read_text())
    store = RepoStore(tmp_path / "hub")
    assert (config.dataset_name, config.revision) == ("org/tiny-cells", record["dataset"]["tag"])
    assert store.resolve("dataset", "org/tiny-cells", record["dataset"]["tag"]) == record["dataset"]["commit"]
    # The training summary came back from the adapter repo the job pushed to; the adapter was evaluated from there.
    assert record["training"]["steps"] == 2 and record["training"]["dataset"].startswith(
        f"org/tiny-cells@{record['dataset']['tag']}@"
    )
    assert (
        store.exists("model", f"org/tiny-lora-{cell}")
        and not (tmp_path / "sweep" / "cells" / cell / "adapter").exists()
    )
    (job,) = hub.jobs.list("localhub")
    assert job.stage == "COMPLETED" and job.spec["flavor"] == "a100-large"
    assert (
        yaml.safe_load((tmp_path / "sweep" / "cells" / cell / "eval.yaml").read_text())["adapter"]
        == f"org/tiny-lora-{cell}"
    )
    assert record["scores"]["medqa"]["n"] == 2


@pytest.mark.slow
def test_a_changed_eval_recipe_re_evaluates_the_adapters_without_training_again(
    killed_and_resumed, tmp_path, monkeypatch
):
    import trl

    state = killed_and_resumed
    sweep = tmp_path / "sweep"
    shutil.copytree(state["sweep"], sweep)
    before = {c: json.loads((sweep / "cells" / c / "cell.json").read_text()) for c in state["summary"]["cells"]}
    monkeypatch.setattr(trl, "SFTTrainer", None)  # nothing is trained again
    summary = main(
        build_sweep_config(state["recipe"], ["--output_dir", str(sweep), "--eval_overrides.max_new_tokens", "6"])
    )
    assert (
        summary["ran"] == []
        and summary["skipped"] == []
        and sorted(summary["reevaluated"] + summary["reused"]) == sorted(before)
    )
    assert summary["reused"] == [
        cell for cell, record in before.items() if record["same_data_as"]
    ]  # copied from the re-evaluated cell
    for cell, old in before.items():
        new = json.loads((sweep / "cells" / cell / "cell.json").read_text())
        assert new["eval_fingerprint"] != old["eval_fingerprint"] and new["training"] == old["training"]
        if new["same_data_as"] is None:
            results = json.loads((sweep / "cells" / cell / "eval" / "results.json").read_text())
            assert results["generation"]["max_new_tokens"] == 6
        else:
            assert (
                new["scores"]
                == json.loads((sweep / "cells" / new["same_data_as"] / "cell.json").read_text())["scores"]
            )
    # The training recipe is another matter: a changed one is refused before anything runs.
    with pytest.raises(SweepError, match=r"changed: train\.sft\.max_steps: 2 -> 3"):
        main(build_sweep_config(state["recipe"], ["--output_dir", str(sweep), "--train_overrides.sft.max_steps", "3"]))
