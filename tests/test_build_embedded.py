"""A full build on the real embedded model (SmolLM2-135M in-process): slow, still run by CI."""

from __future__ import annotations

import json

import pytest

from builder import build
from builder.config import build_config
from builder.dataset import COLUMNS, JUDGE_STATUSES

pytestmark = pytest.mark.slow


def test_local_recipe_builds_a_curated_dataset_with_every_documented_column(embedded_model_dir, tmp_path):
    config = build_config("configs/local.yaml", ["--rounds", "2", "--attacks_per_round", "2", "--output_dir", str(tmp_path / "out")])
    summary = build.main(config)
    out = tmp_path / "out"

    # Every attack is accounted for: parsed into a row, or counted as an error / unparseable / refused.
    assert summary["generated"] + summary["attack_errors"] + summary["attack_parse_errors"] + summary["attack_refusals"] == 4
    assert summary["novel"] + summary["not_novel"] == summary["generated"]
    assert sum(summary["judge_status"].values()) <= summary["novel"]
    assert summary["tokens"]["attacker"]["completion"] > 0 and summary["calls_sent"] >= 4

    import pyarrow.parquet as pq

    # Read with pyarrow: the tiny Judge often validates nothing, and `load_dataset` refuses an empty split.
    curated = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    pool = pq.read_table(out / "pool" / "pool.parquet")
    assert curated.column_names == list(COLUMNS) == pool.column_names
    assert pool.num_rows == summary["generated"] and curated.num_rows == summary["kept"]
    for row in pool.to_pylist():
        assert row["judge_status"] in (*JUDGE_STATUSES, None)
        assert row["attacker_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct (embedded)"
    # Only what the Judge validated is kept: nothing is invented to make the demo look good.
    for row in curated.to_pylist():
        assert row["judge_status"] == "ok" and row["question_valid"] and row["novel"]
    assert len((out / "curated.jsonl").read_text().splitlines()) == curated.num_rows
    assert json.loads((out / "summary.json").read_text())["kept"] == curated.num_rows
