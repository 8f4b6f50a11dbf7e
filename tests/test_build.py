"""The build loop against a scripted TGI-compatible server on loopback: the real EndpointClient, real HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builder import build
from builder.config import BuildConfig
from builder.dataset import COLUMNS
from nanoflux.recipe import from_dict
from nanoflux.runfolder import DifferentRun
from tests import scripted_roles
from tests.tgi_server import Fault, ScriptedTGI

pytestmark = pytest.mark.usefixtures("allow_loopback_offline")

# Per build: 8 attacks, 2 near-duplicates dropped, 6 defended while the Judge solves them blind; 6 verdicts, the
# garbage and the refusing ones asked twice (parse_retries=1): 8 + 6 + 6 + 8 = 28 requests.
CALLS_PER_BUILD = 28


def _config(url: str, output_dir: Path, **changes) -> BuildConfig:
    config = from_dict(BuildConfig, scripted_roles.recipe(url, str(output_dir), **changes))
    config.validate()
    return config


@pytest.fixture
def server():
    with ScriptedTGI(responder=scripted_roles.respond) as tgi:
        yield tgi


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_runs_every_judge_outcome_and_curates_only_validated_l4_rows(server, tmp_path):
    summary = build.main(_config(server.url, tmp_path / "out"))

    assert summary["generated"] == 8 and summary["not_novel"] == 2 and summary["novel"] == 6
    assert summary["judge_status"] == {"ok": 4, "parse_error": 1, "refused": 1, "error": 0, "tool_error": 0}
    assert summary["valid"] == 3 and summary["validity_decided_by"] == {"blind_solve": 3, "judge_ruling": 1}
    assert summary["kept"] == 2 and server.request_count == CALLS_PER_BUILD == summary["calls_sent"]
    assert [r["defender_failure_rate"] for r in summary["per_round"]] == [pytest.approx(2 / 3), None]

    curated = _rows(tmp_path / "out" / "curated.jsonl")
    # Defender failures rank first: q2 (failed) before q0 (solved); q4 is L3 and stays out.
    assert [r["question"] for r in curated] == [scripted_roles.QUESTIONS[2], scripted_roles.QUESTIONS[0]]
    assert all(set(r) == set(COLUMNS) for r in curated)
    first = curated[0]
    assert first["judge_status"] == "ok" and first["quality_level"] == 4 and first["defender_correct"] is False
    assert first["attacker"] == "player_a" and first["defender"] == "player_b"
    assert [t["tool"] for t in first["tool_calls"]] == ["lookup"]
    assert first["options"] == scripted_roles.OPTIONS[2]
    # The SFT user turn is the question exactly as evaluation asks it: the stem, lettered options, the instruction.
    user = first["messages"][0]["content"]
    assert user.startswith(first["question"] + "\n\nA. " + first["options"][0] + "\nB. ") and user.endswith(
        "`Final answer: <letter>`."
    )
    assert first["messages"][1]["content"].endswith("Final answer: D")
    assert (first["judge_blind_answer"], first["judge_blind_agrees"], first["validity_decided_by"]) == (
        "D",
        True,
        "blind_solve",
    )
    assert first["correctness_decided_by"] == "answer_check" and first["defender_status"] == "ok"
    assert first["attacker_prompt_tokens"] > 0 and first["judge_completion_tokens"] > 0

    pool = {r["question"]: r for r in _rows(tmp_path / "out" / "pool.jsonl")}
    assert len(_rows(tmp_path / "out" / "pool.jsonl")) == 8
    # q1: the Judge's blind answer (B) differs from the reference (C) and it explains no error of its own: invalid,
    # whatever its verdict says. Its blind program loops; in a multiple-choice domain that is shown, not fatal.
    looping = pool[scripted_roles.QUESTIONS[1]]
    assert looping["judge_status"] == "ok" and looping["tool_calls"][0]["ok"] is False
    assert (looping["question_valid"], looping["validity_decided_by"], looping["judge_reference_correct"]) == (
        False,
        "judge_ruling",
        True,
    )
    # q4: the Judge LLM says the Defender (B) is right, the key (E) says not: the answer check wins, and says so.
    checked = pool[scripted_roles.QUESTIONS[4]]
    assert (checked["judge_defender_correct"], checked["defender_correct"], checked["correctness_decided_by"]) == (
        True,
        False,
        "answer_check",
    )
    assert pool[scripted_roles.QUESTIONS[3]]["judge_status"] == "parse_error"
    assert pool[scripted_roles.QUESTIONS[5]]["judge_status"] == "refused"
    duplicates = [r for r in _rows(tmp_path / "out" / "pool.jsonl") if not r["novel"]]
    assert [(r["round"], r["attack_index"]) for r in duplicates] == [(1, 2), (1, 3)]
    assert all(r["novelty_similarity"] > 0.99 and r["judge_status"] is None for r in duplicates)

    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"), split="train")
    assert dataset.num_rows == 2 and set(dataset.column_names) == set(COLUMNS)


def test_endpoint_faults_are_retried_and_the_build_loses_nothing(server, tmp_path):
    server.script(
        Fault.status(429, retry_after=0.2),
        Fault.status(503),
        Fault.truncated(),
        Fault.invalid_json(),
        Fault.delay(2.0),  # longer than the 1 s timeout
    )
    summary = build.main(_config(server.url, tmp_path / "out"))
    assert summary["retries"] == 5 and summary["endpoint_failures"] == {}
    assert server.request_count == CALLS_PER_BUILD + 5
    assert summary["judge_status"]["ok"] == 4 and summary["kept"] == 2


def test_an_endpoint_that_stays_down_marks_examples_as_errors_and_a_rerun_sends_only_those(server, tmp_path):
    config = _config(server.url, tmp_path / "out", rounds=1)
    pharmacology_down = lambda body: Fault.status(503) if "skill: pharmacology" in json.dumps(body) else None  # noqa: E731
    server.fault_for = pharmacology_down  # attack 1 (q2) fails on every attempt
    summary = build.main(config)
    assert summary["attack_errors"] == 1 and summary["endpoint_failures"] == {"503": 1}
    assert summary["generated"] == 3
    sent = server.request_count

    server.fault_for = None  # the endpoint is back
    rerun = build.main(config)  # resumes: only the failed attack, its defense and its judgement go out
    assert rerun["attack_errors"] == 0 and rerun["generated"] == 4 and rerun["kept"] == 2
    assert (
        rerun["calls_replayed"] == summary["calls_answered"] and summary["calls_sent"] == summary["calls_answered"] + 6
    )  # 6 attempts at the call that stayed down
    assert server.request_count - sent == rerun["calls_sent"] == 4


def test_changed_recipe_is_refused_unless_fresh(server, tmp_path):
    build.main(_config(server.url, tmp_path / "out"))
    with pytest.raises(DifferentRun, match=r"different recipe \(changed: rounds: 2 -> 1\).*--fresh"):
        build.main(_config(server.url, tmp_path / "out", rounds=1))
    # Transport settings are not part of the recipe's identity: the same build resumes with all calls replayed.
    again = build.main(
        _config(
            server.url,
            tmp_path / "out",
            judge={**scripted_roles.recipe(server.url, "")["judge"], "max_concurrency": 2},
        )
    )
    assert again["calls_sent"] == 0 and again["calls_replayed"] == CALLS_PER_BUILD
    # Nor is curation, which runs on the journaled rows: a finished build is re-curated without a new call.
    assert again["kept"] > 1
    recurated = build.main(_config(server.url, tmp_path / "out", curation={"target_size": 1}))
    assert (recurated["calls_sent"], recurated["kept"]) == (0, 1) and len(
        _rows(tmp_path / "out" / "curated.jsonl")
    ) == 1
    fresh = build.main(_config(server.url, tmp_path / "out", rounds=1), fresh=True)
    assert fresh["calls_replayed"] == 0 and fresh["generated"] == 4


def test_a_build_killed_mid_round_resumes_to_the_same_dataset_without_repeating_finished_calls(tmp_path):
    # Uninterrupted reference run.
    with ScriptedTGI(responder=scripted_roles.respond) as server:
        build.main(_config(server.url, tmp_path / "reference"))
        assert server.request_count == CALLS_PER_BUILD

    # The same build in a subprocess, killed with SIGKILL once some calls are journaled.
    with ScriptedTGI(responder=scripted_roles.respond, latency=0.3, capacity=2) as server:
        out = tmp_path / "killed"
        out.mkdir()
        recipe = out.parent / "killed.yaml"
        recipe.write_text(yaml.safe_dump(scripted_roles.recipe(server.url, str(out))))
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(Path(__file__).parent.parent)}
        process = subprocess.Popen(
            [sys.executable, "-m", "nanoflux.cli", "build", "--config", str(recipe)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        calls = out / "calls.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not calls.exists() or len(calls.read_text().splitlines()) < 6):
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        journaled = len([line for line in calls.read_text().splitlines() if line.strip()])
        assert 6 <= journaled < CALLS_PER_BUILD, "the kill must land mid-build"

        server.reset()
        server.latency = 0.0  # no queueing behind the capacity now, so no timeout retries muddy the count
        summary = build.main(_config(server.url, out))
        # Only the calls that had not finished go out again: none is repeated, none is lost.
        assert server.request_count == CALLS_PER_BUILD - journaled == summary["calls_sent"]
        assert summary["calls_replayed"] == journaled

    def content(path: Path) -> list[dict]:
        # Timestamps and the servers' ports (in *_model, and in the recipe that ids hash) differ between the two runs;
        # everything else must not.
        volatile = ("id", "created_at", "judged_at", "attacker_model", "defender_model", "judge_model")
        return [{k: v for k, v in row.items() if k not in volatile} for row in _rows(path)]

    assert content(out / "curated.jsonl") == content(tmp_path / "reference" / "curated.jsonl")
    assert content(out / "pool.jsonl") == content(tmp_path / "reference" / "pool.jsonl")
    example_keys = [
        json.loads(line)["key"]
        for line in (out / "examples.jsonl").read_text().splitlines()
        if line.strip().endswith("}")
    ]
    assert len(example_keys) == len(set(example_keys)), "no example state is journaled twice"


def test_the_endpoint_token_reaches_the_server_but_no_file_or_log(server, tmp_path, monkeypatch, caplog):
    secret = "hf_FAKEsecretTOKEN0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    server.script(Fault.status(503))  # a retry gets logged too
    # A custom host gets a key only from a token_env the recipe names (here, explicitly, HF_TOKEN).
    roles = {
        name: {**role, "token_env": "HF_TOKEN"}
        for name, role in scripted_roles.recipe(server.url, "").items()
        if name in ("player_a", "player_b", "judge")
    }
    build.main(_config(server.url, tmp_path / "out", **roles))
    assert server.chat_requests[0].authorization == f"Bearer {secret}"
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


def test_a_saved_hub_login_is_never_sent_to_a_custom_endpoint(server, tmp_path, monkeypatch):
    saved = tmp_path / "saved-token"
    saved.write_text("hf_SAVEDloginTOKEN0123456789")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(saved))  # what `hf auth login` leaves behind
    monkeypatch.delenv("ENDPOINT_KEY", raising=False)
    role = {
        "base_url": server.url,
        "model": "scripted/tgi",
        "max_tokens": 256,
        "timeout": 1.0,
        "token_env": "ENDPOINT_KEY",
    }
    judge = {**role, "model": "scripted/judge", "temperature": 0.0}
    build.main(_config(server.url, tmp_path / "out", player_a=role, player_b=role, judge=judge))
    sent = {request.authorization for request in server.chat_requests}
    assert server.chat_requests and sent <= {None, ""}, sent  # no credential at all
