"""The Gradio Space (spaces/): handlers as plain functions against a loopback Hub holding a two-version dataset, the
app built without launching, `nanoflux space deploy` through huggingface_hub to the loopback Hub and to a local
repository folder, and — marked `slow` — the comparison on the packaged SmolLM2 with LoRA adapters, then
`nanoflux space` launched for real and driven by gradio_client and by Debian's headless Chromium (Selenium).

The browser test screenshots every tab (NANOFLUX_SCREENSHOTS=<dir> keeps copies) and fails on a table header narrower
than its longest word, or a server traceback after an input error. It fails when Chromium is missing and
NANOFLUX_REQUIRE_BROWSER is set (CI sets it), else it is skipped.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import BuildFolder
from builder.dataset import sft_messages, to_dataset
from localhub import LocalHub, RepoStore
from localhub.serving import free_port, stop_process, wait_until_answers
from tests import scripted_roles

ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = ROOT / "spaces"
sys.path.insert(0, str(SPACE_DIR))  # as on a Space: app.py's folder is on the path and its modules import each other

import app as space_app  # noqa: E402
import comparison  # noqa: E402
import gradio as gr  # noqa: E402
import settings as space_settings  # noqa: E402

# huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

DATASET = "org/nanoflux-medical"
ADAPTER_REPO = "org/smollm2-nanoflux-lora"
TOKEN = "hf_FAKEspaceTOKEN0123456789abcdef"
PROMPT = "What is the capital of France?"


# --- a dataset repo with two versions, and evaluation results ---------------------------------------------

# (question index, round, capability, judge complexity, quality level, defender correct, first version)
ROWS = [
    (0, 0, "cardiology", 3, 4, True, "v1"),
    (2, 0, "biostatistics", 4, 4, False, "v1"),
    (4, 1, "biostatistics", 2, 3, False, "v1"),
    (1, 1, "pharmacology", 4, 5, False, "v2"),
    (3, 1, "pharmacology", 3, 4, True, "v2"),
]


def rid(q: int) -> str:
    """Row q's id, shaped like a content id (a hash of the question): stable across versions, longer than r0-a0."""
    import hashlib

    return "q" + hashlib.sha256(scripted_roles.QUESTIONS[q].encode()).hexdigest()[:15]


# Row 0's Judge ran a long program with a long output: the tool table cuts it, the detail view shows it in full.
LONG_INPUT = (
    "import math\n"
    + "\n".join(f"dose_{i} = 5 * 70 * math.exp(-{i} / 8)  # mg after {i} h" for i in range(12))
    + "\nprint(dose_11)"
)
LONG_OUTPUT = " ".join(f"t={i}h: {5 * 70 * 2.718 ** (-i / 8):.3f} mg;" for i in range(60)) + " END-OF-OUTPUT"


def make_row(q: int, round_: int, capability: str, complexity: int, quality: int, correct: bool, version: str) -> dict:
    question = scripted_roles.QUESTIONS[q]
    reference = scripted_roles.REFERENCES[q]
    answer = reference if correct else "E"
    calls = [{"tool": "lookup", "input": f"query {q}", "output": f"corpus passage {q}", "ok": True, "error": None}]
    if q == 0:
        calls += [
            {"tool": "python", "input": LONG_INPUT, "output": LONG_OUTPUT, "ok": True, "error": None},
            {
                "tool": "python",
                "input": "1/0",
                "output": "",
                "ok": False,
                "error": "ZeroDivisionError: division by zero",
            },
        ]
    return {
        "id": rid(q),
        "round": round_,
        "attack_index": q,
        "domain": "medical",
        "capability": capability,
        "target_complexity": complexity,
        "attacker": "player_a",
        "defender": "player_b",
        "attacker_model": "scripted-a",
        "defender_model": "scripted-b",
        "judge_model": "scripted-judge",
        "question": question,
        "reference_answer": reference,
        "explanation": f"1. Step one for question {q}. 2. Step two links the facts.",
        "verification_code": "",
        "defender_reasoning": f"Defender reasoning {q}.",
        "defender_answer": answer,
        "defender_correct": correct,
        "judge_defender_correct": correct,
        "question_valid": True,
        "reference_verified": None,
        "judge_scores": [{"name": "clinical_accuracy", "score": quality}, {"name": "multi_hop", "score": quality}],
        "reasoning_quality": float(quality),
        "quality_level": quality,
        "judge_complexity": complexity,
        "judge_rationale": f"Judge rationale {q}.",
        "judge_status": "ok",
        "tool_calls": calls,
        "novel": True,
        "novelty_similarity": 0.1,
        "version": version,
        "messages": sft_messages(question, "Because.", reference),
    }


def _parquet(rows: list[dict]) -> bytes:
    import io

    buffer = io.BytesIO()
    to_dataset(rows).to_parquet(buffer)
    return buffer.getvalue()


def make_dataset_repo(root: Path) -> dict[str, str]:
    """DATASET with v1 (3 rows) and v2 (v1's rows + 2 new, one v1 row re-judged); {tag: commit}."""
    store = RepoStore(root)
    store.create_repo("dataset", DATASET)
    v1 = [make_row(*r) for r in ROWS if r[-1] == "v1"]
    v2 = [make_row(*r) for r in ROWS]
    v2[2] = {**v2[2], "judge_rationale": "Re-judged."}
    tags = {}
    for tag, rows in (("v1", v1), ("v2", v2)):
        sha = store.create_commit(
            "dataset",
            DATASET,
            "main",
            add={BuildFolder.DATA: _parquet(rows), "README.md": b"# test\n"},
            title=f"NanoFlux {tag}",
        )
        tags[tag] = store.create_ref("dataset", DATASET, "tags", tag, sha)
    return tags


def make_results(folder: Path) -> Path:
    """results.json shaped as `nanoflux eval` writes it (base, adapter, baseline on two fixture benchmarks), and
    details/ with the prompts as the evaluation built them."""
    from nanoflux.benchmarks import BenchmarkConfig, load_benchmark
    from nanoflux.scoring import paired_comparisons, score
    from trainer.evaluation.report import write_results

    benchmarks, scores, paired = [], {}, {}
    for fmt, path, split, correct in (
        ("medqa", "medqa.jsonl", "test", [[1, 0, 0], [1, 1, 0], [1, 1, 1]]),
        ("gsm_hard", "gsm_hard.jsonl", "train", [[0, 0, 0], [1, 0, 0], [0, 1, 0]]),
    ):
        bench = BenchmarkConfig(format=fmt, path=str(ROOT / "samples" / "benchmarks" / path), split=split, limit=3)
        bench.validate(fmt)
        examples = load_benchmark(bench, reasoning=False)
        benchmarks.append(
            {
                "name": bench.name,
                "title": bench.title,
                "format": fmt,
                "kind": bench.kind,
                "path": bench.path,
                "subset": None,
                "split": split,
                "revision": None,
                "rows": len(examples),
            }
        )
        scores[bench.name] = {
            v: score([bool(c) for c in cs], 0, samples=200)
            for v, cs in zip(("base", "adapter", "baseline"), correct, strict=True)
        }
        paired[bench.name] = paired_comparisons(
            {
                v: [{"id": str(i), "correct": bool(c)} for i, c in enumerate(cs)]
                for v, cs in zip(("base", "adapter", "baseline"), correct, strict=True)
            },
            samples=200,
        )
        (folder / "details").mkdir(parents=True, exist_ok=True)
        with open(folder / "details" / f"{bench.name}-base.jsonl", "w") as f:
            for e in examples:
                f.write(
                    json.dumps(
                        {
                            "id": e.id,
                            "prompt": e.prompt,
                            "output": "",
                            "extracted": None,
                            "gold": e.gold,
                            "correct": False,
                        }
                    )
                    + "\n"
                )
    results = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "adapter": "outputs/adapter-local",
        "baseline_adapter": "outputs/adapter-baseline",
        "variants": ["base", "adapter", "baseline"],
        "partition": "test",
        "benchmarks": benchmarks,
        "results": scores,
        "paired": paired,
        "aggregates": {},
        "generation": {
            "greedy": True,
            "max_new_tokens": 64,
            "batch_size": 4,
            "reasoning": False,
            "enable_thinking": None,
            "chat_template": True,
            "dtype": "float32",
            "device": "cpu",
        },
        "bootstrap": {"samples": 200, "seed": 0, "level": 0.95},
        "compute": {
            "measured": {
                "nanoflux": {
                    "dataset": "x@v1@abc",
                    "rows": 5,
                    "train_tokens": 2000,
                    "steps": 3,
                    "wall_time_s": 10.0,
                    "devices": 1,
                    "device_seconds": 10.0,
                    "hardware": "cpu",
                    "resumed_from": None,
                },
                "baseline": {
                    "dataset": "y@main@def",
                    "rows": 50,
                    "train_tokens": 24000,
                    "steps": 36,
                    "wall_time_s": 75.0,
                    "devices": 1,
                    "device_seconds": 75.0,
                    "hardware": "cpu",
                    "resumed_from": None,
                },
                "ratios": {"train_tokens": 12.0, "steps": 12.0, "device_seconds": 7.5},
                "notes": [],
            },
            "generation": None,
            "estimate": {
                "label": "estimate",
                "nanoflux": {"data": "x", "split": "train", "revision": None, "rows": 5, "tokens": 1000},
                "baseline": {"data": "y", "subset": None, "split": "train", "rows": 50, "tokens": 9000},
                "ratio": 9.0,
                "unit": "tokens",
            },
        },
        "config": {},
        "packages": {},
        "wall_time_s": 1.0,
        "finished_at": "2025-01-01T00:00:00+00:00",
    }
    write_results(results, folder)
    return folder


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("space-hub")
    make_dataset_repo(root)
    return root


@pytest.fixture(scope="module")
def hub(hub_root, tmp_path_factory):
    """A LocalHub over hub_root, with huggingface_hub pointed at it for the whole module (loopback only)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    from tests.hub_clients import point_clients_at

    previous = _http._GLOBAL_CLIENT_FACTORY
    with LocalHub(hub_root, token=TOKEN) as server, pytest.MonkeyPatch.context() as mp:
        point_clients_at(mp, server.url, tmp_path_factory.mktemp("space-hf-home"))
        yield server
        set_client_factory(previous)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("eval"))


def _space(hub, results_dir=None, **changes) -> space_app.NanoFluxSpace:
    settings = space_app.Settings(
        dataset=DATASET, base_model="no/such-model", results=str(results_dir) if results_dir else None
    )
    for key, value in changes.items():
        setattr(settings, key, value)
    space = space_app.NanoFluxSpace(settings)
    space.refresh()
    return space


# --- settings ---------------------------------------------------------------------------------------------


def test_settings_come_from_space_variables_then_the_readme_front_matter_then_defaults(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "---\nsdk: gradio\nmodels:\n- org/base\n- org/adapter-a\n- org/adapter-b\ndatasets:\n- org/data\n---\n# x\n"
    )
    from_card = space_app.Settings.from_env({}, readme)
    assert (from_card.dataset, from_card.base_model, from_card.adapters) == (
        "org/data",
        "org/base",
        ["org/adapter-a", "org/adapter-b"],
    )

    env = {
        "NANOFLUX_DATASET": "me/other",
        "NANOFLUX_BASE_MODEL": "/models/base",
        "NANOFLUX_ADAPTERS": " /a , me/b@v2 ,",
        "NANOFLUX_MAX_NEW_TOKENS": "32",
    }
    from_env = space_app.Settings.from_env(env, readme)
    assert (from_env.dataset, from_env.base_model, from_env.adapters) == (
        "me/other",
        "/models/base",
        ["/a", "me/b@v2"],
    )
    assert from_env.max_new_tokens == 32 and from_env.default_new_tokens == 32

    bare = space_app.Settings.from_env({}, tmp_path / "missing.md")
    assert bare.dataset is None and bare.base_model == space_settings.DEFAULT_BASE_MODEL and bare.adapters == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "NANOFLUX_MAX_NEW_TOKENS",
            "lots",
            "NANOFLUX_MAX_NEW_TOKENS: not a whole number (got 'lots'). Fix: set it to a number from 1 to 4096",
        ),
        (
            "NANOFLUX_CONCURRENCY",
            "0",
            "NANOFLUX_CONCURRENCY: out of range (got 0). Fix: set it to a number from 1 to 64",
        ),
    ],
)
def test_a_bad_limit_fails_at_startup_naming_the_variable_value_and_fix(tmp_path, name, value, message):
    with pytest.raises(space_settings.SettingsError) as err:
        space_app.Settings.from_env({name: value}, tmp_path / "README.md")
    assert str(err.value) == message


# --- Explore ----------------------------------------------------------------------------------------------


def test_startup_lists_the_versions_newest_first_and_what_is_missing(hub, results_dir):
    space = _space(hub, results_dir)
    status, question_version, adapter, benchmark, version, diff_old, diff_new = space.startup()
    assert question_version["choices"] == ["v2", "v1"] and question_version["value"] == "v2"
    assert (diff_old["value"], diff_new["value"]) == ("v1", "v2")
    assert adapter["choices"] == [] and "No adapter is configured" in status
    assert "`org/nanoflux-medical` (2 versions: v2, v1)" in status
    assert [label.split(" · ")[0] for label, _ in benchmark["choices"]] == ["MedQA (USMLE, 4 options)"] * 3 + [
        "GSM-Hard"
    ] * 3


def test_explore_filters_by_round_capability_complexity_quality_and_defender(hub):
    space = _space(hub)
    rounds, capabilities = space.explore_options("v2")
    assert rounds["choices"] == [0, 1] and capabilities["choices"] == ["biostatistics", "cardiology", "pharmacology"]

    summary, table, row = space.explore("v2", [], [], [], [], "any")
    assert summary.startswith("**5** of 5 rows of v2") and list(table["value"]["version"]) == [
        "v1",
        "v1",
        "v1",
        "v2",
        "v2",
    ]

    cases = {("failed",): [rid(2), rid(4), rid(1)], ("correct",): [rid(0), rid(3)]}
    for (defender,), ids in cases.items():
        assert list(space.explore("v2", [], [], [], [], defender)[1]["value"]["id"]) == ids
    assert list(space.explore("v2", [1], ["pharmacology"], [], [], "any")[1]["value"]["id"]) == [rid(1), rid(3)]
    assert list(space.explore("v2", [], [], [4], ["L4", "L5"], "failed")[1]["value"]["id"]) == [rid(2), rid(1)]
    summary, table, row = space.explore("v2", [], [], [], ["L3"], "correct")
    assert summary.startswith("**0** of 5") and table["value"].empty and row["value"] is None


def test_a_row_shows_question_explanation_defender_answer_judge_rationale_and_tool_results(hub):
    space = _space(hub)
    _, table, row = space.explore("v1", [], [], [], [], "failed")
    index = row["value"]
    (
        question,
        reference,
        explanation,
        defender,
        reasoning,
        rationale,
        scores,
        tools,
        tool_input,
        tool_output,
        fields,
    ) = space.row_details("v1", index)
    assert question == scripted_roles.QUESTIONS[2] and reference == "D"
    assert explanation.startswith("1. Step one for question 2") and defender.startswith(
        "E (failed; player_b: scripted-b)"
    )
    assert reasoning == "Defender reasoning 2." and rationale == "[ok] Judge rationale 2."
    assert tools["value"].to_dict("records") == [
        {"#": 1, "tool": "lookup", "ok": True, "input": "query 2", "output": "corpus passage 2", "error": ""}
    ]
    assert (tool_input, tool_output) == (
        "Call 1 of 1: lookup (ok)\n\nquery 2",
        "corpus passage 2",
    )  # the first call, in full
    assert dict(zip(scores["value"]["criterion"], scores["value"]["score"], strict=True))["quality level"] == "L4"
    assert fields["id"] == rid(2) and fields["judge_rationale"] == "Judge rationale 2." and "messages" not in fields


def test_a_long_tool_output_is_cut_in_the_table_and_shown_in_full_when_its_call_is_selected(hub):
    from tables import MAX_CHARS, MIN_TEXT_PX

    space = _space(hub)
    *_, tools, tool_input, tool_output, _ = space.row_details("v1", "0")
    assert (
        list(tools["value"]["#"]) == [1, 2, 3] and tools["value"]["output"][1] == LONG_OUTPUT
    )  # the frontend cuts it
    widths = dict(zip(tools["value"].columns, tools["column_widths"], strict=True))
    px = {column: int(width.removesuffix("px")) for column, width in widths.items()}
    assert px["output"] > px["input"] >= MIN_TEXT_PX and px["ok"] < 100 and len(LONG_OUTPUT) > MAX_CHARS
    assert (tool_input, tool_output) == (
        "Call 1 of 3: lookup (ok)\n\nquery 0",
        "corpus passage 0",
    )  # before any click: the first call

    def select(number: int) -> gr.SelectData:  # a click on call `number`'s output cell
        return gr.SelectData(None, {"index": [number - 1, 4], "value": "", "row_value": [number], "selected": True})

    assert space.select_tool_call("v1", "0", select(2)) == (f"Call 2 of 3: python (ok)\n\n{LONG_INPUT}", LONG_OUTPUT)
    assert space.select_tool_call("v1", "0", select(3)) == (
        "Call 3 of 3: python (failed)\n\n1/0",
        "Error: ZeroDivisionError: division by zero",
    )
    assert space.select_tool_call("v1", None, select(1)) == (gr.update(), gr.update())


def test_what_changed_between_two_versions(hub):
    space = _space(hub)
    summary, table = space.diff("v1", "v2")
    assert summary.startswith(
        "**v1 → v2**: 3 → 5 rows; **2 added**, 0 removed, 1 changed, 2 unchanged."
    ) and summary.endswith("Rows matched by id.")
    table = table["value"]
    assert sorted(table["change"]) == ["added", "added", "changed"]
    assert table.loc[table["change"] == "changed", "fields"].tolist() == ["judge_rationale"]
    assert table.loc[table["change"] == "added", "id"].tolist() == [rid(1), rid(3)]
    assert space.diff("v2", "v1")[0].startswith("**v2 → v1**: 5 → 3 rows; **0 added**, 2 removed, 1 changed")


def _rows(*specs) -> list[dict]:
    return [make_row(*ROWS[i]) for i in specs]


def test_the_diff_matches_rows_on_their_id_so_a_question_asked_again_by_a_later_build_is_a_new_row():
    from versions import diff_versions

    old = _rows(0, 1)
    again = {**make_row(*ROWS[0]), "id": "q-asked-again-in-build-2", "version": "v2", "defender_answer": "C"}
    changes = diff_versions(old, [*old, again])
    assert (
        changes["matched_by"] == "id"
        and changes["added"] == [again]
        and not changes["changed"]
        and changes["unchanged"] == 2
    )


@pytest.mark.parametrize("older", ["no ids", "ids restarted per build", "an id reused for another question"])
def test_the_diff_falls_back_to_the_question_text_when_the_ids_cannot_be_trusted(older):
    from versions import diff_versions, match_key

    old, new = _rows(0, 1, 2), _rows(0, 1, 2, 3)
    new[2] = {**new[2], "judge_rationale": "Re-judged."}
    if older == "no ids":  # a build from before ids existed
        old = [{k: v for k, v in r.items() if k != "id"} for r in old]
    elif (
        older == "ids restarted per build"
    ):  # r<round>-a<attack>: the second build's rows repeat the first build's ids
        for rows in (old, new):
            for i, r in enumerate(rows):
                r["id"] = f"r0-a{i % 3}"
    else:  # unique within each version, but the same id names different questions in the two versions
        old = [{**r, "id": f"r0-a{i}"} for i, r in enumerate(old)]
        new = [{**r, "id": f"r0-a{(i + 1) % 4}"} for i, r in enumerate(new)]
    assert match_key(old, new) == "question"
    changes = diff_versions(old, new)
    assert [r["question"] for r in changes["added"]] == [scripted_roles.QUESTIONS[ROWS[3][0]]] and not changes[
        "removed"
    ]
    assert [fields for _, _, fields in changes["changed"]] == [["judge_rationale"]]  # an untrusted id is no change
    assert changes["columns_added"] == (["id"] if older == "no ids" else [])  # said once, not as a change of every row


def test_a_missing_dataset_or_version_gives_a_clear_message(hub, tmp_path):
    nothing = _space(hub, dataset=None)
    assert "No dataset is configured. Fix: set the NANOFLUX_DATASET variable" in nothing.status()
    assert nothing.startup()[1]["choices"] == []

    absent = _space(hub, dataset="org/absent")
    assert f"Dataset org/absent was not found on {hub.url}. Fix: check NANOFLUX_DATASET" in absent.status()

    space = _space(hub)
    with pytest.raises(gr.Error, match=r"has no version 'v9' \(has v2, v1\). Fix: pick one of those"):
        space.explore("v9", [], [], [], [], "any")
    RepoStore(hub.root).create_repo("dataset", "org/untagged")
    assert (
        "Dataset org/untagged has no version yet (no v1, v2, ... tag). Fix: publish one with `nanoflux publish`"
        in _space(hub, dataset="org/untagged").status()
    )


# --- Compare: choices and input limits ---------------------------------------------------------------------


def test_a_dataset_question_fills_the_prompt_with_its_reference_and_a_benchmark_question_with_its_gold_answer(
    hub, results_dir
):
    space = _space(hub, results_dir)
    choices = space.dataset_questions("v2")["choices"]
    assert len(choices) == 5 and choices[3][1] == "v2#3"
    prompt, reference = space.pick_dataset_question("v2#3")
    assert prompt == scripted_roles.QUESTIONS[1]
    assert reference.startswith(
        f"Reference answer (v2, {rid(1)}): {scripted_roles.REFERENCES[1]}\n\n1. Step one for question 1"
    )

    label, value = space.benchmark_choices()[0]
    prompt, gold = space.pick_benchmark_question(value)
    assert "A. Acute cystitis\nB. Acute pyelonephritis" in prompt and prompt.endswith("`Final answer: <letter>`.")
    assert gold == "Gold answer (MedQA (USMLE, 4 options), 0): B"
    _, gsm_gold = space.pick_benchmark_question(space.benchmark_choices()[3][1])
    assert gsm_gold == "Gold answer (GSM-Hard, 0): -9867630"


def test_adapter_versions_are_a_repos_tags_and_main_and_a_missing_adapter_is_named(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `outputs/adapter-local` is relative: a checkout that trained one must not see it
    store = RepoStore(hub.root)
    store.create_repo("model", "org/listed-lora")
    for tag in ("v1", "v2"):
        sha = store.create_commit(
            "model",
            "org/listed-lora",
            "main",
            add={"adapter_config.json": json.dumps({"tag": tag}).encode()},
            title=tag,
        )
        store.create_ref("model", "org/listed-lora", "tags", tag, sha)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    choices, problems = comparison.adapter_versions(
        [str(folder), "org/listed-lora", "org/pinned@abc123", "outputs/adapter-local", str(tmp_path)]
    )
    assert [value for _, value in choices] == [
        str(folder),
        "org/listed-lora@main",
        "org/listed-lora@v2",
        "org/listed-lora@v1",
        "org/pinned@abc123",
    ]
    assert problems == [
        (
            f"Adapter outputs/adapter-local not found: no such folder, and no such model repo on {hub.url}. Fix: train"
            " one (`nanoflux train --config configs/train/local.yaml`) or set NANOFLUX_ADAPTERS"
        ),
        f"Adapter folder {tmp_path} holds no adapter_config.json. Fix: point it at the folder `nanoflux train` wrote",
    ]


@pytest.mark.parametrize(
    ("prompt", "adapter", "tokens", "message"),
    [
        ("   ", None, 8, "Write a prompt, or pick a question"),
        ("x" * 101, None, 8, "The prompt is 101 characters; the limit is 100. Shorten it."),
        ("hi", None, 0, "max_new_tokens must be from 1 to 16 (got 0)."),
        ("hi", None, 17, "max_new_tokens must be from 1 to 16 (got 17)."),
        ("hi", "evil/repo@main", 8, "Adapter version 'evil/repo@main' is not offered by this Space."),
    ],
)
def test_compare_refuses_bad_input_before_loading_any_model(hub, prompt, adapter, tokens, message):
    space = _space(hub, max_prompt_chars=100, max_new_tokens=16)
    with pytest.raises(gr.Error) as err:
        next(space.compare(prompt, adapter, tokens))
    assert message in err.value.message
    assert space.comparison.model is None


def test_a_base_model_that_cannot_be_loaded_is_named_with_the_fix(hub):
    space = _space(hub)  # base_model "no/such-model" is on no hub
    run = space.compare("hi", None, 4)
    assert next(run) == ("", "", "Generating…")
    with pytest.raises(gr.Error) as err:
        next(run)
    assert (
        err.value.message.startswith("The base model no/such-model could not be loaded")
        and "Fix: set NANOFLUX_BASE_MODEL" in err.value.message
    )


# --- Results ----------------------------------------------------------------------------------------------


def test_results_show_each_benchmark_base_vs_tuned_vs_baseline_and_distributions_per_version(hub, results_dir):
    space = _space(hub, results_dir)
    eval_summary, eval_figure, eval_table, eval_paired, dist_summary, dist_figure, dist_table = space.results()
    eval_table, eval_paired, dist_table = eval_table["value"], eval_paired["value"], dist_table["value"]
    assert (
        "measured (baseline / NanoFlux training run): **12.0×** training tokens, **12.0×** optimizer steps, **7.5×**"
        " device seconds" in eval_summary
    )
    assert "estimated from token counts: the full benchmark processes **9.0×**" in eval_summary
    assert (
        list(eval_table["variant"])
        == ["base", "base + NanoFlux adapter", "base + full-benchmark adapter (baseline)"] * 2
    )
    assert list(eval_table["accuracy (%)"]) == [33.3, 66.7, 100.0, 0.0, 33.3, 33.3]
    assert len(eval_figure.axes[0].patches) == 6  # a bar per benchmark and variant
    # Every bar carries its value; GSM-Hard's base model scored 0: a labelled stub at 0, visible above the axis.
    assert sorted(t.get_text() for t in eval_figure.axes[0].texts) == sorted(
        ["33%", "67%", "100%", "0%", "33%", "33%"]
    )
    assert eval_figure.axes[0].get_ylim()[0] < 0
    stubs = [
        line for line in eval_figure.axes[0].lines if list(line.get_ydata()) == [0, 0] and line.get_linewidth() >= 2
    ]
    assert len(stubs) == 1
    assert (
        len(eval_figure.axes) == 2 and len(eval_figure.axes[1].lines) >= 6
    )  # beside it, a paired difference per pair
    medqa = eval_paired[eval_paired["benchmark"] == "MedQA (USMLE, 4 options)"].set_index("comparison")
    assert medqa.loc[
        "NanoFlux adapter − base", ["n", "Δ accuracy (points)", "wins / losses", "McNemar p"]
    ].tolist() == [3, 33.3, "1 / 0", "1"]
    assert medqa.loc[
        "full-benchmark baseline − base", ["Δ accuracy (points)", "wins / losses", "McNemar p"]
    ].tolist() == [66.7, "2 / 0", "0.5"]
    assert len(eval_paired) == 6  # three pairs on each of two benchmarks
    by_version = dist_table.set_index("version")
    assert by_version.loc["v1", ["rows", "L3", "L4", "L5"]].tolist() == [3, 1, 2, 0]
    assert by_version.loc["v2", ["rows", "L3", "L4", "L5", "complexity 3", "complexity 4"]].tolist() == [
        5,
        1,
        3,
        1,
        2,
        2,
    ]
    assert len(dist_figure.axes) == 2
    quality = dist_figure.axes[0]
    assert [t.get_text() for t in quality.texts] == [
        "0",
        "0",
        "1",
        "2",
        "0",
        "0",
        "0",
        "1",
        "3",
        "1",
    ]  # v1 then v2, L1-L5
    assert (
        quality.get_ylim()[0] < 0 and sum(1 for line in quality.lines if line.get_linewidth() >= 2) == 5
    )  # a stub per zero

    missing = _space(hub, results="/nowhere/results.json").results()
    assert missing[0].startswith(
        "⚠️ No evaluation results at /nowhere/results.json. Fix: run `nanoflux eval --config configs/eval/local.yaml`"
    )
    assert missing[1] is None and missing[3] is None and missing[5] is not None


def test_results_of_an_older_evaluation_without_paired_comparisons_still_show(tmp_path):
    from evaluation import paired_table, results_figure, results_summary, results_table

    results = json.loads((make_results(tmp_path) / "results.json").read_text())
    results.pop("paired"), results.pop("aggregates"), results.pop("partition")
    results["compute"] = results["compute"]["estimate"]  # results.json before the measured compute: the estimate only
    assert "**9.0×** the training tokens" in results_summary(results)
    assert paired_table(results).empty and len(results_table(results)) == 6
    assert len(results_figure(results).axes) == 1


# --- the app, its files -----------------------------------------------------------------------------------


def test_the_app_builds_without_launching_with_a_bounded_queue_and_no_token_in_its_config(
    hub, results_dir, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    settings = space_app.Settings(dataset=DATASET, results=str(results_dir), queue_size=7, concurrency=2)
    demo = space_app.build_demo(space_app.NanoFluxSpace(settings))
    assert isinstance(demo, gr.Blocks) and not demo.is_running
    assert demo._queue.max_size == 7
    api_names = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert {"compare", "explore", "row_details", "diff", "results", "startup"} <= api_names
    compare = next(fn for fn in demo.fns.values() if fn.api_name == "compare")
    assert (compare.concurrency_limit, compare.concurrency_id, demo._queue.default_concurrency_limit) == (
        2,
        "model",
        2,
    )
    assert TOKEN not in json.dumps(demo.config, default=str)


def _front_matter(path: Path) -> dict:
    from huggingface_hub.repocard import metadata_load

    return metadata_load(path)


def _requirements() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_the_space_folder_is_self_contained_and_pins_what_it_imports():
    front = _front_matter(SPACE_DIR / "README.md")
    assert front["sdk"] == "gradio" and (SPACE_DIR / front["app_file"]).is_file()
    requirements = _requirements()
    assert front["sdk_version"] == requirements["gradio"]
    assert front["models"][0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Every module spaces/ imports is the standard library, spaces/ itself, or pinned in requirements.txt.
    distribution = {
        "huggingface_hub": "huggingface_hub",
        "pyarrow": "pyarrow",
        "pandas": "pandas",
        "matplotlib": "matplotlib",
        "gradio": "gradio",
        "transformers": "transformers",
        "peft": "peft",
        "torch": "torch",
    }
    local = {path.stem for path in SPACE_DIR.glob("*.py")}
    for path in SPACE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                assert top not in ("builder", "trainer", "tests"), (
                    f"{path.name} imports {name}: a Space has only spaces/"
                )
                assert distribution.get(top) in requirements, (
                    f"{path.name} imports {name}, which requirements.txt does not pin"
                )


def test_an_input_error_is_a_message_on_the_page_and_one_log_line_without_a_traceback(hub, caplog):
    space = _space(hub)
    with caplog.at_level("INFO", logger="nanoflux.space"), pytest.raises(gr.Error) as err:
        next(space.compare("  ", None, 8))
    assert err.value.print_exception is False  # Gradio prints a traceback for every error but these
    assert [r.getMessage() for r in caplog.records if r.name == "nanoflux.space"] == [f"Refused: {err.value.message}"]
    assert not any(r.exc_info for r in caplog.records)


def test_table_columns_are_never_narrower_than_their_longest_header_word_and_free_text_gets_the_rest():
    import pandas as pd
    from tables import CHAR_PX, MAX_PX, PAD_PX, TABLE_PX, column_widths
    from versions import TEXT_COLUMNS, diff_table, rows_table

    rows = [make_row(*r) for r in ROWS]
    for frame, text in (
        (rows_table(rows, [0, 1, 2, 3, 4]), TEXT_COLUMNS["rows"]),
        (rows_table([], []), TEXT_COLUMNS["rows"]),
        (diff_table({"added": rows, "removed": [], "changed": []}), TEXT_COLUMNS["diff"]),
    ):
        px = dict(
            zip(frame.columns, (int(w.removesuffix("px")) for w in column_widths(frame, text=text)), strict=True)
        )
        for column, width in px.items():
            assert width >= max(len(word) for word in column.split()) * CHAR_PX, (column, width)
        assert all(width <= MAX_PX for column, width in px.items() if column not in text)
        assert px["question"] == max(px.values()) and abs(sum(px.values()) - TABLE_PX) <= len(
            px
        )  # the page's width, no more
    frame = pd.DataFrame(
        {
            "reasoning-quality-level": [1],
            "x": ["y" * 500],
            "Δ accuracy (points)": [1.5],
            "a header far too long for one line": [2],
        }
    )
    # A long cell is capped, a header word never; a header of up to 20 characters stays on one line.
    assert column_widths(frame) == [
        f"{round(23 * CHAR_PX + PAD_PX)}px",
        f"{MAX_PX}px",
        f"{round(19 * CHAR_PX + PAD_PX)}px",
        f"{round(20 * CHAR_PX + PAD_PX)}px",
    ]


def test_no_token_reaches_a_message_the_page_shows(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-value-123")
    assert (
        space_app.redact("401 for secret-value-123 and hf_abcdefghij1234 at /api") == "401 for *** and hf_*** at /api"
    )


# --- the local run ----------------------------------------------------------------------------------------


def test_the_local_run_points_the_app_at_the_local_folder_without_the_token(tmp_path, monkeypatch):
    from nanoflux import space

    monkeypatch.chdir(tmp_path)  # relative folders are made absolute: the app may run elsewhere
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = space.SpaceConfig(
        dataset=DATASET, base_model="/models/base", adapters=["adapter", "org/lora"], results="missing", port=7999
    )
    env = space.space_env(config, "http://127.0.0.1:4321", {"HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "PATH": "/bin"})
    assert "HF_TOKEN" not in env and env["PATH"] == "/bin"
    assert (env["HF_ENDPOINT"], env["HF_HUB_OFFLINE"], env["HF_HUB_DISABLE_XET"]) == (
        "http://127.0.0.1:4321",
        "0",
        "1",
    )
    assert (env["NANOFLUX_DATASET"], env["NANOFLUX_BASE_MODEL"], env["NANOFLUX_ADAPTERS"]) == (
        DATASET,
        "/models/base",
        f"{adapter.resolve()},org/lora",
    )
    assert env["NANOFLUX_RESULTS"] == "missing"  # the page says it is missing, with the command that makes it
    assert (env["GRADIO_SERVER_NAME"], env["GRADIO_SERVER_PORT"], env["GRADIO_ANALYTICS_ENABLED"]) == (
        "127.0.0.1",
        "7999",
        "False",
    )
    assert env["NANOFLUX_BASE_MODEL_FOLDER"] == ""  # a folder or Hub id is loaded as given
    from_hub = space.space_env(config, None, {"HF_TOKEN": TOKEN})
    assert (
        from_hub["HF_TOKEN"] == TOKEN and "HF_ENDPOINT" not in from_hub
    )  # the Hub itself: the token is the user's to use


def test_the_packaged_model_is_loaded_from_its_cache_folder_but_named_by_its_id(tmp_path, monkeypatch):
    from nanoflux import models as embedded
    from nanoflux import space

    folder = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"  # where the conversion would put it
    folder.mkdir(parents=True)
    (folder / space_settings._PACKAGED_MARKER).write_text(json.dumps({"model_id": embedded.DEFAULT_MODEL_ID}))
    monkeypatch.setattr(
        embedded, "model_path", lambda model: str(folder) if model == embedded.DEFAULT_MODEL_ID else model
    )
    env = space.space_env(space.SpaceConfig(), None, {})
    assert (env["NANOFLUX_BASE_MODEL"], env["NANOFLUX_BASE_MODEL_FOLDER"]) == (embedded.DEFAULT_MODEL_ID, str(folder))

    settings = space_app.Settings.from_env({**env, "NANOFLUX_DATASET": ""}, tmp_path / "README.md")
    status = space_app.NanoFluxSpace(settings).status()
    assert f"**Base model** `{embedded.DEFAULT_MODEL_ID} (packaged)`" in status and str(tmp_path) not in status
    # The page never shows a cache path, however the model was given.
    assert space_app.model_label(str(folder)) == f"{embedded.DEFAULT_MODEL_ID} (packaged)"  # the cache folder itself
    assert space_app.model_label("org/base", str(tmp_path)) == "org/base (local copy)"  # a copy without the marker
    assert space_app.model_label(str(tmp_path)) == f"{tmp_path.name} (local folder)"
    assert space_app.model_label("org/base") == "org/base"


def test_the_space_and_the_local_hub_server_have_their_own_default_ports():
    from localhub import server
    from nanoflux import space

    assert space.SpaceConfig().port == space.DEFAULT_PORT == 7860 and space._parser(False).get_default("port") == 7860
    assert server.DEFAULT_PORT != space.DEFAULT_PORT
    assert f"the local Hub server's is {server.DEFAULT_PORT}" in space._parser(False).format_help()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "nanoflux space: port: out of range (got 70000). Fix: use a value >= 1 and <= 65535"),
        (
            ["--dataset", "nodash"],
            "nanoflux space: dataset: not a dataset repo id (got 'nodash'). Fix: write it as org/name",
        ),
        (
            ["deploy", "org/demo", "--base_model", "/"],
            "nanoflux space deploy: base_model: a local path: the Space on the Hub cannot read it (got '/')",
        ),
    ],
)
def test_the_command_refuses_bad_arguments_with_the_fix(argv, message):
    from nanoflux import space

    with pytest.raises(SystemExit) as exit_:
        space.main(argv)
    assert str(exit_.value.code).startswith(message)


# --- deploy -----------------------------------------------------------------------------------------------


def _space_files(api, repo: str) -> dict[str, bytes]:
    return {
        name: open(api.hf_hub_download(repo, name, repo_type="space"), "rb").read()
        for name in api.list_repo_files(repo, repo_type="space")
    }


@pytest.mark.parametrize("target", ["hub", "local"])
def test_deploy_uploads_the_space_in_one_commit_with_its_settings_results_and_no_token(
    target, hub, results_dir, tmp_path, monkeypatch
):
    from huggingface_hub import HfApi

    from nanoflux import space

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = tmp_path / "local-hub"
    repo = f"org/demo-{target}"
    config = space.DeployConfig(
        repo_id=repo,
        hub_dir=str(folder) if target == "local" else None,
        dataset=DATASET,
        adapters=[ADAPTER_REPO, "org/other-lora"],
        results=str(results_dir),
    )
    first = space.deploy(config)

    server = LocalHub(folder).start() if target == "local" else hub
    try:
        api = HfApi(endpoint=server.url, token=TOKEN)
        commits = api.list_repo_commits(repo, repo_type="space")
        assert (
            commits[0].commit_id == first
            and commits[0].title == "NanoFlux Space: dataset org/nanoflux-medical, with evaluation results"
        )
        files = _space_files(api, repo)
        assert {
            "README.md",
            "app.py",
            "comparison.py",
            "versions.py",
            "evaluation.py",
            "settings.py",
            "page.py",
            "requirements.txt",
            "results/results.json",
            "results/details/medqa-base.jsonl",
        } <= set(files)
        front = api.space_info(repo).card_data
        assert (
            front["sdk"] == "gradio"
            and front["app_file"] == "app.py"
            and front["sdk_version"] == _requirements()["gradio"]
        )
        assert front["models"] == ["HuggingFaceTB/SmolLM2-135M-Instruct", ADAPTER_REPO, "org/other-lora"] and front[
            "datasets"
        ] == [DATASET]
        assert json.loads(files["results/results.json"])["results"]["medqa"]["adapter"]["correct"] == 2
        for name, content in files.items():
            assert TOKEN.encode() not in content, name

        # A redeploy replaces the app and removes what is no longer in spaces/ (here: the results), in one commit.
        RepoStore(server.root).create_commit(
            "space", repo, "main", add={"stale.py": b"print('old')\n"}, title="someone's file"
        )
        second = space.deploy(space.DeployConfig(repo_id=repo, hub_dir=config.hub_dir))
        files = _space_files(api, repo)
        assert "stale.py" not in files and not any(name.startswith("results/") for name in files) and "app.py" in files
        history = api.list_repo_commits(repo, repo_type="space")
        assert history[0].commit_id == second != first and len(history) == len(commits) + 2
        assert _front_matter_of(files) == {
            **_front_matter(SPACE_DIR / "README.md"),
            "datasets": [DATASET],
            "models": front["models"],
        }
    finally:
        if target == "local":
            server.close()


def _front_matter_of(files: dict[str, bytes]) -> dict:
    import yaml

    return yaml.safe_load(files["README.md"].decode().split("---")[1])


def test_deploy_refuses_local_paths_and_bad_repo_ids_before_uploading(hub, tmp_path):
    from nanoflux import space
    from nanoflux.recipe import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"adapter: a local path: the Space on the Hub cannot read it \(got '.*'\). Fix: push it first",
    ):
        space.deploy(space.DeployConfig(repo_id="org/demo", adapters=[str(tmp_path)]))
    with pytest.raises(
        ConfigError,
        match=r"adapter: a revision cannot go in the front matter \(got 'org/lora@v2'\). Fix: give the repo id",
    ):
        space.deploy(space.DeployConfig(repo_id="org/demo", adapters=["org/lora@v2"]))
    with pytest.raises(ConfigError, match=r"repo_id: not a Space repo id \(got 'demo'\). Fix: write it as org/name"):
        space.deploy(space.DeployConfig(repo_id="demo"))
    with pytest.raises(ConfigError, match=r"results: no results.json there"):
        space.deploy(space.DeployConfig(repo_id="org/demo", results=str(tmp_path)))
    with pytest.raises(
        space.SpaceError, match=r"repo_id: cannot write to Space repo org/demo at .*Fix: check HF_TOKEN"
    ):
        space.deploy(space.DeployConfig(repo_id="org/demo"))  # no token: the loopback Hub refuses the write
    assert not RepoStore(hub.root).exists("space", "org/demo")


# --- slow: the packaged SmolLM2 with LoRA adapters ---------------------------------------------------------


def _random_adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so that base + adapter visibly answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(embedded_model_dir, hub_root, tmp_path_factory):
    """A local adapter folder, and ADAPTER_REPO on the hub with v1 = those weights and main = other weights."""
    folder = _random_adapter(embedded_model_dir, tmp_path_factory.mktemp("adapter-local"), seed=0)
    other = _random_adapter(embedded_model_dir, tmp_path_factory.mktemp("adapter-other"), seed=1)
    store = RepoStore(hub_root)
    if not store.exists("model", ADAPTER_REPO):
        store.create_repo("model", ADAPTER_REPO)
        for tag, source in (("v1", folder), (None, other)):
            files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
            sha = store.create_commit("model", ADAPTER_REPO, "main", add=files, title=f"adapter {tag or 'retrained'}")
            if tag:
                store.create_ref("model", ADAPTER_REPO, "tags", tag, sha)
    return folder


_GREEDY: dict[tuple[str, int], str] = {}


def greedy_base_answer(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The base model's own greedy answer, computed with plain transformers (what the Space's base column must
    show)."""
    if (prompt, max_new_tokens) not in _GREEDY:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        _GREEDY[prompt, max_new_tokens] = tokenizer.decode(
            out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
        )
    return _GREEDY[prompt, max_new_tokens]


@pytest.mark.slow
def test_compare_streams_the_base_answer_and_the_selected_adapter_versions_answer_side_by_side(
    hub, adapters, embedded_model_dir
):
    space = _space(hub, base_model=str(embedded_model_dir), adapters=[str(adapters), ADAPTER_REPO])
    assert [value for _, value in space.adapter_choices] == [
        str(adapters),
        f"{ADAPTER_REPO}@main",
        f"{ADAPTER_REPO}@v1",
    ]

    updates = list(space.compare(PROMPT, str(adapters), 12))
    base, tuned, status = updates[-1]
    assert base == greedy_base_answer(embedded_model_dir, PROMPT, 12) and base
    assert tuned and tuned != base and status.startswith("Done in")
    streamed = [u for u in updates[1:-1]]
    assert len(streamed) >= 3 and all(base.startswith(b) and tuned.startswith(t) for b, t, _ in streamed)

    # The same weights from the Hub repo's v1 tag give the same answer; main holds other weights.
    assert list(space.compare(PROMPT, f"{ADAPTER_REPO}@v1", 12))[-1][:2] == (base, tuned)
    retrained = list(space.compare(PROMPT, f"{ADAPTER_REPO}@main", 12))[-1]
    assert retrained[0] == base and retrained[1] != tuned

    only_base = list(space.compare(PROMPT, None, 12))[-1]
    assert only_base[0] == base and only_base[1] == "(no adapter selected: pick an adapter version)"
    with pytest.raises(gr.Error, match="tokens; the limit is 8. Fix: shorten it"):
        space.comparison.max_prompt_tokens = 8
        list(space.compare(PROMPT, None, 4))


# --- slow: `nanoflux space` launched for real -------------------------------------------------------------


@dataclass
class Launched:
    url: str
    log: Path  # what `nanoflux space` and its app printed (stdout and stderr)


@pytest.fixture(scope="module")
def launched(hub_root, adapters, results_dir, tmp_path_factory):
    """`nanoflux space` as a user runs it (its own LocalHub over the folder, the packaged SmolLM2), on loopback."""
    port, workdir = free_port(), tmp_path_factory.mktemp("space-run")
    log = open(workdir / "space.log", "w")
    command = [
        sys.executable,
        "-m",
        "nanoflux.cli",
        "space",
        "--port",
        str(port),
        "--hub_dir",
        str(hub_root),
        "--dataset",
        DATASET,
        "--adapter",
        str(adapters),
        "--adapter",
        ADAPTER_REPO,
        "--results",
        str(results_dir),
        "--max_new_tokens",
        "16",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        ready = wait_until_answers(url, "/", 240, alive=lambda: process.poll() is None, interval=0.5)
        assert process.poll() is None, (
            f"nanoflux space exited with {process.returncode}:\n{(workdir / 'space.log').read_text()[-3000:]}"
        )
        assert ready, f"nanoflux space did not answer on {url}:\n{(workdir / 'space.log').read_text()[-3000:]}"
        yield Launched(url, workdir / "space.log")
    finally:
        stop_process(process, timeout=30)  # SIGTERM: the CLI stops its app
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of that session (started here) is left
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.slow
def test_gradio_client_gets_both_answers_from_the_launched_space(launched, adapters, embedded_model_dir):
    from gradio_client import Client

    client = Client(launched.url, verbose=False, download_files=False, analytics_enabled=False)
    job = client.submit(PROMPT, str(adapters), 12, api_name="/compare")
    base, tuned, status = job.result(timeout=180)
    assert base == greedy_base_answer(embedded_model_dir, PROMPT, 12)
    assert tuned and tuned != base and status.startswith("Done in")
    assert len(job.outputs()) >= 3  # streamed: several partial answers before the final ones

    summary, table, _ = client.predict("v2", [], [], [], ["L4"], "failed", api_name="/explore")
    # Tables come as updates (rows and column widths), as the page gets them.
    assert (
        summary.startswith("**1** of 5 rows of v2")
        and [row[2] for row in table["value"]["data"]] == [rid(2)]
        and len(table["column_widths"]) == 10
    )
    with pytest.raises(Exception, match="greater than maximum value 16"):  # the slider bounds the API too
        client.predict(PROMPT, str(adapters), 17, api_name="/compare")


# --- slow: a real browser ---------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1600",
)


def _require_browser() -> None:
    """CI (NANOFLUX_REQUIRE_BROWSER=1) fails without Debian's chromium; elsewhere the test is skipped with the
    reason."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed. Fix: apt-get install -y chromium chromium-driver"
    if os.environ.get("NANOFLUX_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message + " (set NANOFLUX_REQUIRE_BROWSER=1 to make this a failure, as CI does)")


@pytest.fixture(scope="module")
def chromium():
    _require_browser()  # before `launched`, so that a skip costs nothing


# For each visible table header: its text, the width of its longest word and the width the header's text got (both
# in CSS pixels, the word measured in the header's own font). A header narrower than its longest word breaks inside
# that word ("ver/sio/n"), which is what this test refuses.
HEADER_WIDTHS_JS = """
const context = document.createElement('canvas').getContext('2d');
return [...document.querySelectorAll('th.header-cell')].filter(th => th.offsetParent !== null).map(th => {
  const span = th.querySelector('span.header') || th;
  const text = span.textContent.trim();
  context.font = getComputedStyle(span).font;
  const word = Math.max(0, ...text.split(/\\s+/).map(w => context.measureText(w).width));
  return {table: th.closest('.block')?.id || '?', text: text, word: word, width: span.getBoundingClientRect().width};
});
"""


def unreadable_headers(driver) -> tuple[list[dict], list[dict]]:
    """(every visible header, those narrower than their longest word)."""
    headers = driver.execute_script(HEADER_WIDTHS_JS)
    return headers, [h for h in headers if h["width"] + 0.5 < h["word"]]


def full_page_screenshot(driver, path: Path) -> Path:
    """The whole page, not only the window: the window is made as tall as the page first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height + 40, 8000))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)  # let the tables re-measure their columns at the new size
    driver.save_screenshot(str(path))
    if os.environ.get("NANOFLUX_SCREENSHOTS"):
        import shutil

        folder = Path(os.environ["NANOFLUX_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / path.name)
    return path


@pytest.mark.slow
def test_a_browser_runs_a_comparison_and_every_tab_reads_well(chromium, launched, embedded_model_dir, tmp_path):
    """Compare (an empty prompt refused on the page, then both answers), Explore (a long tool output read in full)
    and Results, each screenshotted (NANOFLUX_SCREENSHOTS=<dir> keeps them), with no table header narrower than its
    longest word and no server traceback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    shots, checked = {}, {}
    log_start = launched.log.stat().st_size  # the app is shared with the other tests: judge what this one causes
    try:
        driver.get(launched.url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.5)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        wait.until(lambda d: "2 versions: v2, v1" in d.find_element(By.ID, "status").text)  # the page load has run
        status = driver.find_element(By.ID, "status").text
        assert (
            "HuggingFaceTB/SmolLM2-135M-Instruct (packaged)" in status
            and ".cache" not in status
            and "nanoflux-cache" not in status
        )

        # An empty prompt: refused on the page (a toast), with no traceback on the server (checked at the end).
        driver.find_element(By.ID, "compare").click()
        wait.until(
            lambda d: (
                "Write a prompt, or pick a question"
                in " ".join(t.text for t in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]"))
            )
        )
        driver.find_element(By.CSS_SELECTOR, "[data-testid=toast-close]").click()

        prompt.send_keys(PROMPT)
        slider = driver.find_element(
            By.CSS_SELECTOR, "input[type=number]"
        )  # max new tokens: 12, as in the other tests
        slider.clear()
        slider.send_keys("12")
        driver.find_element(By.ID, "compare").click()
        wait.until(lambda d: "Done in" in d.find_element(By.ID, "compare-status").text)
        base = driver.find_element(By.CSS_SELECTOR, "#base-answer textarea").get_attribute("value")
        tuned = driver.find_element(By.CSS_SELECTOR, "#tuned-answer textarea").get_attribute("value")
        shots["compare"] = full_page_screenshot(driver, tmp_path / "space-compare.png")

        def open_tab(name: str) -> None:
            next(
                b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name
            ).click()

        open_tab("Explore")
        wait.until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "#rows .virtual-row")) >= 3
                and len(d.find_elements(By.CSS_SELECTOR, "#tools .virtual-row")) >= 3
            )
        )
        # Row 0 (selected on load) has a long tool output: cut in the table, in full once its call is clicked.
        cell = next(
            td for td in driver.find_elements(By.CSS_SELECTOR, "#tools [role=gridcell]") if td.text.startswith("t=0h")
        )
        assert "END-OF-OUTPUT" not in cell.text
        cell.click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#tool-output textarea").get_attribute("value") == LONG_OUTPUT
        )
        assert (
            driver.find_element(By.CSS_SELECTOR, "#tool-input textarea")
            .get_attribute("value")
            .startswith("Call 2 of 3: python (ok)")
        )
        wait.until(
            lambda d: (
                "Rows matched by id" in d.find_element(By.ID, "diff-summary").text
                and len(d.find_elements(By.CSS_SELECTOR, "#changes .virtual-row")) >= 3
            )
        )
        checked["explore"] = unreadable_headers(driver)
        shots["explore"] = full_page_screenshot(driver, tmp_path / "space-explore.png")

        open_tab("Results")
        wait.until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "#counts-table .virtual-row")) >= 2
                and len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot, img[src^='data:image']")) >= 2
            )
        )
        checked["results"] = unreadable_headers(driver)
        shots["results"] = full_page_screenshot(driver, tmp_path / "space-results.png")

        # The check itself can fail: a header squeezed to 2 letters is reported.
        squeezed = driver.execute_script(
            "const th = [...document.querySelectorAll('th.header-cell')].find(t => t.offsetParent &&"
            " t.textContent.includes('variant'));for (const el of [th, th.querySelector('span.header')]) {"
            " el.style.cssText +="
            " ';width:20px!important;min-width:20px!important;max-width:20px!important;"
            "white-space:normal!important;word-break:break-all!important';"
            " }return th.querySelector('span.header').textContent.trim();"
        )
        assert squeezed == "variant" and [h["text"] for h in unreadable_headers(driver)[1]] == ["variant"]
    finally:
        driver.quit()
    assert base == greedy_base_answer(embedded_model_dir, PROMPT, 12)
    assert tuned and tuned != base
    for tab, (headers, unreadable) in checked.items():
        assert len(headers) >= {"explore": 20, "results": 20}[tab], (
            tab,
            headers,
        )  # every table of the tab was measured
        assert not unreadable, f"{tab}: headers narrower than their longest word: {unreadable}"
    assert all(path.stat().st_size > 20_000 for path in shots.values()) and set(shots) == {
        "compare",
        "explore",
        "results",
    }
    log = launched.log.read_bytes()[log_start:].decode(errors="replace")
    assert "Refused: Write a prompt" in log and "Traceback" not in log, log[-3000:]
