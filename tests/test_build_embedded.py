"""A full build on the embedded default, through the `nanoflux` command: the packaged SmolLM2-135M under the managed
llama.cpp server (slow, still run by CI). Offline (HF_HUB_OFFLINE=1, from conftest), in a private NanoFlux cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builder.dataset import COLUMNS, JUDGE_STATUSES
from tests.test_embedded import _wait_gone

pytestmark = pytest.mark.slow


def test_local_recipe_builds_judged_rows_through_the_managed_server_and_leaves_no_process(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [
        sys.executable,
        "-m",
        "nanoflux.cli",
        "build",
        "--config",
        "configs/local.yaml",
        "--rounds",
        "2",
        "--attacks_per_round",
        "2",
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NANOFLUX_CACHE": str(cache)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    console = done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    # A build that keeps nothing exits 1 with the cause (the tiny Judge may validate nothing); anything else is a
    # failure.
    assert done.returncode == 0 or (done.returncode == 1 and "nothing was kept" in console), console[-3000:]

    # The server ran, logged to its file (not to the console), and is gone now that the command has exited.
    logs = list((cache / "engine").glob("*.log"))
    assert len(logs) == 1, logs
    pid = int(re.search(r"nanoflux engine: pid (\d+)", logs[0].read_text()).group(1))
    assert _wait_gone(pid, 15), "the managed llama.cpp server outlived the build"
    assert "llama_perf" not in console and "llama_model_loader" not in console

    # One endpoint served every role, with llama.cpp's structured output; every HTTP attempt is counted.
    (endpoint,) = summary["endpoints"]
    assert endpoint["roles"] == ["judge", "player_a", "player_b"]
    assert endpoint["server"]["mode"] == "llama_cpp" and endpoint["server"]["server"] == "configured"
    assert summary["calls_sent"] == endpoint["attempts"] >= 4 and endpoint["completion_tokens"] > 0
    assert endpoint["concurrency"]["peak_in_flight"] <= 2  # the managed server answers one request at a time

    # The schema is honoured: attacks parse (only a reply cut off at max_tokens may not), and the Judge's verdicts
    # exist.
    assert summary["attack_errors"] == 0 and summary["attack_parse_errors"] <= 1, summary
    assert summary["generated"] + summary["attack_parse_errors"] + summary["attack_refusals"] == 4
    assert summary["novel"] + summary["not_novel"] == summary["generated"]
    assert summary["judged_ok"] >= 1, summary["judge_status"]
    assert summary["tokens"]["attacker"]["completion"] > 0

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
    assert Path(out / "calls.jsonl").read_text().count("\n") >= 4
