"""The evaluation stage: benchmark loaders, answer extraction, scoring, outputs, model-index, recipes, and a real
run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from nanoflux.benchmarks import BenchmarkConfig, ColumnsConfig, load_benchmark
from nanoflux.recipe import ConfigError
from nanoflux.rows import EvalError, Example, split_inline_options
from nanoflux.scoring import (
    aggregate_results,
    bootstrap_ci,
    extract_answer,
    extract_choice,
    extract_number,
    extract_yes_no_maybe,
    is_correct,
    paired_comparisons,
    score,
)
from trainer.evaluation.compute import ComputeConfig, compute_accounting
from trainer.evaluation.config import EvalConfig, build_eval_config
from trainer.evaluation.model_card import model_index, write_model_index
from trainer.evaluation.report import console_table, results_markdown, write_results
from trainer.evaluation.run import main
from trainer.evaluation.variants import resolve_adapter

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"
RECIPES = sorted((ROOT / "configs" / "eval").glob("*.yaml"))


def _bench(**fields) -> BenchmarkConfig:
    columns = fields.pop("columns", None)
    bench = BenchmarkConfig(**fields, columns=ColumnsConfig(**(columns or {})))
    bench.validate("benchmarks[0]")
    return bench


# --- loaders ---------------------------------------------------------------------------------------------


def test_gsm_hard_fixture_normalises_to_numeric_examples():
    examples = load_benchmark(_bench(format="gsm_hard", path=str(FIXTURES / "gsm_hard.jsonl"), split="train"))
    rows = [json.loads(line) for line in (FIXTURES / "gsm_hard.jsonl").read_text().splitlines()]
    assert [e.gold for e in examples] == [row["target"] for row in rows]
    assert [e.id for e in examples] == [str(i) for i in range(8)]
    assert all(e.options == [] for e in examples)
    assert examples[0].prompt.startswith(rows[0]["input"]) and "Final answer: <number>" in examples[0].prompt
    assert "step by step" in examples[0].prompt


def test_medqa_fixture_uses_the_options_mapping_and_answer_idx():
    examples = load_benchmark(_bench(format="medqa", path=str(FIXTURES / "medqa.jsonl")))
    assert [e.gold for e in examples] == list("BCBDACAD")
    assert examples[0].options == [
        "Acute cystitis",
        "Acute pyelonephritis",
        "Nephrolithiasis",
        "Acute interstitial nephritis",
    ]
    assert "\nB. Acute pyelonephritis\n" in examples[0].prompt


def test_medmcqa_fixture_uses_separate_option_columns_and_cop_index():
    examples = load_benchmark(_bench(format="medmcqa", path=str(FIXTURES / "medmcqa.jsonl")))
    assert [e.gold for e in examples] == list("CCABDDAB")
    assert examples[0].id == "e9ad821a-c438-4965-9f77-760819dfa155"
    assert examples[2].options == ["Measles", "Mumps", "Rubella", "Chickenpox"]
    assert examples[0].explanation.startswith("Recent series")  # `exp`, used as the baseline's training target


def test_pubmedqa_parquet_fixture_shows_the_abstract_and_wants_yes_no_maybe():
    examples = load_benchmark(_bench(format="pubmedqa", path=str(FIXTURES / "pubmedqa.parquet")))
    assert [e.gold for e in examples] == ["yes", "no", "maybe", "yes", "yes", "yes", "no", "maybe"]
    assert examples[0].id == "21645374"
    prompt = examples[0].prompt
    assert prompt.startswith("Context:\nBell's palsy is an acute") and "Question: Does a short course" in prompt
    assert "yes, no or maybe" in prompt


def test_mmlu_fixture_uses_choices_and_integer_answer():
    bench = _bench(format="mmlu", subset="clinical_knowledge", path=str(FIXTURES / "mmlu_clinical_knowledge.jsonl"))
    assert bench.name == "mmlu-clinical_knowledge" and bench.title == "MMLU (clinical_knowledge)"
    examples = load_benchmark(bench)
    assert [e.gold for e in examples] == list("BCADBCDA")
    assert len(examples[0].options) == 4


def test_genome_bench_fixture_parses_inline_options_and_tagged_answers():
    examples = load_benchmark(_bench(format="genome_bench", path=str(FIXTURES / "genome_bench.jsonl")))
    assert [e.gold for e in examples] == list("ABCDEBAC")
    assert examples[0].options == ["NGG", "TTTV", "NNGRRT", "NNNNGATT", "NG only on the template strand"]
    assert "Please choose" not in examples[0].prompt and "\nE. NG only on the template strand\n" in examples[0].prompt
    assert examples[0].explanation.startswith("SpCas9 recognises")


def test_limit_takes_the_first_rows_and_the_global_limit_caps_it():
    bench = _bench(format="medqa", path=str(FIXTURES / "medqa.jsonl"), limit=5)
    assert len(load_benchmark(bench)) == 5
    assert [e.gold for e in load_benchmark(bench, limit=2)] == ["B", "C"]


def test_loader_is_schema_driven_for_other_multiple_choice_data(tmp_path):
    rows = [
        {
            "qid": "q1",
            "stem": "Which base pairs with adenine in DNA?",
            "A": "Cytosine",
            "B": "Guanine",
            "C": "Thymine",
            "D": "Uracil",
            "E": "Inosine",
            "key": 2,
        },
        {
            "qid": "q2",
            "stem": "Which enzyme seals nicks in DNA?",
            "A": "Helicase",
            "B": "Ligase",
            "C": "Primase",
            "D": "Topoisomerase",
            "E": "Gyrase",
            "key": 1,
        },
        {"qid": "q3", "stem": "Unlabelled row", "A": "a", "B": "b", "C": "c", "D": "d", "E": "e", "key": -1},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = _bench(
        format="choice",
        name="custom",
        path=str(path),
        split="test",
        columns={
            "id": "qid",
            "question": "stem",
            "option_columns": list("ABCDE"),
            "answer": "key",
            "answer_type": "index",
        },
    )
    examples = load_benchmark(bench)  # the row without a usable label is dropped
    assert [(e.id, e.gold) for e in examples] == [("q1", "C"), ("q2", "B")]
    assert examples[0].options[4] == "Inosine"

    wrong = _bench(
        format="choice", name="custom", path=str(path), split="test", columns={"question": "prompt", "answer": "key"}
    )
    with pytest.raises(EvalError, match="column 'prompt' is not in .* Fix: map it with benchmarks\\[\\].columns"):
        load_benchmark(wrong)


def test_inline_option_parsing():
    stem, options = split_inline_options(
        "Question: Which? Please choose one of the following options: a. one b. two c. three"
    )
    assert (stem, options) == ("Question: Which?", ["one", "two", "three"])
    assert split_inline_options("Which is larger? (A) 2 (B) 3") == ("Which is larger?", ["2", "3"])
    assert split_inline_options("No options at all.") == ("No options at all.", [])


# --- answer extraction -----------------------------------------------------------------------------------

OPTIONS = ["Acute cystitis", "Acute pyelonephritis", "Nephrolithiasis", "Acute interstitial nephritis"]


@pytest.mark.parametrize(
    "output, expected",
    [
        ("The flank pain and WBC casts point to the kidney.\nFinal answer: B", "B"),
        ("**Final Answer:** **C**", "C"),
        ("Answer: d", "D"),
        ("The answer is (B).", "B"),
        ("The correct answer is option D.", "D"),
        ("B) Acute pyelonephritis", "B"),
        ("B", "B"),
        ("Option C is correct.", "C"),
        ("<answer>a</answer>", "A"),
        ("(A) is wrong, cystitis has no casts. (B) fits. Final answer: B", "B"),
        ("Answer: The answer is C because stones cause colicky pain.", "C"),
        ("<think>Maybe A?</think>Final answer: B", "B"),
        ("The most likely diagnosis is acute pyelonephritis.", "B"),  # an option's exact text
        # unparseable
        ("A. Acute cystitis\nB. Acute pyelonephritis\nC. Nephrolithiasis", None),  # restates the options
        ("The answer is a mutation in the gene.", None),  # the article "a" is not option A
        ("Final answer: E", None),  # no option E
        ("I'm not sure; it could be acute cystitis or nephrolithiasis.", None),  # two options named
        ("<think>Considering A and then", None),  # the thinking never ended
        ("", None),
    ],
)
def test_extract_choice(output, expected):
    assert extract_choice(output, OPTIONS) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        (
            "She sells 16 - 3 - 4933828 = -4933815 eggs, so she makes -9867630 dollars.\nFinal answer: -9867630",
            -9867630.0,
        ),
        ("Final answer: $1,234.50", 1234.5),
        ("The total is 60 + 480.\n#### 540", 540.0),
        ("So the answer is \\boxed{160}.", 160.0),
        ("3 sprints x 3 times x 60 m = 540 meters", 540.0),  # last number
        ("**Final answer:** 517.03 loaves", 517.03),
        ("5-3 = 2", 2.0),
        ("I cannot solve this.", None),
    ],
)
def test_extract_number(output, expected):
    assert extract_number(output) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Yes. The trial shows a higher recovery rate.", "yes"),
        ("The effect on all infections was not significant.\nFinal answer: maybe", "maybe"),
        ("There is no evidence of benefit. Final answer: **no**", "no"),
        ("Answer: Yes", "yes"),
        ("There is no benefit, so yes", None),  # both no and yes, no marker
        ("The study is inconclusive.", None),
    ],
)
def test_extract_yes_no_maybe(output, expected):
    assert extract_yes_no_maybe(output) == expected


def test_accuracy_on_hand_made_outputs_is_exact_and_counts_unparseable_separately():
    example = Example("0", "prompt", OPTIONS, "B")
    outputs = [
        "Final answer: B",
        "Final answer: A",
        "I do not know",
        "answer: b",
        "B) Acute pyelonephritis",
        "",
        "Final answer: C",
        "(B)",
    ]
    extracted = [extract_answer(o, example, "choice") for o in outputs]
    assert extracted == ["B", "A", None, "B", "B", None, "C", "B"]
    correct = [is_correct(e, "B", "choice") for e in extracted]
    result = score(correct, sum(e is None for e in extracted), samples=1000, seed=0)
    assert (result["n"], result["correct"], result["accuracy"]) == (8, 4, 0.5)
    assert (result["unparseable"], result["unparseable_rate"]) == (2, 0.25)  # and both count as wrong


def test_bootstrap_ci_brackets_the_accuracy_and_is_deterministic_for_a_seed():
    correct = [True] * 37 + [False] * 63
    low, high = bootstrap_ci(correct, samples=1000, seed=0)
    assert 0.0 <= low < 0.37 < high <= 1.0
    assert 0.2 < low < 0.33 and 0.41 < high < 0.5  # about ±1.96 * sqrt(.37 * .63 / 100)
    assert bootstrap_ci(correct, samples=1000, seed=0) == (low, high)
    assert bootstrap_ci(correct, samples=1000, seed=1) != (low, high)
    assert bootstrap_ci([True] * 5) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


# --- outputs and model card ------------------------------------------------------------------------------


def _flags(n: int, correct: int, offset: int = 0) -> list[bool]:
    """`correct` of `n` questions right, starting at question `offset` (wrapping)."""
    return [((i - offset) % n) < correct for i in range(n)]


def _results(partition: str = "test") -> dict:
    def scores(flags, unparseable):
        return {**score(flags, unparseable), "wall_time_s": 1.0}

    flags = {  # medqa: the adapter gets 6 more right and loses none; anatomy: 5 more right, 2 fewer
        "medqa": {"base": _flags(100, 52), "adapter": _flags(100, 58)},
        "mmlu-anatomy": {"base": _flags(50, 30), "adapter": _flags(50, 33, offset=2)},
    }
    details = {
        name: {v: [{"id": str(i), "correct": c} for i, c in enumerate(f)] for v, f in by_variant.items()}
        for name, by_variant in flags.items()
    }
    return {
        "model": "Qwen/Qwen3-4B",
        "adapter": "org/qwen3-4b-nanoflux-medical-lora",
        "baseline_adapter": None,
        "variants": ["base", "adapter"],
        "partition": partition,
        "benchmarks": [
            {
                "name": "medqa",
                "title": "MedQA (USMLE, 4 options)",
                "format": "medqa",
                "kind": "choice",
                "path": "GBaker/MedQA-USMLE-4-options",
                "subset": None,
                "split": "test",
                "revision": "a" * 40,
                "rows": 100,
                "multimedqa": True,
                "scoring": "the option letter must equal the gold letter",
                "selection": {
                    "partition": partition,
                    "path": "GBaker/MedQA-USMLE-4-options",
                    "split": "test",
                    "dropped": {"count": 0},
                },
            },
            {
                "name": "mmlu-anatomy",
                "title": "MMLU (anatomy)",
                "format": "mmlu",
                "kind": "choice",
                "path": "cais/mmlu",
                "subset": "anatomy",
                "split": "test",
                "revision": "b" * 40,
                "rows": 50,
                "multimedqa": True,
                "scoring": "the option letter must equal the gold letter",
                "selection": {
                    "partition": partition,
                    "path": "cais/mmlu",
                    "subset": "anatomy",
                    "split": "test",
                    "dropped": {"count": 1},
                },
            },
        ],
        "results": {
            "medqa": {"base": scores(flags["medqa"]["base"], 3), "adapter": scores(flags["medqa"]["adapter"], 1)},
            "mmlu-anatomy": {
                "base": scores(flags["mmlu-anatomy"]["base"], 0),
                "adapter": scores(flags["mmlu-anatomy"]["adapter"], 2),
            },
        },
        "paired": {name: paired_comparisons(by_variant) for name, by_variant in details.items()},
        "aggregates": {
            "multimedqa": {
                "title": "MultiMedQA",
                **aggregate_results("multimedqa", ["medqa", "mmlu-anatomy"], details),
            }
        },
        "generation": {
            "greedy": True,
            "max_new_tokens": 1024,
            "batch_size": 32,
            "reasoning": True,
            "enable_thinking": False,
            "chat_template": True,
            "dtype": "bfloat16",
            "device": "cuda:0",
        },
        "bootstrap": {"samples": 1000, "seed": 0, "level": 0.95},
        "compute": {
            "measured": {
                "nanoflux": {
                    "source": "a/training_summary.json",
                    "dataset": "org/nanoflux-medical@v1@abc",
                    "rows": 200,
                    "train_tokens": 400_000,
                    "steps": 39,
                    "epochs": 3.0,
                    "wall_time_s": 600.0,
                    "devices": 1,
                    "device_seconds": 600.0,
                    "hardware": "NVIDIA H100",
                    "resumed_from": None,
                },
                "baseline": {
                    "source": "b/training_summary.json",
                    "dataset": "GBaker/MedQA-USMLE-4-options@main@def",
                    "rows": 9678,
                    "train_tokens": 5_600_000,
                    "steps": 1815,
                    "epochs": 3.0,
                    "wall_time_s": 7800.0,
                    "devices": 1,
                    "device_seconds": 7800.0,
                    "hardware": "NVIDIA H100",
                    "resumed_from": None,
                },
                "ratios": {"train_tokens": 14.0, "steps": 1815 / 39, "device_seconds": 13.0},
                "notes": [],
            },
            "generation": {
                "source": "summary.json",
                "tokens": {
                    "attacker": {"prompt": 1000, "completion": 500},
                    "judge": {"prompt": 3000, "completion": 700},
                },
                "total_tokens": 5200,
                "kept": 200,
                "calls_sent": 900,
                "wall_time_s": 100.0,
            },
            "estimate": {
                "label": "estimate: token counts",
                "nanoflux": {
                    "data": "org/nanoflux-medical",
                    "split": "train",
                    "revision": "v1",
                    "rows": 200,
                    "tokens": 120_000,
                },
                "baseline": {
                    "data": "GBaker/MedQA-USMLE-4-options",
                    "subset": None,
                    "split": "train",
                    "rows": 10178,
                    "tokens": 1_500_000,
                },
                "ratio": 12.5,
                "unit": "training tokens per epoch",
            },
        },
    }


def test_results_json_md_and_png_are_written(tmp_path):
    write_results(_results(), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["results"]["medqa"]["adapter"]["correct"] == 58
    markdown = (tmp_path / "results.md").read_text()
    assert "| MedQA (USMLE, 4 options) | adapter | 100 | 58 | 58.0 |" in markdown
    assert "| MMLU (anatomy) | base | 50 | 30 | 60.0 |" in markdown
    assert "- Partition: **test**" in markdown and "1 dropped (no gold answer or options)" in markdown
    assert (
        "| MedQA (USMLE, 4 options) | NanoFlux adapter − base | 100 | +6.0 |" in markdown
        and "| 6 / 0 | 0.031 |" in markdown
    )
    assert "| MultiMedQA (macro) | NanoFlux adapter − base | 150 |" in markdown
    assert "| MultiMedQA | adapter | 2 | 150 | 62.0 |" in markdown  # macro (58 + 66) / 2
    # every compute ratio: measured tokens, steps and device seconds, rows, the generation cost, the labelled estimate
    assert "| **ratio** | | 48.4× | 14.0× | 46.5× | | | 13.0× | |" in markdown
    assert (
        "| **total** (5200 tokens) | 4000 | 1200 |" in markdown
        and "Estimate, not a measured run (token counts)" in markdown
        and "12.5×" in markdown
    )
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_table_lists_accuracy_cis_and_paired_deltas():
    table = console_table(_results())
    assert "MedQA (USMLE, 4 options)    100     52.0 [ 42.0,  62.0]     58.0 [ 48.0,  67.0]" in table
    assert "MultiMedQA macro" in table
    assert "MedQA (USMLE, 4 options): adapter-vs-base Δ +6.0 points [" in table and "McNemar p 0.031" in table


def test_results_markdown_of_an_older_results_json_still_renders():
    old = {k: v for k, v in _results().items() if k not in ("paired", "aggregates", "partition")}
    old["compute"] = old["compute"]["estimate"]
    markdown = results_markdown(old)
    assert "Paired comparisons" not in markdown and "12.5×" in markdown


def test_model_index_has_the_hub_structure():
    index = model_index(_results(), "org/qwen3-4b-nanoflux-medical-lora")
    assert [entry["name"] for entry in index] == ["org/qwen3-4b-nanoflux-medical-lora"]
    first, second = index[0]["results"]
    assert first["task"]["type"] == "text-generation"
    assert first["dataset"] == {
        "name": "MedQA (USMLE, 4 options)",
        "type": "GBaker/MedQA-USMLE-4-options",
        "split": "test",
        "revision": "a" * 40,
    }
    accuracy, delta = first["metrics"]
    assert accuracy == {"type": "accuracy", "value": 0.58, "name": "Accuracy"}
    assert delta["type"] == "accuracy_delta" and delta["value"] == 0.06 and delta["config"] == "adapter-vs-base"
    assert (
        delta["args"]["reference"] == "base"
        and delta["args"]["ci_low"] > 0
        and delta["args"]["mcnemar_p"] == pytest.approx(2 / 2**6)
    )
    assert (
        second["dataset"]["config"] == "anatomy"
        and second["metrics"][0]["value"] == 0.66
        and second["metrics"][1]["value"] == 0.06
    )
    with pytest.raises(EvalError, match="no 'baseline' variant"):
        model_index(_results(), "org/x", variant="baseline")


def test_write_model_index_round_trips_through_model_card_load(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.from_template(
        ModelCardData(base_model="Qwen/Qwen3-4B", library_name="peft", license="apache-2.0"),
        template_str=(
            "---\n{{ card_data }}\n---\n\n# adapter\n\n## Evaluation\n\nNot evaluated yet.\n\n## How to use\n\nLoad"
            " it.\n"
        ),
    )
    path = tmp_path / "README.md"
    card.save(path)
    write_model_index(path, _results(), adapter_repo="org/qwen3-4b-nanoflux-medical-lora")

    loaded = ModelCard.load(path)
    assert loaded.data.model_name == "org/qwen3-4b-nanoflux-medical-lora"
    assert loaded.data.base_model == "Qwen/Qwen3-4B" and loaded.data.license == "apache-2.0"  # the rest is kept
    got = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert got == {
        ("GBaker/MedQA-USMLE-4-options", None, "accuracy"): 0.58,
        ("cais/mmlu", "anatomy", "accuracy"): 0.66,
        ("GBaker/MedQA-USMLE-4-options", None, "accuracy_delta"): 0.06,
        ("cais/mmlu", "anatomy", "accuracy_delta"): 0.06,
    }
    assert loaded.data.to_dict()["model-index"] == model_index(_results(), "org/qwen3-4b-nanoflux-medical-lora")
    assert (
        "Not evaluated yet" not in loaded.text and "| MedQA (USMLE, 4 options) | adapter | 100 | 58 |" in loaded.text
    )
    assert (
        "## How to use\n\nLoad it." in loaded.text
        and "| MedQA (USMLE, 4 options) | NanoFlux adapter − base | 100 | +6.0 |" in loaded.text
    )

    before = path.read_text()
    write_model_index(path, _results(partition="dev"))  # dev rows choose settings; a card reports test scores
    assert path.read_text() == before


# --- compute accounting ----------------------------------------------------------------------------------


class _WordTokenizer:
    """Counts whitespace-separated words; the chat template joins `role: content` lines."""

    def apply_chat_template(self, messages, tokenize=False):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_compute_estimate_counts_messages_and_benchmark_rows_and_is_labelled():
    compute = ComputeConfig(
        nanoflux_data=str(FIXTURES / "nanoflux_messages.jsonl"),
        baseline=BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl"), split="train"),
    )
    compute.validate("compute")
    result = compute_accounting(compute, _WordTokenizer())
    assert result["measured"] is None and result["generation"] is None
    estimate = result["estimate"]
    rows = [json.loads(line) for line in (FIXTURES / "nanoflux_messages.jsonl").read_text().splitlines()]
    expected = sum(len(f"{m['role']}: {m['content']}".split()) for row in rows for m in row["messages"])
    assert estimate["nanoflux"] == {
        "data": compute.nanoflux_data,
        "split": "train",
        "revision": None,
        "rows": 4,
        "tokens": expected,
    }
    assert estimate["baseline"]["rows"] == 8 and estimate["baseline"]["tokens"] > 0
    assert estimate["ratio"] == pytest.approx(estimate["baseline"]["tokens"] / expected)
    assert estimate["label"].startswith("estimate:")
    assert compute_accounting(compute)["estimate"] is None  # without a tokenizer: no estimate


def _summary(
    folder: Path,
    *,
    tokens: int,
    steps: int,
    wall: float,
    rows: int,
    gpu: str | None = "NVIDIA H100",
    per_device: int = 4,
    accumulation: int = 4,
    devices: int = 1,
    resumed: str | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "base_model": "Qwen/Qwen3-4B",
        "dataset": {"pinned": f"data@v1@{rows}", "rows": rows},
        "steps": steps,
        "resumed_from": resumed,
        "epochs": 3.0,
        "train_tokens": tokens,
        "wall_time_s": wall,
        "device": "cuda:0" if gpu else "cpu",
        "gpu": gpu,
        "hyperparameters": {
            "per_device_train_batch_size": per_device,
            "gradient_accumulation_steps": accumulation,
            "effective_batch_size": per_device * accumulation * devices,
        },
    }
    (folder / "training_summary.json").write_text(json.dumps(summary))
    return folder


def test_compute_is_measured_from_the_two_training_summaries(tmp_path):
    nanoflux = _summary(tmp_path / "adapter", tokens=400_000, steps=39, wall=600.0, rows=200)
    baseline = _summary(tmp_path / "baseline", tokens=5_600_000, steps=1815, wall=3900.0, rows=9678, devices=2)
    build = tmp_path / "build"
    build.mkdir()
    (build / "summary.json").write_text(
        json.dumps(
            {
                "tokens": {
                    "attacker": {"prompt": 10, "completion": 5},
                    "defender": {"prompt": 20, "completion": 8},
                    "judge": {"prompt": 30, "completion": 7},
                },
                "kept": 200,
            }
        )
    )
    compute = ComputeConfig(build_summary=str(build))
    compute.validate("compute", adapter=str(nanoflux), baseline_adapter=str(baseline))
    result = compute_accounting(compute, adapter=str(nanoflux), baseline_adapter=str(baseline))
    measured = result["measured"]
    assert measured["baseline"]["devices"] == 2 and measured["baseline"]["device_seconds"] == 7800.0
    assert measured["ratios"] == {"train_tokens": 14.0, "steps": pytest.approx(1815 / 39), "device_seconds": 13.0}
    assert measured["notes"] == [] and result["estimate"] is None
    assert result["generation"]["total_tokens"] == 80 and result["generation"]["tokens"]["judge"] == {
        "prompt": 30,
        "completion": 7,
    }

    cpu = _summary(tmp_path / "cpu", tokens=1000, steps=10, wall=60.0, rows=8, gpu=None, resumed="checkpoint-5")
    notes = compute_accounting(
        ComputeConfig(nanoflux_summary=str(cpu / "training_summary.json"), baseline_summary=str(baseline))
    )["measured"]["notes"]
    assert any("different hardware" in n for n in notes) and any("resumed from checkpoint-5" in n for n in notes)

    # What `nanoflux train` writes now: a compute block, its seconds summed over resumed segments.
    summary = json.loads((cpu / "training_summary.json").read_text())
    summary["compute"] = {
        "optimizer_steps": 12,
        "epochs_trained": 3.0,
        "examples": 8,
        "train_tokens": 1200,
        "train_seconds": 90.0,
        "devices": 2,
        "device_seconds": 180.0,
        "device_name": "Intel Xeon",
        "segments": 2,
    }
    (cpu / "training_summary.json").write_text(json.dumps(summary))
    measured = compute_accounting(ComputeConfig(nanoflux_summary=str(cpu), baseline_summary=str(baseline)))["measured"]
    assert {
        k: measured["nanoflux"][k]
        for k in ("train_tokens", "steps", "wall_time_s", "devices", "device_seconds", "hardware", "segments")
    } == {
        "train_tokens": 1200,
        "steps": 12,
        "wall_time_s": 90.0,
        "devices": 2,
        "device_seconds": 180.0,
        "hardware": "Intel Xeon",
        "segments": 2,
    }
    assert measured["ratios"]["device_seconds"] == pytest.approx(7800.0 / 180.0)
    assert not any("resumed" in n for n in measured["notes"])  # every segment is timed
    with pytest.raises(
        EvalError, match="compute.baseline_summary: no training_summary.json at .*Fix: point it at the file"
    ):
        compute_accounting(ComputeConfig(nanoflux_summary=str(nanoflux), baseline_summary=str(tmp_path / "nowhere")))


# --- adapters --------------------------------------------------------------------------------------------


def test_missing_adapter_fails_before_any_model_loads_unless_optional(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.evaluation.variants"):
        assert resolve_adapter(str(tmp_path / "no-such-adapter"), field_name="adapter", optional=True) is None
    assert "evaluating the base model only" in caplog.text
    with pytest.raises(EvalError, match="adapter: adapter .* not found.*Fix: train one first"):
        resolve_adapter("org/no-such-adapter", field_name="adapter")
    with pytest.raises(EvalError, match="holds no adapter_config.json"):
        resolve_adapter(str(tmp_path), field_name="adapter")


# --- recipes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_eval_recipe_loads_and_validates(recipe):
    config = build_eval_config(recipe)
    assert isinstance(config, EvalConfig) and config.benchmarks and config.output_dir
    assert all(b.path and b.split and b.columns.question and b.columns.answer for b in config.benchmarks)


def test_medical_recipe_covers_multimedqa_from_the_hub():
    config = build_eval_config(ROOT / "configs/eval/medical.yaml")
    assert (config.model, config.adapter) == ("Qwen/Qwen3-4B", "org/qwen3-4b-nanoflux-medical-lora")
    paths = {b.path for b in config.benchmarks}
    assert paths == {"GBaker/MedQA-USMLE-4-options", "openlifescienceai/medmcqa", "qiaojin/PubMedQA", "cais/mmlu"}
    assert {b.subset for b in config.benchmarks if b.format == "mmlu"} >= {
        "clinical_knowledge",
        "college_medicine",
        "medical_genetics",
        "professional_medicine",
        "anatomy",
        "college_biology",
    }


def test_cli_overrides_reach_benchmark_entries_by_index_or_name():
    config = build_eval_config(
        ROOT / "configs/eval/local.yaml",
        ["--limit", "2", "--benchmarks.medqa.limit", "3", "--benchmarks.0.split=test", "--adapter", "null"],
    )
    assert config.limit == 2 and config.adapter is None
    assert config.benchmarks[0].split == "test" and config.benchmarks[1].limit == 3
    with pytest.raises(ConfigError, match="benchmarks.nope: no such benchmark entry.*Fix: use an index"):
        build_eval_config(ROOT / "configs/eval/local.yaml", ["--benchmarks.nope.limit", "3"])


@pytest.mark.parametrize(
    "change, field, fix",
    [
        ({"max_new_tokns": 64}, "max_new_tokns", "did you mean `max_new_tokens`"),
        ({"max_new_tokens": 0}, "max_new_tokens", ">= 1"),
        ({"batch_size": "eight"}, "batch_size", "expected an integer, not a string"),
        ({"dtype": "fp8"}, "dtype", "use auto, float32"),
        ({"benchmarks": []}, "benchmarks", "list at least one"),
        ({"benchmarks": [{"format": "medqaa"}]}, "benchmarks[0].format", "use one of gsm_hard, medqa"),
        ({"benchmarks": [{"format": "mmlu"}]}, "benchmarks[0].subset", "clinical_knowledge"),
        ({"benchmarks": [{"format": "medqa", "limit": 0}]}, "benchmarks[0].limit", ">= 1"),
        (
            {"benchmarks": [{"format": "medqa", "colums": {}}]},
            "benchmarks[0].colums",
            "did you mean `benchmarks[0].columns`",
        ),
        (
            {"benchmarks": [{"format": "choice", "path": "x.jsonl", "columns": {"answer_type": "number"}}]},
            "benchmarks[0].columns.answer_type",
            "letter, index or auto",
        ),
        ({"benchmarks": [{"format": "choice"}]}, "benchmarks[0].path", "set path"),
        ({"benchmarks": [{"format": "medqa"}, {"format": "medqa"}]}, "benchmarks", "its own `name`"),
        ({"compute": {"nanoflux_data": "org/nanoflux-medical"}}, "compute.baseline", "full benchmark training set"),
        ({"compute": {"build_summary": "summary.json"}}, "compute", "evaluate an adapter and a baseline_adapter"),
        ({"partition": "validation"}, "partition", "use test (report) or dev"),
        (
            {"benchmarks": [{"format": "medmcqa", "columns": {"answer_base": 2}}]},
            "benchmarks[0].columns.answer_base",
            "HF MedMCQA cop",
        ),
        (
            {"benchmarks": [{"format": "medqa", "dev": {"split": "validation", "holdout_from": "train", "size": 5}}]},
            "benchmarks[0].dev",
            "not both",
        ),
        ({"bootstrap_samples": 10}, "bootstrap_samples", ">= 100"),
        ({"engine": "vllm"}, "engine", "use transformers (in-process) or endpoint"),
        ({"engine": "endpoint"}, "endpoint", "add endpoint: {base_url: http://localhost:8000}"),
        ({"engine": "endpoint", "endpoint": {"base_url": "localhost:8000"}}, "endpoint.base_url", "http://host:port"),
        (
            {"endpoint": {"base_url": "http://h:8000", "models": {"adaptr": "x"}}},
            "endpoint.models.adaptr",
            "did you mean `endpoint.models.adapter`",
        ),
        (
            {"endpoint": {"base_url": "http://h:8000", "models": {"adapter": " "}}},
            "endpoint.models.adapter",
            "--lora-modules NAME=path",
        ),
        (
            {"endpoint": {"base_url": "http://h:8000", "token_env": "hf_abcdefghijklmnop"}},
            "endpoint.token_env",
            "write its name",
        ),
    ],
)
def test_malformed_recipe_fails_naming_the_field_the_value_and_the_fix(tmp_path, change, field, fix):
    data = {**yaml.safe_load((ROOT / "configs/eval/local.yaml").read_text()), **change}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        build_eval_config(path)
    message = str(err.value)
    assert message.startswith(f"{field}:") and "(got " in message and "Fix:" in message and fix in message


def test_nothing_to_evaluate_fails_before_any_model_loads(tmp_path, monkeypatch):
    import trainer.evaluation.generation

    monkeypatch.setattr(
        trainer.evaluation.generation, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded")
    )
    config = EvalConfig(
        evaluate_base=False,
        benchmarks=[BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl"), limit=2)],
        output_dir=str(tmp_path),
    )
    config.validate()
    with pytest.raises(EvalError, match="nothing to evaluate: evaluate_base is false and no adapter was found"):
        main(config)


# --- real model (slow) -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_main_runs_the_local_recipe_end_to_end(embedded_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's fixture paths are relative to the repository
    config = build_eval_config(
        ROOT / "configs/eval/local.yaml", ["--limit", "2", "--adapter", "null", "--output_dir", str(tmp_path)]
    )
    results = main(config)

    names = [b.name for b in config.benchmarks]
    assert results["variants"] == ["base"] and results["adapter"] is None
    assert set(results["results"]) == set(names)
    for name in names:
        r = results["results"][name]["base"]
        assert r["n"] == 2 and 0 <= r["correct"] <= 2 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        details = [json.loads(line) for line in (tmp_path / "details" / f"{name}-base.jsonl").read_text().splitlines()]
        assert len(details) == 2 and set(details[0]) == {"id", "prompt", "output", "extracted", "gold", "correct"}
        assert r["unparseable"] == sum(d["extracted"] is None for d in details)
        assert r["correct"] == sum(d["correct"] for d in details)
    assert results["generation"]["max_new_tokens"] == 64 and results["generation"]["greedy"]
    assert results["partition"] == "test" and all(b["selection"]["partition"] == "test" for b in results["benchmarks"])
    assert results["compute"]["measured"] is None  # no adapters: only the labelled estimate
    assert results["compute"]["estimate"]["nanoflux"]["rows"] == 4 and results["compute"]["estimate"]["ratio"] > 0
    assert results["paired"] == {} and set(results["aggregates"]["multimedqa"]["members"]) == {
        "medqa",
        "medmcqa",
        "pubmedqa",
        "mmlu-clinical_knowledge",
    }
    assert json.loads((tmp_path / "results.json").read_text())["variants"] == ["base"]
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.png").is_file()


@pytest.mark.slow
def test_adapter_variants_switch_adapters_on_one_base(embedded_model_dir, tmp_path):
    """A LoRA initialised to zero must reproduce the base outputs exactly; a random one must not."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, init in (("identity", True), ("random", False)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init, task_type="CAUSAL_LM"
        )
        get_peft_model(model, lora).save_pretrained(tmp_path / name)

    config = EvalConfig(
        adapter=str(tmp_path / "identity"),
        baseline_adapter=str(tmp_path / "random"),
        benchmarks=[BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl"), limit=2)],
        max_new_tokens=8,
        batch_size=2,
        reasoning=False,
        output_dir=str(tmp_path / "eval"),
    )
    config.validate()
    results = main(config)

    assert results["variants"] == ["base", "adapter", "baseline"]
    outputs = {
        v: [
            json.loads(line)["output"]
            for line in (tmp_path / "eval" / "details" / f"medqa-{v}.jsonl").read_text().splitlines()
        ]
        for v in results["variants"]
    }
    assert outputs["adapter"] == outputs["base"]
    assert outputs["baseline"] != outputs["base"]
    identical = results["paired"]["medqa"]["adapter-vs-base"]  # the same outputs: exactly no difference
    assert (identical["delta"], identical["ci_low"], identical["ci_high"], identical["p_value"]) == (
        0.0,
        0.0,
        0.0,
        1.0,
    )
    assert set(results["paired"]["medqa"]) == {"adapter-vs-base", "adapter-vs-baseline", "baseline-vs-base"}
