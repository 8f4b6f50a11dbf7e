"""Benchmark data: gold answers read strictly, inline options split robustly, headerless MMLU CSVs, id files
(PubMedQA's 500 test ids), dev partitions that never hold a test row, and the GSM8K training format. Fixtures only,
offline."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nanoflux.benchmark_formats import FORMATS, PUBMEDQA_TEST_IDS
from nanoflux.benchmarks import (
    BenchmarkConfig,
    ColumnsConfig,
    DevConfig,
    dev_benchmark,
    load_benchmark,
    test_questions,
)
from nanoflux.recipe import ConfigError
from nanoflux.rows import EvalError, split_inline_options
from trainer.evaluation.config import build_eval_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"


def _bench(**fields) -> BenchmarkConfig:
    columns = fields.pop("columns", None)
    dev = fields.pop("dev", None)
    bench = BenchmarkConfig(
        **fields, columns=ColumnsConfig(**(columns or {})), dev=DevConfig(**dev) if dev is not None else None
    )
    bench.validate("benchmarks[0]")
    return bench


def _write(tmp_path: Path, name: str, rows: list[dict]) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- gold answers ----------------------------------------------------------------------------------------

MC = {"question": "stem", "option_columns": ["A", "B", "C", "D"], "answer": "cop", "answer_type": "index", "id": "id"}


def _mc_rows(*cops) -> list[dict]:
    return [
        {"id": f"q{i}", "stem": f"Question {i}?", "A": "w", "B": "x", "C": "y", "D": "z", "cop": cop}
        for i, cop in enumerate(cops)
    ]


def test_an_out_of_range_answer_index_is_an_error_naming_benchmark_column_value_and_fix(tmp_path):
    path = _write(tmp_path, "dev.jsonl", _mc_rows(1, 4, 2))  # raw MedMCQA dev.json counts options from 1
    bench = _bench(format="choice", name="medmcqa-raw", path=path, split="test", columns=MC)
    with pytest.raises(EvalError) as err:
        load_benchmark(bench)
    message = str(err.value)
    assert message.startswith(
        "medmcqa-raw: row q1: columns.answer ('cop') = 4 is out of range for 4 options with answer_base 0"
    )
    assert "Fix: set columns.answer_base to 1" in message
    one_based = _bench(format="choice", name="medmcqa-raw", path=path, split="test", columns={**MC, "answer_base": 1})
    assert [e.gold for e in load_benchmark(one_based)] == ["A", "D", "B"]


def test_rows_without_a_gold_answer_are_dropped_and_counted(tmp_path):
    path = _write(tmp_path, "mc.jsonl", _mc_rows(1, None, -1, 3))  # -1: the `datasets` ClassLabel for "no label"
    examples = load_benchmark(_bench(format="choice", name="mc", path=path, split="test", columns=MC))
    assert [(e.id, e.gold) for e in examples] == [("q0", "B"), ("q3", "D")]
    assert examples.selection["dropped"] == {
        "count": 2,
        "no_gold": 2,
        "fewer_than_two_options": 0,
        "ids": ["q1", "q2"],
    }
    assert examples.selection["rows"] == 2
    listed = _write(
        tmp_path, "list.jsonl", [{"q": "Q?", "opts": ["only one"], "a": 0}, {"q": "Q2?", "opts": ["x", "y"], "a": 1}]
    )
    examples = load_benchmark(
        _bench(format="choice", path=listed, columns={"question": "q", "options": "opts", "answer": "a"})
    )
    assert [e.gold for e in examples] == ["B"] and examples.selection["dropped"]["fewer_than_two_options"] == 1


@pytest.mark.parametrize(
    "answer, error",
    [
        ("<explanation>x</explanation> <answer>f</answer>", "names option F, but the row has 5 options"),
        ("<answer>All of the above</answer>", "is not an option letter. Fix: set columns.answer_type"),
    ],
)
def test_a_gold_that_is_not_an_option_is_an_error(tmp_path, answer, error):
    path = _write(
        tmp_path,
        "gb.jsonl",
        [{"question": "Q? Please choose one of the following options: a. 1 b. 2 c. 3 d. 4 e. 5", "answer": answer}],
    )
    with pytest.raises(EvalError, match=error):
        load_benchmark(_bench(format="genome_bench", path=path))


def test_yes_no_maybe_and_numeric_golds_are_checked(tmp_path):
    path = _write(
        tmp_path, "ynm.jsonl", [{"question": "Q?", "answer": "Yes"}, {"question": "Q2?", "answer": "probably"}]
    )
    with pytest.raises(EvalError, match=r"row 1: columns.answer \('answer'\) = 'probably' is not yes, no or maybe"):
        load_benchmark(_bench(format="yes_no_maybe", path=path))
    path = _write(tmp_path, "num.jsonl", [{"question": "Q?", "answer": "about a dozen"}])
    with pytest.raises(EvalError, match="is not a number. Fix: map columns.answer"):
        load_benchmark(_bench(format="number", path=path))


# --- Genome-Bench ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("<answer>a.</answer>", "A"),
        ("<answer> c </answer>", "C"),
        ("<answer>(d)</answer>", "D"),
        ("<answer>b. Use a nickase</answer>", "B"),
        ("<answer>E</answer>", "E"),
    ],
)
def test_genome_bench_golds_with_a_dot_or_text_are_read(tmp_path, answer, gold):
    question = "Question: Which? Please choose one of the following options: a. one b. two c. three d. four e. five"
    path = _write(tmp_path, "gb.jsonl", [{"question": question, "answer": f"<explanation>why</explanation> {answer}"}])
    assert [e.gold for e in load_benchmark(_bench(format="genome_bench", path=path))] == [gold]


@pytest.mark.parametrize(
    "text, stem, options",
    [
        (  # "a." and "b." in the question stem are not options: the chain after the marker is
            (
                "Question context: compare plan a. and plan b. Question: Which? Please choose one of the following"
                " options: a. X b. Y c. Z d. W e. V"
            ),
            "Question context: compare plan a. and plan b. Question: Which?",
            ["X", "Y", "Z", "W", "V"],
        ),
        (  # an a..e run inside the last option does not win the tie: the chain that starts first does
            (
                "Q? Please choose one of the following options: a. X b. Y c. Z d. W e. Do steps a. then b. c. d. e. in"
                " order"
            ),
            "Q?",
            ["X", "Y", "Z", "W", "Do steps a. then b. c. d. e. in order"],
        ),
        (  # "B. subtilis" inside option a is not label b: its case differs from the labels'
            (
                "Q? Please choose one of the following options: a. Transform B. subtilis cells b. Use E. coli c. Z d."
                " W e. V"
            ),
            "Q?",
            ["Transform B. subtilis cells", "Use E. coli", "Z", "W", "V"],
        ),
        (  # quoted options (the authors' format): "b. subtilis" inside option a is not followed by a quote
            (
                'Q? Please choose one of the following options: a. "Use b. subtilis" b. "Use E. coli" c. "Z" d. "W"'
                ' e. "V"'
            ),
            "Q?",
            ["Use b. subtilis", "Use E. coli", "Z", "W", "V"],
        ),
        (
            "Is it plan a. or plan b.? a. X b. Y c. Z",
            "Is it plan a. or plan b.?",
            ["X", "Y", "Z"],
        ),  # no marker: after the "?"
        (
            "Question: Which? Please choose one of the following options: a. one b. two c. three",
            "Question: Which?",
            ["one", "two", "three"],
        ),
        ("Which is larger? (A) 2 (B) 3", "Which is larger?", ["2", "3"]),
        ("No options at all.", "No options at all.", []),
    ],
)
def test_inline_options_split_robustly(text, stem, options):
    assert split_inline_options(text) == (stem, options)


# --- MMLU without a header row ---------------------------------------------------------------------------


def test_the_original_headerless_mmlu_csv_is_read_by_position():
    bench = _bench(
        format="mmlu",
        subset="anatomy",
        path=str(FIXTURES / "mmlu_anatomy_test_headerless.csv"),
        split="test",
        header=False,
    )
    examples = load_benchmark(bench)
    assert [e.gold for e in examples] == list("BCDA")
    assert examples[0].options == ["Humerus", "Femur", "Tibia", "Radius"]
    assert (
        examples[3].question == "Where is the pituitary gland located, in relation to the hypothalamus?"
    )  # a quoted comma
    assert [e.id for e in examples] == ["0", "1", "2", "3"]  # the first line is a row, not a header


def test_a_headerless_csv_read_with_a_header_fails_with_the_working_fix():
    bench = _bench(
        format="mmlu", subset="anatomy", path=str(FIXTURES / "mmlu_anatomy_test_headerless.csv"), split="test"
    )
    with pytest.raises(
        EvalError, match="column 'question' is not in .*set header: false, the columns are then named 0, 1, 2"
    ):
        load_benchmark(bench)
    with pytest.raises(EvalError, match="header: false is for local CSV files"):
        load_benchmark(
            _bench(format="mmlu", subset="anatomy", path=str(FIXTURES / "mmlu_clinical_knowledge.jsonl"), header=False)
        )


# --- id files: PubMedQA's 500 test questions -------------------------------------------------------------


def test_the_packaged_pubmedqa_test_ids_are_the_500_of_test_ground_truth():
    from nanoflux.benchmark_formats import PACKAGE_DATA

    truth = json.loads((PACKAGE_DATA / PUBMEDQA_TEST_IDS.removeprefix("package:")).read_text())
    assert len(truth) == 500 and all(key.isdigit() for key in truth)
    assert Counter(truth.values()) == {"yes": 276, "no": 169, "maybe": 55}  # PubMedQA's test label distribution


def test_pubmedqa_from_the_hub_is_scored_on_its_test_ids_and_its_dev_split_is_the_other_labelled_rows():
    bench = _bench(format="pubmedqa")
    assert bench.ids_file == PUBMEDQA_TEST_IDS and bench.dev.exclude_ids_file == PUBMEDQA_TEST_IDS
    dev = dev_benchmark(bench)
    assert (dev.path, dev.subset, dev.split, dev.ids_file, dev.exclude_ids_file) == (
        "qiaojin/PubMedQA",
        "pqa_labeled",
        "train",
        "all",
        PUBMEDQA_TEST_IDS,
    )
    training = _bench(format="pubmedqa", subset="pqa_artificial")  # a training source: no test-id filter, no dev split
    assert training.ids_file is None and training.dev is None


def test_ids_file_keeps_and_exclude_ids_file_drops_rows():
    ids = str(FIXTURES / "pubmedqa_test_ids.json")
    bench = _bench(
        format="pubmedqa", path=str(FIXTURES / "pubmedqa.parquet"), ids_file=ids, dev={"exclude_ids_file": ids}
    )
    test = load_benchmark(bench)
    assert [e.id for e in test] == json.loads(Path(ids).read_text())
    assert test.selection["ids_listed"] == 4 and test.selection["ids_missing"] == 0
    dev = load_benchmark(bench, partition="dev")
    assert len(dev) == 4 and not {e.id for e in dev} & {e.id for e in test}
    assert dev.selection["excluded_by_ids"] == 4


def test_id_files_may_be_text_and_must_exist(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# PubMedQA ids\n21645374\n\n27350418\n")
    examples = load_benchmark(_bench(format="pubmedqa", path=str(FIXTURES / "pubmedqa.parquet"), ids_file=str(ids)))
    assert [e.id for e in examples] == ["21645374", "27350418"]
    with pytest.raises(EvalError, match="pubmedqa.ids_file: no ids file at .*Fix: point it at"):
        load_benchmark(
            _bench(format="pubmedqa", path=str(FIXTURES / "pubmedqa.parquet"), ids_file=str(tmp_path / "none.json"))
        )
    with pytest.raises(ConfigError, match="benchmarks\\[0\\].ids_file: needs an id column"):
        _bench(format="medqa", path=str(FIXTURES / "medqa.jsonl"), ids_file=str(ids))


# --- dev partitions --------------------------------------------------------------------------------------


def test_every_hub_benchmark_has_a_dev_split_that_is_not_its_test_split():
    expected = {
        "medqa": ("GBaker/MedQA-USMLE-4-options", "train", 500),
        "medmcqa": ("openlifescienceai/medmcqa", "train", 500),
        "mmlu": ("cais/mmlu", "validation", None),
        "gsm_hard": ("openai/gsm8k", "train", 500),  # GSM8K's train split, never its test split (GSM-Hard's questions)
        "genome_bench": ("Mingyin0312/Genome-Bench", "test", 300),  # one split: held out of it, then left out of test
    }
    for fmt, (path, split, size) in expected.items():
        bench = _bench(format=fmt, subset="anatomy" if fmt == "mmlu" else None)
        dev = dev_benchmark(bench)
        assert (dev.path, dev.split, dev.sample_size) == (path, split, size), fmt
        assert (dev.path, dev.subset, dev.split) != (bench.path, bench.subset, bench.split) or fmt == "genome_bench"
    assert dev_benchmark(_bench(format="gsm_hard")).format == "gsm8k"


def test_a_held_out_dev_sample_is_seeded_and_left_out_of_the_same_split():
    bench = _bench(
        format="medqa", path=str(FIXTURES / "medqa.jsonl"), dev={"holdout_from": "test", "size": 3, "seed": 0}
    )
    dev, test = load_benchmark(bench, partition="dev"), load_benchmark(bench)
    assert len(dev) == 3 and len(test) == 5 and not {e.id for e in dev} & {e.id for e in test}
    assert sorted(int(e.id) for e in dev + test) == list(range(8))
    assert test.selection["excluded_dev_rows"] == 3 and dev.selection["sample"]["seed"] == 0
    assert [e.id for e in load_benchmark(bench, partition="dev")] == [e.id for e in dev]  # the same rows every time
    other = _bench(
        format="medqa", path=str(FIXTURES / "medqa.jsonl"), dev={"holdout_from": "test", "size": 3, "seed": 1}
    )
    assert [e.id for e in load_benchmark(other, partition="dev")] != [e.id for e in dev]
    too_big = _bench(format="medqa", path=str(FIXTURES / "medqa.jsonl"), dev={"holdout_from": "test", "size": 8})
    with pytest.raises(EvalError, match="a held-out sample of 8 rows needs more than the 8 rows.*Fix: lower dev.size"):
        load_benchmark(too_big, partition="dev")


def test_no_recipe_entry_has_a_dev_row_in_its_test_rows(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = build_eval_config(ROOT / "configs/eval/local.yaml")
    for bench in config.benchmarks:
        bench.limit = None
        test = {e.question for e in load_benchmark(bench)}
        dev = {e.question for e in load_benchmark(bench, partition="dev")}
        assert test and dev and not test & dev, bench.name
        assert set(test_questions(bench).values()) == test


def test_partition_dev_reaches_every_entry_through_build_eval_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = build_eval_config(ROOT / "configs/eval/local.yaml", ["--partition", "dev"])
    assert config.partition == "dev"
    gsm = load_benchmark(config.benchmarks[0], partition=config.partition)
    assert gsm.selection["format"] == "gsm8k" and gsm.selection["sample"]["size"] == 4 and len(gsm) == 4
    with pytest.raises(ConfigError, match="partition: unknown partition .*Fix: use test"):
        build_eval_config(ROOT / "configs/eval/local.yaml", ["--partition", "validation"])


def test_an_entry_without_a_known_dev_split_says_how_to_give_one(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"benchmarks: [{{format: medqa, path: {FIXTURES / 'medqa.jsonl'}}}]\n")
    assert (
        build_eval_config(recipe).benchmarks[0].dev is None
    )  # a local file: the Hub dataset's default does not apply
    with pytest.raises(
        ConfigError, match="benchmarks\\[0\\].dev: medqa has no dev split.*Fix: set dev, e.g. \\{split: validation\\}"
    ):
        build_eval_config(recipe, ["--partition", "dev"])
    with pytest.raises(ConfigError, match="dev.size: a held-out sample needs a size"):
        build_eval_config(recipe, ["--benchmarks.0.dev.holdout_from", "train"])
    with pytest.raises(ConfigError, match="dev.format: not a choice format"):
        build_eval_config(recipe, ["--benchmarks.0.dev.format", "gsm8k"])


def test_dev_empty_turns_the_default_dev_split_off():
    bench = _bench(format="genome_bench", dev={})
    assert bench.dev.is_empty()
    with pytest.raises(EvalError, match="has no dev split"):
        dev_benchmark(bench)


# --- training formats ------------------------------------------------------------------------------------


def test_gsm8k_is_a_training_format_with_the_number_after_hashes_and_the_solution_as_explanation():
    bench = _bench(format="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    assert (bench.kind, bench.split, FORMATS["gsm8k"].path, FORMATS["gsm8k"].subset) == (
        "number",
        "train",
        "openai/gsm8k",
        "main",
    )
    examples = load_benchmark(bench)
    assert [e.gold for e in examples] == [7.0, 24.0, 110.0, 40.0, 555.0, 137.0, 504.0, -7.0]
    assert examples[0].explanation == "She makes 24 + 18 = 42 muffins.\nAfter selling, 42 - 35 = 7 muffins are left."
    assert "####" not in examples[3].explanation and "<<" not in examples[3].explanation
    hub = _bench(format="gsm8k")  # training on the Hub split leaves GSM-Hard's dev rows out
    assert dev_benchmark(hub).sample_size == dev_benchmark(_bench(format="gsm_hard")).sample_size == 500


def test_a_dev_block_that_only_adjusts_keeps_the_default_and_one_that_names_the_test_rows_is_refused(tmp_path):
    assert (lambda d: (d.holdout_from, d.size, d.seed))(_bench(format="medqa", dev={"size": 200, "seed": 3}).dev) == (
        "train",
        200,
        3,
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("benchmarks: [{format: medqa}]\n")
    assert build_eval_config(recipe, ["--benchmarks.medqa.dev.size", "100"]).benchmarks[0].dev.size == 100
    with pytest.raises(
        ConfigError, match="benchmarks\\[0\\].dev: the dev rows would be the test rows.*Fix: set split"
    ):
        build_eval_config(recipe, ["--benchmarks.medqa.dev.split", "test"])
    with pytest.raises(ConfigError, match="dev.holdout_from: a sample size needs the split"):
        _bench(format="medqa", path=str(FIXTURES / "medqa.jsonl"), dev={"size": 3})
