"""The output folder: one writer (an OS lock, across processes), atomic state files, `nanoflux doctor`, and a build
that resumes from a damaged journal sending exactly the lost calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builder import build, roles
from builder.config import BuildConfig
from nanoflux import runfolder
from nanoflux.cli import main as cli_main
from nanoflux.journal import Journal, damaged_path, scan
from nanoflux.recipe import from_dict
from tests import scripted_roles
from tests.tgi_server import ScriptedTGI

ROOT = Path(__file__).parent.parent
HOLDER = (
    "import sys, time; from nanoflux import runfolder; runfolder.hold(sys.argv[1], 'build'); print('held',"
    " flush=True); sys.stdin.read()"
)


def _config(url: str, output_dir: Path, **changes) -> BuildConfig:
    recipe = scripted_roles.recipe(url, str(output_dir), **changes)
    for role in ("player_a", "player_b", "judge"):
        recipe[role]["token_env"] = "NANOFLUX_TEST_NO_TOKEN"  # unset: no credential is sent
    config = from_dict(BuildConfig, recipe)
    config.validate()
    return config


@pytest.fixture
def other_process(tmp_path):
    """Start a second process that holds a folder's lock until the test ends (or kills it)."""
    started = []

    def start(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        started.append(process)
        assert process.stdout.readline() == b"held\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_second_writer_fails_at_once_naming_the_holder_and_a_killed_holder_blocks_no_one(tmp_path, other_process):
    folder = tmp_path / "out"
    process = other_process(folder)
    started = time.monotonic()
    with pytest.raises(
        runfolder.FolderBusy,
        match=rf"in use by a running nanoflux build \(pid {process.pid} on .*started 20.*did not start",
    ):
        runfolder.RunLock(folder, "publish").acquire()
    assert time.monotonic() - started < 1.0
    assert runfolder.holder(folder)["pid"] == process.pid
    process.kill()  # like kill -9: the kernel drops the lock; the lock file stays and blocks nobody
    process.wait()
    with runfolder.locked(folder, "publish") as lock:
        assert lock.fd is not None and runfolder.holder(folder) is None
    assert (folder / runfolder.LOCK_FILE).exists()


def test_a_second_build_command_into_a_busy_folder_exits_with_one_line(tmp_path, other_process):
    folder = tmp_path / "out"
    process = other_process(folder)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(scripted_roles.recipe("http://127.0.0.1:9", str(folder), decontamination={"enabled": False}))
    )
    result = subprocess.run(
        [sys.executable, "-m", "nanoflux.cli", "build", "--config", str(recipe)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    message = result.stderr.decode().strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr.decode()
    assert message.startswith(
        f"nanoflux build: output_dir {folder} is in use by a running nanoflux build (pid {process.pid}"
    )
    assert not (folder / "calls.jsonl").exists() and not (folder / "run.json").exists()


def test_run_json_is_written_atomically_and_a_damaged_one_is_reported_with_its_fix(tmp_path):
    config = _config("http://127.0.0.1:9", tmp_path / "out")
    prompts = roles.load_prompts(config.domain, config.prompts)
    output_dir = build.prepare_output_dir(config, prompts, fresh=False)
    runfolder.release(output_dir)
    run = json.loads((output_dir / "run.json").read_text())
    assert set(run) == {"fingerprint", "recipe"} and not list(output_dir.glob(".*.tmp"))
    for damage in (b'{"fingerprint": "ab', b"[]", b'{"recipe": {}}', b"\xff"):
        (output_dir / "run.json").write_bytes(damage)
        with pytest.raises(
            runfolder.DamagedStateFile,
            match=rf"{output_dir / 'run.json'} is damaged .*Fix: run `nanoflux doctor {output_dir} --repair`.*--fresh",
        ):
            build.prepare_output_dir(config, prompts, fresh=False)
        runfolder.RunLock(output_dir, "check").acquire().release()  # the failed start released the folder again
    build.prepare_output_dir(config, prompts, fresh=True)  # --fresh needs no readable run.json
    runfolder.release(output_dir)


def test_doctor_reports_damage_and_repair_keeps_every_intact_record(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    journal = Journal(folder / "calls.jsonl")
    for i in range(6):
        journal.put({"key": f"k{i}", "fingerprint": "f", "text": f"answer {i}"})
    journal.close()
    lines = (folder / "calls.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"answer 1", b"answer 7")  # altered
    lines[3] = b"[3]\n"
    (folder / "calls.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:10])  # and a torn tail
    (folder / "run.json").write_text('{"fingerprint": ')
    (folder / "summary.json").write_text("{}")

    with pytest.raises(SystemExit) as exit_:
        cli_main(["doctor", str(folder)])
    report = capsys.readouterr().out
    assert exit_.value.code == 1
    assert (
        "3 record(s) lost" in report
        and "checksum mismatch" in report
        and "sent again: k1" in report
        and "not legible" in report
    )
    assert (
        "run.json: not valid JSON" in report
        and "summary.json: ok" in report
        and f"nanoflux doctor {folder} --repair" in report
    )
    assert scan(folder / "calls.jsonl").lost == 3, "doctor without --repair changes nothing"

    cli_main(["doctor", str(folder), "--repair"])
    report = capsys.readouterr().out
    assert "repaired: rewritten with 3 intact record(s)" in report and "set aside as run.json.damaged" in report
    assert sorted(Journal(folder / "calls.jsonl").records) == ["k0", "k2", "k4"]
    assert damaged_path(folder / "calls.jsonl").exists() and (folder / "run.json.damaged").exists()
    cli_main(["doctor", str(folder)])
    assert capsys.readouterr().out.rstrip().endswith("healthy")


def test_doctor_checks_and_repairs_an_evaluations_answers_journal(tmp_path, capsys):
    folder = tmp_path / "eval"
    folder.mkdir()
    journal = Journal(folder / "answers.jsonl")
    for i in range(4):
        journal.put({"key": f"medqa/q{i}", "answer": f"({'ABCD'[i]})"})
    journal.close()
    lines = (folder / "answers.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"(C)", b"(D)")  # altered: its checksum no longer matches
    (folder / "answers.jsonl").write_bytes(b"".join(lines))

    with pytest.raises(SystemExit) as exit_:
        cli_main(["doctor", str(folder)])
    report = capsys.readouterr().out
    assert exit_.value.code == 1 and "answers.jsonl: damaged" in report and "asked again: medqa/q2" in report
    cli_main(["doctor", str(folder), "--repair"])
    assert "rewritten with 3 intact record(s)" in capsys.readouterr().out
    assert sorted(Journal(folder / "answers.jsonl").records) == ["medqa/q0", "medqa/q1", "medqa/q3"]
    cli_main(["doctor", str(folder)])
    assert capsys.readouterr().out.rstrip().endswith("healthy")


@pytest.mark.usefixtures("allow_loopback_offline")
def test_a_resumed_build_with_a_damaged_journal_resends_exactly_the_lost_calls(tmp_path):
    def content(path: Path) -> list[dict]:
        volatile = ("created_at", "judged_at", "attacker_model", "defender_model", "judge_model")
        return [
            {k: v for k, v in json.loads(line).items() if k not in volatile} for line in path.read_text().splitlines()
        ]

    with ScriptedTGI(responder=scripted_roles.respond) as server:
        config = _config(server.url, tmp_path / "out")
        first = build.main(config)
        runfolder.release(config.output_dir)
        reference = content(tmp_path / "out" / "pool.jsonl")
        calls = tmp_path / "out" / "calls.jsonl"
        data = bytearray(calls.read_bytes())
        for offset in (len(data) // 5, len(data) // 2, len(data) * 4 // 5):  # three records altered
            data[offset] ^= 0x01
        calls.write_bytes(bytes(data[: len(data) - 40]))  # and the last record torn off
        assert scan(calls).lost == 4

        sent = server.request_count
        resumed = build.main(config)
        runfolder.release(config.output_dir)
        assert server.request_count - sent == resumed["calls_sent"] == 4
        assert resumed["calls_replayed"] == first["calls_sent"] - 4
        assert content(tmp_path / "out" / "pool.jsonl") == reference
        assert (
            not scan(calls).needs_repair and len(Journal(calls)) == first["calls_sent"]
        )  # clean again: reported once
