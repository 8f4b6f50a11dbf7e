"""Every bad input is one clear line before any compute: `nanoflux build` with a malformed recipe, override, prompts
folder, corpus, novelty bank, output folder or repo id exits non-zero with `nanoflux build: ...` naming the field (or
file) and the fix; no traceback, no request sent (the endpoints are a closed loopback port), nothing written, and no
model loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import builder.build as build_module
from nanoflux.cli import main

ROOT = Path(__file__).resolve().parent.parent
CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens, so any request would fail loudly


def _base(out: Path) -> dict:
    role = {"base_url": CLOSED, "max_tokens": 64, "timeout": 1.0, "max_attempts": 1}
    return {
        "domain": "medical",
        "capabilities": ["clinical_reasoning", "pharmacology"],
        "rounds": 1,
        "attacks_per_round": 1,
        "judge_tools": ["lookup"],
        "player_a": {**role, "model": "bad-inputs/player-a"},
        "player_b": {**role, "model": "bad-inputs/player-b"},
        "judge": {**role, "model": "bad-inputs/judge", "temperature": 0.0},
        "decontamination": {"enabled": False},
        "output_dir": str(out),
    }


def _merge(data: dict, change: dict) -> dict:
    merged = dict(data)
    for key, value in change.items():
        if value is _DROP:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and not value.get("__replace__"):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = {k: v for k, v in value.items() if k != "__replace__"} if isinstance(value, dict) else value
    return merged


_DROP = object()


def _prompts(tmp: Path, edit) -> str:
    folder = tmp / "prompts"
    shutil.copytree(ROOT / "builder" / "domains" / "medical", folder)
    edit(folder)
    return str(folder)


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


GOOD_PASSAGE = json.dumps({"id": "p1", "title": "Aspirin", "text": "Aspirin inhibits COX."})

# (id, recipe change (a dict, or a function of the tmp folder returning one), CLI overrides, what the message names)
CASES = [
    # types and unknown keys
    ("rounds-string", {"rounds": "three"}, [], "rounds"),
    ("rounds-float", {"rounds": 2.5}, [], "rounds"),
    ("rounds-bool", {"rounds": True}, [], "rounds"),
    ("rounds-list", {"rounds": [1, 2]}, [], "rounds"),
    ("threshold-string", {"novelty": {"threshold": "high"}}, [], "novelty.threshold"),
    ("capabilities-string", {"capabilities": "pharmacology"}, [], "capabilities"),
    ("capabilities-empty", {"capabilities": []}, [], "capabilities"),
    ("capabilities-blank", {"capabilities": ["  "]}, [], "capabilities"),
    ("unknown-key-did-you-mean", {"roundz": 3}, [], "did you mean `rounds`"),
    ("unknown-nested-key", {"judge": {"temprature": 0.1}}, [], "did you mean `judge.temperature`"),
    ("unknown-nested-novelty", {"novelty": {"treshold": 0.9}}, [], "did you mean `novelty.threshold`"),
    ("role-as-list", {"player_a": ["model", "x"]}, [], "player_a: expected a mapping"),
    ("role-as-string", {"judge": "gpt"}, [], "judge: expected a mapping"),
    ("sandbox-as-number", {"sandbox": 5}, [], "sandbox: expected a mapping"),
    ("curation-levels-strings", {"curation": {"quality_levels": ["L4"]}}, [], "curation.quality_levels"),
    # enums
    ("bad-domain", {"domain": "law"}, [], "domain"),
    ("bad-answer-format", {"answer_format": "essay"}, [], "answer_format"),
    ("bad-targeting", {"targeting": "random"}, [], "targeting"),
    ("bad-backend", {"judge": {"backend": "gpu"}}, [], "judge.backend"),
    ("bad-structured-output", {"player_b": {"structured_output": "xml"}}, [], "player_b.structured_output"),
    ("bad-judge-tool", {"judge_tools": ["calculator"]}, [], "judge_tools"),
    (
        "number-without-python",
        {"answer_format": "number", "domain": "math", "judge_tools": ["lookup"]},
        [],
        "judge_tools",
    ),
    # ranges, NaN, infinities
    ("rounds-zero", {"rounds": 0}, [], "rounds"),
    ("attacks-negative", {"attacks_per_round": -5}, [], "attacks_per_round"),
    ("target-size-zero", {"curation": {"target_size": 0}}, [], "curation.target_size"),
    ("target-size-top-level", {"target_size": 150}, [], "target_size: no longer a top-level field (got 150)"),
    ("target-size-top-level-override", {}, ["--target_size", "150"], "moved: set curation.target_size: 150"),
    ("options-one", {"options": 1}, [], "options"),
    ("threshold-too-big", {"novelty": {"threshold": 1.5}}, [], "novelty.threshold"),
    ("threshold-nan", {}, ["--novelty.threshold", ".nan"], "novelty.threshold"),
    ("temperature-inf", {}, ["--judge.temperature", ".inf"], "judge.temperature"),
    ("temperature-too-high", {"judge": {"temperature": 5}}, [], "judge.temperature"),
    ("temperature-negative", {"player_a": {"temperature": -0.1}}, [], "player_a.temperature"),
    ("top-p-zero", {"judge": {"top_p": 0}}, [], "judge.top_p"),
    ("max-tokens-tiny", {"player_b": {"max_tokens": 1}}, [], "player_b.max_tokens"),
    ("concurrency-zero", {"judge": {"max_concurrency": 0}}, [], "judge.max_concurrency"),
    ("wall-seconds-too-small", {"sandbox": {"wall_seconds": 0.01}}, [], "sandbox.wall_seconds"),
    ("memory-tiny", {"sandbox": {"memory_mb": 1}}, [], "sandbox.memory_mb"),
    ("exploration-above-one", {"exploration": 2}, [], "exploration"),
    ("complexity-level-six", {"complexity_levels": [6]}, [], "complexity_levels"),
    # URLs, keys, roles
    ("url-without-scheme", {"judge": {"base_url": "localhost:8080"}}, [], "judge.base_url"),
    ("url-ftp", {"player_a": {"base_url": "ftp://host"}}, [], "player_a.base_url"),
    ("endpoint-without-url-or-model", {"player_b": {"base_url": None, "model": None}}, [], "player_b"),
    ("token-env-is-a-key", {"judge": {"token_env": "hf_abcdefghijklmnop"}}, [], "judge.token_env"),
    ("token-env-bad-name", {"judge": {"token_env": "MY-KEY"}}, [], "judge.token_env"),
    ("shared-judge", {"judge": {"model": "bad-inputs/player-a"}}, [], "judge"),
    # repo ids and paths
    ("push-to-hub-escape", {"push_to_hub": "../escape"}, [], "push_to_hub"),
    ("push-to-hub-no-org", {"push_to_hub": "justname"}, [], "push_to_hub"),
    ("push-to-hub-double-dash", {"push_to_hub": "org/na--me"}, [], "push_to_hub"),
    ("push-to-hub-spaces", {}, ["--push_to_hub", "my org/my data"], "push_to_hub"),
    ("prompts-folder-missing", {"prompts": "/nonexistent/prompts"}, [], "prompts"),
    ("corpus-file-missing", {"corpus": "/nonexistent/corpus.jsonl"}, [], "corpus"),
    ("bank-file-missing", {"novelty": {"bank": "/nonexistent/bank.jsonl"}}, [], "novelty.bank"),
    ("output-dir-is-a-file", lambda tmp: {"output_dir": _write(tmp / "taken.txt", "x")}, [], "output_dir"),
    ("output-dir-under-a-file", lambda tmp: {"output_dir": _write(tmp / "file", "x") + "/run"}, [], "output_dir"),
    ("hub-dir-is-a-file", lambda tmp: {"hub_dir": _write(tmp / "hub", "x"), "push_to_hub": "org/name"}, [], "hub_dir"),
    # prompts folders
    (
        "prompts-missing-file",
        lambda tmp: {"prompts": _prompts(tmp, lambda f: (f / "judge.txt").unlink())},
        [],
        "judge.txt",
    ),
    (
        "prompts-missing-rubric",
        lambda tmp: {"prompts": _prompts(tmp, lambda f: (f / "rubric.yaml").unlink())},
        [],
        "rubric.yaml",
    ),
    (
        "prompts-missing-user-section",
        lambda tmp: {
            "prompts": _prompts(tmp, lambda f: _write(f / "defender.txt", "### system\nAnswer: $question\n"))
        },
        [],
        "defender.txt",
    ),
    (
        "prompts-unknown-placeholder",
        lambda tmp: {
            "prompts": _prompts(
                tmp, lambda f: _write(f / "solver.txt", "### system\nSolve.\n### user\n$question for $patient\n")
            )
        },
        [],
        "$patient",
    ),
    (
        "prompts-stray-dollar",
        lambda tmp: {
            "prompts": _prompts(
                tmp, lambda f: _write(f / "defender.txt", "### system\nCosts $5.\n### user\n$question\n")
            )
        },
        [],
        "defender.txt",
    ),
    (
        "prompts-missing-question",
        lambda tmp: {
            "prompts": _prompts(
                tmp, lambda f: _write(f / "defender.txt", "### system\nAnswer.\n### user\nAnswer it.\n")
            )
        },
        [],
        "$question",
    ),
    (
        "prompts-bad-rubric",
        lambda tmp: {"prompts": _prompts(tmp, lambda f: _write(f / "rubric.yaml", "quality: [oops\n"))},
        [],
        "rubric.yaml",
    ),
    (
        "prompts-rubric-no-levels",
        lambda tmp: {
            "prompts": _prompts(
                tmp, lambda f: _write(f / "rubric.yaml", "quality: []\ncomplexity: {description: x, levels: {1: a}}\n")
            )
        },
        [],
        "rubric.yaml",
    ),
    # corpora and banks
    ("corpus-empty", lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", "")}, [], "corpus"),
    ("corpus-not-json", lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", "{not json\n")}, [], "corpus.jsonl:1"),
    (
        "corpus-missing-field",
        lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", '{"id": "a", "title": "t"}\n')},
        [],
        "'text'",
    ),
    (
        "corpus-duplicate-id",
        lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", GOOD_PASSAGE + "\n" + GOOD_PASSAGE + "\n")},
        [],
        "duplicate id",
    ),
    ("corpus-not-utf8", lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", b"\xff\xfe\x00bad")}, [], "UTF-8"),
    ("corpus-is-a-list", lambda tmp: {"corpus": _write(tmp / "corpus.jsonl", "[1, 2]\n")}, [], "corpus.jsonl:1"),
    (
        "bank-not-json",
        lambda tmp: {"novelty": {"bank": _write(tmp / "bank.jsonl", '{"question": "ok"}\n{broken\n')}},
        [],
        "bank.jsonl:2",
    ),
    (
        "bank-not-objects",
        lambda tmp: {"novelty": {"bank": _write(tmp / "bank.jsonl", '"just a string"\n')}},
        [],
        "bank.jsonl:1",
    ),
    (
        "bank-question-not-text",
        lambda tmp: {"novelty": {"bank": _write(tmp / "bank.jsonl", '{"question": 42}\n')}},
        [],
        "question",
    ),
    ("bank-empty", lambda tmp: {"novelty": {"bank": _write(tmp / "bank.jsonl", "\n")}}, [], "novelty.bank"),
    (
        "bank-bad-parquet",
        lambda tmp: {"novelty": {"bank": _write(tmp / "bank.parquet", "not parquet")}},
        [],
        "bank.parquet",
    ),
    # overrides
    ("override-without-value", {}, ["--rounds"], "rounds"),
    ("override-bad-yaml", {}, ["--curation.quality_levels", "[3, 4"], "curation.quality_levels"),
    ("override-unknown-field", {}, ["--atacks-per-round", "3"], "did you mean `attacks_per_round`"),
    ("override-stray-argument", {}, ["oops"], "oops"),
]

RAW_RECIPES = [  # (id, file content, what the message names)
    ("empty-file", "", "is empty"),
    ("only-comments", "# nothing here\n", "is empty"),
    ("list-instead-of-mapping", "- domain: medical\n- rounds: 2\n", "must be a mapping"),
    ("bare-scalar", "medical\n", "must be a mapping"),
    ("invalid-yaml", "domain: medical\nrounds: [1, 2\n", "not valid YAML"),
    ("tab-indented-yaml", "judge:\n\tmodel: x\n", "not valid YAML"),
]


@pytest.fixture
def guarded(monkeypatch):
    """Record any step that would load a model, send a request, run the sandbox or write the output folder."""
    touched: list[str] = []

    def refuse(name):
        def step(*args, **kwargs):
            touched.append(name)
            raise AssertionError(f"{name} ran for a bad input")

        return step

    for name in ("load_embedder", "make_clients", "prepare_output_dir", "load_reference"):
        monkeypatch.setattr(build_module, name, refuse(name))
    monkeypatch.setattr(build_module, "open_target", refuse("open_target"))
    monkeypatch.setattr(build_module.sandbox, "require_confinement", refuse("sandbox.require_confinement"))
    return touched


def _run(argv: list[str], capsys) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    code = exit_info.value.code
    message = code if isinstance(code, str) else captured.err
    return code, message


def _assert_clear(code, message: str, names: str, out: Path, touched: list[str], before: set[Path]) -> None:
    assert code not in (0, None), message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    assert len(lines) == 1, message
    line = lines[0]
    assert line.startswith("nanoflux build: "), line
    assert names in line, line
    assert "Fix:" in line, line
    assert "Traceback" not in message
    assert not touched, touched
    assert {p for p in out.parent.rglob("*")} == before or not out.exists(), "a bad input wrote files"
    assert not out.is_dir(), f"{out} was created"


@pytest.mark.parametrize("case_id, change, overrides, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_before_any_compute(tmp_path, capsys, guarded, case_id, change, overrides, names):
    out = tmp_path / "out"
    data = _merge(_base(out), change(tmp_path) if callable(change) else change)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    before = set(tmp_path.rglob("*"))
    code, message = _run(["build", "--config", str(recipe), *overrides], capsys)
    _assert_clear(
        code, message, names, out if data.get("output_dir") == str(out) else tmp_path / "never", guarded, before
    )
    assert set(tmp_path.rglob("*")) == before, "a bad input wrote files"


@pytest.mark.parametrize("case_id, text, names", RAW_RECIPES, ids=[c[0] for c in RAW_RECIPES])
def test_malformed_recipe_file_is_one_clear_line(tmp_path, capsys, guarded, case_id, text, names):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, message = _run(["build", "--config", str(recipe)], capsys)
    _assert_clear(code, message, names, tmp_path / "out", guarded, set(tmp_path.rglob("*")))
    assert "capabilities" not in message  # an empty file is about the file, not about a field it lacks


def test_missing_recipe_file_and_bad_log_level(tmp_path, capsys, guarded):
    code, message = _run(["build", "--config", str(tmp_path / "nope.yaml")], capsys)
    _assert_clear(code, message, "--config", tmp_path / "out", guarded, set())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_base(tmp_path / "out")))
    code, message = _run(["build", "--config", str(recipe), "--log_level", "FOO"], capsys)
    _assert_clear(code, message, "--log_level", tmp_path / "out", guarded, set())


def test_messages_name_nested_fields_plainly(tmp_path, capsys, guarded):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_merge(_base(tmp_path / "out"), {"player_a": "model-x", "rounds": 2})))
    _, message = _run(["build", "--config", str(recipe)], capsys)
    assert "player_a." not in message and "player_a:" in message
    recipe.write_text(yaml.safe_dump(_merge(_base(tmp_path / "out"), {"rounds": "three"})))
    _, message = _run(["build", "--config", str(recipe)], capsys)
    assert "a int" not in message and "an integer" in message


def test_packaged_prompts_render_every_placeholder():
    from builder import roles

    for domain in ("math", "science", "medical"):
        roles.check_templates(roles.load_prompts(domain))


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--push_to_hub", "../escape"], "push_to_hub"),
        (["--log_level", "FOO"], "--log_level"),
        (["--novelty.threshold", ".nan"], "novelty.threshold"),
    ],
)
def test_as_a_subprocess_no_traceback(tmp_path, extra, names):
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_base(out)))
    proc = subprocess.run(
        [sys.executable, "-m", "nanoflux.cli", "build", "--config", str(recipe), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nanoflux build: ") and names in lines[0] and "Fix:" in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_a_good_recipe_passes_preflight(tmp_path, capsys, guarded):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_base(tmp_path / "out")))
    with pytest.raises(AssertionError, match="prepare_output_dir ran"):
        main(["build", "--config", str(recipe)])
    assert guarded == ["prepare_output_dir"]  # the checks passed, nothing before the output folder ran
