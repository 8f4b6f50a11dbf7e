"""Whole builds (`nanoflux build`, a subprocess as a user runs it) against a REAL llama.cpp server, and misconfigured
builds that must exit non-zero with the cause on the console.

The server is llama-cpp-python's `python -m llama_cpp.server` on the packaged SmolLM2-135M GGUF (tests/llama_server.py,
one per session, shared with test_real_servers.py), behind a recording proxy that sees every request. The medical and
math recipes (configs/*.yaml) run in a small size with every role pointed at it (`base_url`, `structured_output: auto`;
one model plays every role, so `allow_shared_judge`). What a 135M model writes is weak; what is checked is what
NanoFlux owes any server: the schema is honoured, scores stay in range, rows get judged, and a kill -9 loses no
finished call.

Slow: a real model on CPU (~4-5 minutes for the file on 2 idle cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import roles
from builder.calls import call_seed
from localhub.serving import free_port
from tests.llama_server import RecordingProxy, llama_server  # noqa: F401 (the session's server fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PLANTED_TOKEN = "hf_PLANTEDtokenNEVERtoLEAVE0123456789"
BUILD_TIMEOUT = 900  # seconds; a loaded 2-core machine runs the real model several times slower than an idle one
SCHEMA_FLOOR = 0.9  # share of the Attacker's first replies that must parse
PARSE_RETRIES = 1  # BuildConfig's default, which the recipes keep


def small_recipe(
    domain: str, url: str, output_dir: Path, *, rounds: int, attacks: int, **changes: Any
) -> dict[str, Any]:
    """configs/<domain>.yaml in a small size, every role on the server at `url`. Curation keeps every judged row
    (a 135M Judge rarely validates anything), so a build that judged rows exits 0."""
    recipe = yaml.safe_load((REPO / "configs" / f"{domain}.yaml").read_text())

    def role(name: str, max_tokens: int) -> dict[str, Any]:
        # Measured: the 135M model's replies stay under ~160 tokens; these bounds leave room without runaway replies.
        return {
            **recipe[name],
            "base_url": url,
            "model": None,
            "max_tokens": max_tokens,
            "timeout": BUILD_TIMEOUT,
            "max_attempts": 2,
        }

    recipe.update(
        rounds=rounds,
        attacks_per_round=attacks,
        player_a=role("player_a", 320),
        player_b=role("player_b", 200),
        judge=role("judge", 256),
        allow_shared_judge=True,
        decontamination={"eval_recipe": "configs/eval/local.yaml", "ngram": 13},  # the offline benchmark fixtures
        curation={**recipe["curation"], "require_valid": False, "quality_levels": [1, 2, 3, 4, 5]},
        output_dir=str(output_dir),
    )
    for key, value in changes.items():
        recipe[key] = (
            {**recipe[key], **value} if isinstance(value, dict) and isinstance(recipe.get(key), dict) else value
        )
    return recipe


def start_build(recipe: dict[str, Any], where: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    """`nanoflux build --config <recipe>` as a subprocess in the repository (console output in a log file)."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    log = where / f"console-{time.monotonic_ns()}.log"
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nanoflux.cli", "build", "--config", str(path)],
            cwd=REPO,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


def run_build(recipe: dict[str, Any], where: Path, **env: str) -> tuple[int, str]:
    """Run a build to its end: (exit code, console)."""
    process, log = start_build(recipe, where, **env)
    try:
        code = process.wait(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the build did not finish in {BUILD_TIMEOUT} s: {log.read_text()[-3000:]}")
    return code, log.read_text()


def journal(path: Path) -> dict[str, dict[str, Any]]:
    """The intact records of a journal by key (a line torn by a kill is skipped, as the build skips it)."""
    records = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "key" in record:
            records[record["key"]] = record
    return records


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attack_parse_rate(calls: dict[str, dict[str, Any]], answer_format: str, n_options: int) -> tuple[float, list[str]]:
    """Share of the Attacker's first replies (no re-ask) that parse, and why the others did not."""
    first = [r["text"] for key, r in calls.items() if key.endswith("/attacker/try0")]
    parsed = [roles.parse_attack(text, answer_format, n_options) for text in first]
    reasons = [p.reason for p in parsed if isinstance(p, roles.Rejected)]
    return (len(first) - len(reasons)) / len(first), reasons


def check_judge_ranges(calls: dict[str, dict[str, Any]], pool: list[dict[str, Any]], domain: str) -> int:
    """Every recorded score is within the rubric's 1-5, and every verdict out of range was asked again (llama.cpp's
    grammar does not enforce minimum/maximum). Returns how many verdicts were out of range."""
    rubric = roles.load_prompts(domain).rubric
    out_of_range = 0
    for key, record in calls.items():
        if "/judge/try" not in key:
            continue
        verdict = roles.parse_verdict(record["text"], rubric)
        if isinstance(verdict, roles.Rejected) and "outside the rubric" in verdict.reason:
            out_of_range += 1
            attempt = int(key.rsplit("try", 1)[1])
            last_try = attempt == PARSE_RETRIES  # the recipes' parse_retries: 1 re-ask
            assert last_try or key.replace(f"try{attempt}", f"try{attempt + 1}") in calls, (
                f"{key} out of range, not re-asked"
            )
    for row in pool:
        if row["judge_status"] == "ok":
            scores = [s["score"] for s in row["judge_scores"]] + [row["judge_complexity"]]
            assert all(1 <= s <= 5 for s in scores), (row["id"], scores)
            assert 1 <= row["reasoning_quality"] <= 5 and row["quality_level"] in (1, 2, 3, 4, 5)
    return out_of_range


def report(name: str, summary: dict[str, Any], rate: float, out_of_range: int, wall_s: float) -> None:
    """One line per build for the README (pytest -s shows it)."""
    print(
        f"\n[{name}] {summary['attacks']} attacks: first-reply parse rate {rate:.0%}, generated"
        f" {summary['generated']}, judged ok {summary['judged_ok']}, judge status {summary['judge_status']},"
        f" out-of-range verdicts {out_of_range}, HTTP attempts {summary['calls_sent']}, tokens {summary['tokens']},"
        f" build {summary['wall_time_s']} s, test {wall_s:.0f} s"
    )


# --- the medical recipe, killed mid-round and resumed ---------------------------------------------------------------


def test_medical_build_on_llama_cpp_honours_the_schema_and_resumes_after_kill_9_without_re_asking(
    llama_server, tmp_path
):
    started = time.monotonic()
    out = tmp_path / "medical"
    with RecordingProxy(llama_server) as proxy:
        recipe = small_recipe("medical", proxy.url, out, rounds=2, attacks=2)
        # A planted Hub token must not reach a custom host: the recipe names no token_env.
        process, log = start_build(recipe, tmp_path, HF_TOKEN=PLANTED_TOKEN)
        calls_file = out / "calls.jsonl"
        deadline = time.monotonic() + BUILD_TIMEOUT
        while len(journal(calls_file)) < 3:  # the attacks of round 0 and more: mid-round
            assert process.poll() is None, f"the build ended before it could be killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no call was journaled in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = journal(calls_file)
        first_seen = list(proxy.seen)
        proxy.reset()

        code, console = run_build(recipe, tmp_path, HF_TOKEN=PLANTED_TOKEN)
        assert code == 0, console[-3000:]
        second_run = proxy.chat_requests()
        everything = [*first_seen, *proxy.seen]

    summary = json.loads((out / "summary.json").read_text())
    after = journal(calls_file)
    # Killed mid-round: some calls, not all, were finished (and journaled) before the kill.
    assert 0 < len(before) < len(after), (len(before), len(after))
    # None of them was asked again: every call's seed is derived from its key, and no finished key's seed went out
    # twice.
    finished_seeds = {call_seed(0, key) for key in before}
    assert not finished_seeds & {request.body["seed"] for request in second_run}
    assert {key: after[key]["text"] for key in before} == {key: r["text"] for key, r in before.items()}
    assert summary["calls_replayed"] == len(before) and summary["calls_sent"] == len(second_run)
    # The output is complete: every attack ended as a row or a recorded failure, every novel row went through judging.
    pool = rows(out / "pool.jsonl")
    failed = summary["attack_errors"] + summary["attack_parse_errors"] + summary["attack_refusals"]
    assert summary["generated"] == len(pool) == summary["attacks"] - failed
    assert all(row["judge_status"] for row in pool if row["novel"])
    assert summary["judged_ok"] >= 1 and (out / "curated.jsonl").read_text().strip()
    assert summary["endpoints"][0]["server"]["mode"] == "llama_cpp"  # auto detected llama.cpp
    # The schema is honoured, and the Judge's range checks hold.
    rate, reasons = attack_parse_rate(after, "choice", recipe["options"])
    assert rate >= SCHEMA_FLOOR, reasons
    out_of_range = check_judge_ranges(after, pool, "medical")
    # The planted HF_TOKEN never left: no request (chat or detection probe) carried a key.
    assert everything and {request.authorization for request in everything} == {None}
    for path in out.rglob("*"):
        assert not path.is_file() or PLANTED_TOKEN.encode() not in path.read_bytes(), path
    report("medical, killed and resumed", summary, rate, out_of_range, time.monotonic() - started)


# --- the math recipe: the Judge's programs run in the sandbox -------------------------------------------------------


def test_math_build_on_llama_cpp_runs_the_judges_programs_and_judges_rows(llama_server, tmp_path):
    started = time.monotonic()
    out = tmp_path / "math"
    recipe = small_recipe("math", llama_server, out, rounds=2, attacks=3)
    code, console = run_build(recipe, tmp_path)
    assert code == 0, console[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    calls, pool = journal(out / "calls.jsonl"), rows(out / "pool.jsonl")
    rate, reasons = attack_parse_rate(calls, "number", 5)
    assert rate >= SCHEMA_FLOOR, reasons
    out_of_range = check_judge_ranges(calls, pool, "math")
    assert summary["judged_ok"] >= 1 and summary["sandbox"]
    # Every blind solve that parsed had its program run in the sandbox (the tool call is recorded on the row).
    solved = [row for row in pool if row.get("verification_code")]
    assert solved and all(row["tool_calls"][0]["tool"] == "python" for row in solved)
    report("math", summary, rate, out_of_range, time.monotonic() - started)


# --- misconfigured builds: non-zero exit, the cause on the console --------------------------------------------------


def last_line(console: str) -> str:
    return console.strip().splitlines()[-1]


@pytest.mark.parametrize("mode", ["openai", "tgi"])
def test_a_structured_output_mode_llama_cpp_cannot_read_stops_the_build_with_the_servers_words(
    llama_server, tmp_path, mode
):
    out = tmp_path / "out"
    with RecordingProxy(llama_server) as proxy:
        roles_changes = {
            name: {"structured_output": mode, "token_env": "NANOFLUX_TEST_ENDPOINT_KEY"}
            for name in ("player_a", "player_b", "judge")
        }
        recipe = small_recipe("medical", proxy.url, out, rounds=1, attacks=2, **roles_changes)
        code, console = run_build(recipe, tmp_path, NANOFLUX_TEST_ENDPOINT_KEY="endpoint-key-123")
        asked = proxy.chat_requests()
    line = last_line(console)
    assert code == 1 and "Traceback" not in console
    assert line.startswith("nanoflux build: 2 of 2 attacks failed")
    # One line: the server's own error, the role, the endpoint and the fix.
    assert "Input should be 'text' or 'json_object'" in line and "player_a" in line and proxy.url in line
    assert "Fix: set structured_output: auto for this role" in line and f"(got {mode!r})" in line
    # Each attack was sent once (a rejected request is not retried), with the key the recipe named (and only that).
    assert len(asked) == 2 and {request.authorization for request in asked} == {"Bearer endpoint-key-123"}


def test_an_unreachable_port_stops_the_build_naming_the_role_and_the_endpoint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    recipe = small_recipe("medical", url, tmp_path / "out", rounds=1, attacks=2, decontamination={"enabled": False})
    code, console = run_build(recipe, tmp_path)
    line = last_line(console)
    assert code == 1 and "Traceback" not in console
    assert line.startswith("nanoflux build: 2 of 2 attacks failed") and f"player_a @ {url}: connection error" in line
    assert "gave up after 2 attempts" in line and "Fix:" in line


@pytest.mark.parametrize("token", [None, PLANTED_TOKEN], ids=["no-token", "hf-token"])
def test_hf_hub_offline_with_a_hub_model_id_stops_the_build_naming_the_offline_mode(tmp_path, token):
    recipe = yaml.safe_load((REPO / "configs" / "medical.yaml").read_text())  # Hub model ids, no base_url
    recipe.update(
        rounds=1,
        attacks_per_round=2,
        allow_shared_judge=True,
        decontamination={"enabled": False},
        output_dir=str(tmp_path / "out"),
    )
    for name in ("player_a", "player_b", "judge"):
        recipe[name]["max_attempts"] = 2
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}  # no saved login
    if token:
        env["HF_TOKEN"] = token
    code, console = run_build(recipe, tmp_path, **env)
    line = last_line(console)
    assert code == 1 and "Traceback" not in console and line.startswith("nanoflux build:")
    assert "HF_HUB_OFFLINE" in line and "player_a" in line and "Qwen/Qwen2.5-72B-Instruct" in line
    assert not token or token not in console
