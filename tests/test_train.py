"""LoRA training on a pinned NanoFlux dataset version: recipes, data loading (local folder and Hub) in TRL's
prompt-completion form, the full-benchmark baseline's rows and the refusals that keep every benchmark's test rows out
of training, and — marked `slow` — real runs of the packaged SmolLM2 on CPU: the loss on the answer only (prompt labels
masked), frozen base, trained adapter, the compute record, the card's pin, the push and its retry.

The dataset is a local repository folder with two versions: v1 (8 train + 2 test conversations) and v2 (12 + 2), so
`main` moves past v1 and a run on v1 proves the tag, not the head, was trained on.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import nanoflux.hub
from builder import BuildFolder
from builder.dataset import sft_messages, to_dataset
from builder.publish import PublishError
from localhub import LocalHub, RepoStore
from localhub.testing import FaultyHub
from nanoflux.benchmarks import BenchmarkConfig, load_benchmark, test_questions
from nanoflux.recipe import ConfigError
from trainer.adapter_hub import publish_adapter
from trainer.baseline import baseline_rows, check_no_test_rows, question_key
from trainer.train import main
from trainer.train_config import TrainConfig, TrainError, build_train_config
from trainer.train_data import has_reasoning, load_train_data, prompt_completion

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "samples" / "benchmarks"
LOCAL_RECIPE = ROOT / "configs" / "train" / "local.yaml"
LOCAL_EVAL = ROOT / "configs" / "eval" / "local.yaml"
QWEN_RECIPE = ROOT / "configs" / "train" / "qwen3-4b-lora.yaml"
REPO = "local/nanoflux-medical"
ADAPTER_REPO = "local/smollm2-nanoflux-medical-lora"
COMMIT_PATH = r"/api/models/.*/commit/"
README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
---
# NanoFlux test dataset
"""


# --- a tiny dataset repo ---------------------------------------------------------------------------------


def _rows(start: int, n: int, questions: dict[int, str] | None = None) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        question = (questions or {}).get(
            i
        ) or f"Case {i}: a {30 + i}-year-old has fever, cough and crackles. Most likely? A) pneumonia B) asthma"
        rows.append(
            {
                "id": f"r0-a{i}",
                "question": question,
                "reference_answer": "A",
                "version": "v1",
                "messages": sft_messages(
                    question, f"Step 1: fever and crackles in case {i}. Step 2: consolidation.", "A"
                ),
            }
        )
    return rows


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    to_dataset(rows).to_parquet(buffer)
    return buffer.getvalue()


def make_dataset_repo(
    root: Path, repo: str = REPO, versions: tuple[int, ...] = (8, 12), questions: dict[int, str] | None = None
) -> dict[str, str]:
    """A NanoFlux-like dataset repo with one tag per version (`versions` = train rows in each; `questions` replaces
    some rows' questions); {tag: commit}."""
    store = RepoStore(root)
    store.create_repo("dataset", repo)
    tags = {}
    for number, n in enumerate(versions, start=1):
        files = {
            BuildFolder.DATA: _parquet(_rows(0, n, questions)),
            "data/test-00000-of-00001.parquet": _parquet(_rows(100, 2)),
            "README.md": README.encode(),
        }
        sha = store.create_commit("dataset", repo, "main", add=files, title=f"v{number}")
        tags[f"v{number}"] = store.create_ref("dataset", repo, "tags", f"v{number}", sha)
    return tags


def _config(hub_dir: Path, output_dir: Path, *overrides: str) -> TrainConfig:
    """The local recipe, on `hub_dir`, shortened to a few steps."""
    return build_train_config(
        LOCAL_RECIPE, ["--hub_dir", str(hub_dir), "--output_dir", str(output_dir), "--sft.max_steps", "4", *overrides]
    )


@pytest.fixture(autouse=True)
def _in_the_checkout(monkeypatch):
    """The recipes name repository paths (the evaluation recipe's fixtures): run from the checkout."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load (or convert) a model fails the test."""
    import transformers

    import nanoflux.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(nanoflux.models, "embedded_model_path", refuse)


# --- fast: recipes ---------------------------------------------------------------------------------------


def test_both_recipes_load_and_validate():
    local = build_train_config(LOCAL_RECIPE)
    assert (local.model, local.hub_dir, local.dataset_name, local.revision) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "outputs/hub",
        REPO,
        "v1",
    )
    assert (
        local.lora.r,
        local.lora.target_modules,
        local.sft["max_steps"],
        local.sft["per_device_train_batch_size"],
    ) == (8, ["q_proj", "v_proj"], 10, 2)
    assert (local.sft["max_length"], local.sft["bf16"], local.sft["activation_checkpointing"], local.push_to_hub) == (
        512,
        False,
        False,
        None,
    )
    assert (local.eval_recipe, local.enable_thinking, local.benchmark_reasoning) == (
        "configs/eval/local.yaml",
        None,
        True,
    )

    qwen = build_train_config(QWEN_RECIPE)
    assert (qwen.model, qwen.dataset_name, qwen.revision, qwen.hub_dir) == (
        "Qwen/Qwen3-4B",
        "org/nanoflux-medical",
        "v1",
        None,
    )
    assert (qwen.lora.r, qwen.lora.alpha, qwen.lora.dropout) == (16, 32, 0.05)
    assert set(qwen.lora.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    sft = qwen.sft
    assert (sft["learning_rate"], sft["num_train_epochs"], sft["max_steps"]) == (1e-4, 3.0, -1)
    assert (sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"], sft["max_length"]) == (4, 4, 2048)
    assert (sft["bf16"], sft["activation_checkpointing"], qwen.push_to_hub) == (
        True,
        True,
        "org/qwen3-4b-nanoflux-medical-lora",
    )
    assert (qwen.eval_recipe, qwen.enable_thinking) == (
        "configs/eval/medical.yaml",
        False,
    )  # evaluation's prompt, evaluation's test rows


def test_cli_overrides_win_and_learning_rates_may_be_written_1e_4():
    config = build_train_config(
        LOCAL_RECIPE, ["--sft.learning_rate", "1e-4", "--lora.target_modules", "[q_proj, k_proj]", "--revision=v2"]
    )
    assert (config.sft["learning_rate"], config.lora.target_modules, config.revision) == (
        1e-4,
        ["q_proj", "k_proj"],
        "v2",
    )
    assert config.sft["max_steps"] == 10  # the recipe's other sft keys stay


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lora.r", "0"], "lora.r: out of range (got 0). Fix: use a value >= 1"),
        (
            ["--sft.learning_rat", "1e-4"],
            "sft.learning_rat: not a field of trl.SFTConfig (got '1e-4'). Fix: did you mean `sft.learning_rate`?",
        ),
        (["--sft.max_steps", "ten"], "sft.max_steps: expected an integer, not a string (got 'ten')"),
        (["--sft.max_steps", "0"], "sft.max_steps: out of range (got 0). Fix: use -1"),
        (["--lora.dropout", "1.5"], "lora.dropout: out of range (got 1.5)"),
        (["--sft.bf16", "maybe"], "sft.bf16: expected true or false, not a string (got 'maybe')"),
        (
            ["--sft.lr_scheduler_type", "bogus"],
            "sft.lr_scheduler_type: trl.SFTConfig refused it: bogus is not a valid",
        ),
        (["--sft.output_dir", "x"], "sft.output_dir: NanoFlux sets this field (set from the recipe's output_dir)"),
        (
            ["--push_to_hub", "just-a-name"],
            "push_to_hub: not a repo id (got 'just-a-name'). Fix: write it as org/name",
        ),
        (["--adapter_hub_dir", "outputs/models"], "adapter_hub_dir: set without push_to_hub"),
        (["--lora.target_modules", "[]"], "lora.target_modules: needs module names"),
    ],
)
def test_bad_values_fail_naming_the_field_the_value_and_the_fix(args, message):
    with pytest.raises(ConfigError) as err:
        build_train_config(LOCAL_RECIPE, args)
    assert message in str(err.value)


def test_unknown_key_in_a_recipe_file_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(LOCAL_RECIPE.read_text()), "lora_rank": 8}))
    with pytest.raises(ConfigError, match=r"lora_rank: unknown field \(got 8\)\. Fix: did you mean `lora`\?"):
        build_train_config(recipe)


# --- fast: data ------------------------------------------------------------------------------------------


def test_a_version_loads_from_the_local_folder_at_its_tagged_commit(tmp_path):
    tags = make_dataset_repo(tmp_path / "hub")
    config = _config(tmp_path / "hub", tmp_path / "out", "--eval_split", "test")
    data = load_train_data(config)
    assert data.commit == tags["v1"] != RepoStore(tmp_path / "hub").resolve("dataset", REPO, "main")
    assert (len(data.train), len(data.evaluation), data.train.column_names) == (8, 2, ["prompt", "completion"])
    # TRL's prompt-completion form: the question is the prompt (no loss), the annotated answer the completion.
    row = data.train[0]
    assert [m["role"] for m in row["prompt"]] == ["user"] and [m["role"] for m in row["completion"]] == ["assistant"]
    assert row["completion"][0]["content"].endswith("\n\nFinal answer: A") and row["prompt"][0]["content"].startswith(
        "Case 0:"
    )
    assert (data.targets, data.rows_with_reasoning, data.questions[0]) == ("reasoning", 8, _rows(0, 1)[0]["question"])


def test_a_version_loads_from_the_hub_at_its_tagged_commit(tmp_path, hub_endpoint):
    tags = make_dataset_repo(tmp_path / "hub")
    with LocalHub(tmp_path / "hub") as hub:
        hub_endpoint(hub.url)
        config = build_train_config(LOCAL_RECIPE, ["--hub_dir", "null", "--revision", "v2"])
        data = load_train_data(config)
        assert (data.commit, len(data.train), data.evaluation) == (tags["v2"], 12, None)
        with pytest.raises(
            TrainError, match=r"revision: local/nanoflux-medical has no version 'v7' \(versions: v1, v2\)"
        ):
            load_train_data(build_train_config(LOCAL_RECIPE, ["--hub_dir", "null", "--revision", "v7"]))


def test_a_missing_revision_fails_before_any_model_is_loaded(tmp_path, no_model_loading):
    make_dataset_repo(tmp_path / "hub")
    with pytest.raises(TrainError) as err:
        main(_config(tmp_path / "hub", tmp_path / "out", "--revision", "v9"))
    assert (
        str(err.value)
        == "revision: local/nanoflux-medical has no version 'v9' (versions: v1, v2). Fix: pass --revision with one of"
        " those"
    )
    assert not (tmp_path / "out").exists()


def test_bf16_without_a_gpu_fails_with_the_fix(tmp_path, no_model_loading):
    import torch

    if torch.accelerator.is_available():
        pytest.skip("this machine can train in bf16")
    make_dataset_repo(tmp_path / "hub")
    with pytest.raises(
        TrainError, match=r"sft.bf16: no GPU or other accelerator found \(got True\)\. Fix: pass --sft.bf16 false"
    ):
        main(_config(tmp_path / "hub", tmp_path / "out", "--sft.bf16", "true"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--dataset_name", "local/nope"], "dataset_name: no dataset repo 'local/nope'"),
        (["--eval_split", "validation"], "has no split 'validation' (has: ['train', 'test'])"),
    ],
)
def test_a_wrong_repo_or_split_fails_before_any_model_is_loaded(tmp_path, no_model_loading, overrides, message):
    make_dataset_repo(tmp_path / "hub")
    with pytest.raises(TrainError, match=re.escape(message)):
        main(_config(tmp_path / "hub", tmp_path / "out", *overrides))


def test_a_version_without_rows_fails_clearly(tmp_path, no_model_loading):
    make_dataset_repo(tmp_path / "hub", versions=(0,))
    with pytest.raises(
        TrainError, match=r"revision: local/nanoflux-medical@v1 \(commit [0-9a-f]{12}\) has no rows to train on"
    ):
        main(_config(tmp_path / "hub", tmp_path / "out"))


def test_a_conversation_becomes_prompt_and_completion_at_its_last_assistant_turn():
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Q?"}
    answer = {"role": "assistant", "content": "Because.\n\nFinal answer: B"}
    assert prompt_completion([system, user, answer], "row 0") == {"prompt": [system, user], "completion": [answer]}
    with pytest.raises(
        TrainError,
        match=r"dataset_name: row 3 has no assistant turn after a user turn \(roles: \['user'\]\)\. Fix: publish rows",
    ):
        prompt_completion([user], "row 3")
    assert has_reasoning(answer["content"]) and not has_reasoning("Final answer: B") and not has_reasoning("B")


# --- fast: the full-benchmark baseline and the test rows -------------------------------------------------


@pytest.mark.parametrize(
    "benchmark, message",
    [
        (
            "{format: gsm_hard}",
            "benchmark.format: training on it would train on evaluation rows: GSM-Hard has one split",
        ),
        (
            "{format: gsm8k, split: test}",
            (
                "benchmark.split: training on it would train on evaluation rows: GSM-Hard's 1,319 questions are"
                " GSM8K's test questions"
            ),
        ),
        (
            "{format: pubmedqa, split: train}",
            (
                "Fix: train the baseline on PubMedQA's artificial training set: benchmark: {format: pubmedqa, subset:"
                " pqa_artificial, split: train}"
            ),
        ),
        (
            "{format: genome_bench, split: test}",
            "benchmark.format: training on it would train on evaluation rows: Genome-Bench has one split",
        ),
        (
            "{format: medqa, split: test}",
            "benchmark.split: this is the split nanoflux eval scores MedQA (USMLE, 4 options) on",
        ),
        (
            "{format: medmcqa}",
            (
                "benchmark.split: this is the split nanoflux eval scores MedMCQA on, so the baseline would train on"
                " its test rows (got 'validation')"
            ),
        ),
        ("{format: mmlu, subset: anatomy}", "benchmark.split: this is the split nanoflux eval scores MMLU on"),
    ],
)
def test_a_baseline_on_the_rows_evaluation_scores_is_refused_naming_the_field_and_the_fix(benchmark, message):
    with pytest.raises(ConfigError) as err:
        build_train_config(LOCAL_RECIPE, ["--benchmark", benchmark])
    assert message in str(err.value) and "Fix: " in str(err.value)


@pytest.mark.parametrize(
    "benchmark",
    [
        "{format: gsm8k, split: train}",
        "{format: pubmedqa, subset: pqa_artificial, split: train}",
        "{format: medqa, split: train}",
        "{format: medmcqa, split: train}",
    ],
)
def test_the_baselines_training_splits_are_accepted(benchmark):
    config = build_train_config(LOCAL_RECIPE, ["--benchmark", benchmark])
    assert config.benchmark.split == "train"


def test_baseline_rows_are_asked_as_evaluation_asks_them_with_the_benchmarks_reasoning_as_target():
    medmcqa = BenchmarkConfig(format="medmcqa", path=str(FIXTURES / "medmcqa.jsonl"), split="train")
    medmcqa.validate("benchmark")
    data = baseline_rows(medmcqa)
    asked = load_benchmark(medmcqa, reasoning=True)  # the prompt `nanoflux eval` sends (reasoning on)
    assert [row["prompt"] for row in data.rows] == [[{"role": "user", "content": e.prompt}] for e in asked]
    assert [row["completion"][0]["content"] for row in data.rows] == [
        f"{e.explanation}\n\nFinal answer: {e.gold}" for e in asked
    ]
    assert (data.targets, data.rows_with_reasoning, data.prompt) == ("reasoning", len(asked), "reasoning")

    gsm8k = BenchmarkConfig(format="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), split="train")
    gsm8k.validate("benchmark")
    first = baseline_rows(gsm8k).rows[0]["completion"][0]["content"]
    assert (
        first == "She makes 24 + 18 = 42 muffins.\nAfter selling, 42 - 35 = 7 muffins are left.\n\nFinal answer: 7"
    )  # no <<>> or ####

    medqa = BenchmarkConfig(format="medqa", path=str(FIXTURES / "medqa.jsonl"), split="train")
    medqa.validate("benchmark")
    data = baseline_rows(medqa)
    assert (data.targets, data.rows_with_reasoning) == (
        "answer_only",
        0,
    )  # MedQA has no explanations: recorded, not hidden
    assert all(re.fullmatch(r"Final answer: [A-D]", row["completion"][0]["content"]) for row in data.rows)
    answer_only = baseline_rows(medqa, reasoning=False)
    assert answer_only.prompt == "answer_only" and all(
        "letter of the correct option only" in r["prompt"][0]["content"] for r in answer_only.rows
    )


def test_a_baseline_whose_questions_are_evaluation_test_rows_is_refused_before_any_model_loads(
    tmp_path, no_model_loading
):
    # The local evaluation scores medqa.jsonl as MedQA's test rows (all but its 3 dev rows): training on that file is
    # refused.
    bench = "{format: medqa, path: samples/benchmarks/medqa.jsonl, split: train}"
    config = build_train_config(LOCAL_RECIPE, ["--benchmark", bench, "--output_dir", str(tmp_path / "out")])
    with pytest.raises(TrainError) as err:
        main(config)
    assert re.search(
        r"^eval_recipe: the training data \(.*medqa\.jsonl@main@local\) holds 5 question\(s\) of the evaluation's test"
        r" rows \(medqa test row \d+",
        str(err.value),
    )
    assert "Fix: train on data the evaluation does not score" in str(err.value) and not (tmp_path / "out").exists()


def test_a_nanoflux_row_that_copies_a_test_question_is_refused_before_any_model_loads(tmp_path, no_model_loading):
    leaked = next(iter(test_questions(_local_benchmark("medqa")).values()))
    make_dataset_repo(tmp_path / "hub", questions={3: "  " + leaked.upper() + " "})  # case and spacing do not hide it
    with pytest.raises(
        TrainError,
        match=(
            r"eval_recipe: the training data \(local/nanoflux-medical@v1@[0-9a-f]{40}\) holds 1 question\(s\) of the"
            r" evaluation's test rows \(medqa test row"
        ),
    ):
        main(_config(tmp_path / "hub", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_nanoflux_row_that_nearly_copies_a_benchmark_question_is_refused_before_any_model_loads(
    tmp_path, no_model_loading
):
    # Not the same question (the exact-match guard lets it through): a GSM-Hard problem with its numbers changed, the
    # GSM-Hard-style swap that decontamination's n-gram detectors catch.
    original = json.loads(Path("samples/benchmarks/gsm_hard.jsonl").read_text().splitlines()[0])["input"]
    swapped = re.sub(r"\d+", lambda m: str(int(m.group()) * 7 + 3), original)
    assert swapped != original
    make_dataset_repo(tmp_path / "hub", questions={2: swapped})
    with pytest.raises(
        TrainError,
        match=(
            r"eval_recipe: the training data .* holds 1 question\(s\) that nearly copy .*\(gsm-hard \d+"
            r" \((ngram|numbers)\)\).*Fix: rebuild or re-publish"
        ),
    ):
        main(_config(tmp_path / "hub", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _local_benchmark(name: str) -> BenchmarkConfig:
    from trainer.evaluation.config import build_eval_config

    return next(b for b in build_eval_config(LOCAL_EVAL).benchmarks if b.name == name)


def test_no_test_row_question_enters_a_training_set(tmp_path):
    """The training sources against every test row of the local evaluation: the NanoFlux rows and GSM8K (the GSM-Hard
    baseline) share no question with them and pass; a local file the evaluation scores as test rows (the static check
    cannot tell a file's role) and, when dev rows are checked too, a dev row are caught."""
    from trainer.baseline import TestRowsInTraining
    from trainer.evaluation.config import build_eval_config

    evaluation = build_eval_config(LOCAL_EVAL)
    tests = {question_key(q) for bench in evaluation.benchmarks for q in test_questions(bench).values()}
    assert len(tests) >= 6 * 4
    make_dataset_repo(tmp_path / "hub")
    sources = {"nanoflux": load_train_data(_config(tmp_path / "hub", tmp_path / "out")).questions}
    for name in ("gsm8k", "medmcqa"):
        bench = BenchmarkConfig(format=name, path=str(FIXTURES / f"{name}.jsonl"), split="train")
        bench.validate("benchmark")
        sources[name] = [row["question"] for row in baseline_rows(bench).rows]
    for name in ("nanoflux", "gsm8k"):
        assert sources[name] and not {question_key(q) for q in sources[name]} & tests, name
        assert check_no_test_rows(sources[name], evaluation, field_name="eval_recipe", what=name) == len(tests)
    # medmcqa.jsonl is the local evaluation's MedMCQA file: all but its 3 dev rows are test rows there.
    assert len({question_key(q) for q in sources["medmcqa"]} & tests) == 5
    with pytest.raises(
        TestRowsInTraining,
        match=r"eval_recipe: medmcqa holds 5 question\(s\) of the evaluation's test rows \(medmcqa test row",
    ):
        check_no_test_rows(sources["medmcqa"], evaluation, field_name="eval_recipe", what="medmcqa")
    # gsm8k.jsonl holds GSM-Hard's dev rows there (a seeded sample of 4): caught when dev rows are checked too (a
    # sweep).
    with pytest.raises(
        TestRowsInTraining, match=r"holds 4 question\(s\) of the evaluation's test and dev rows \(gsm-hard dev row"
    ):
        check_no_test_rows(sources["gsm8k"], evaluation, field_name="pool", what="gsm8k", partitions=("test", "dev"))


# --- slow: real training on the packaged SmolLM2 ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_model_dir):
    """One 4-step run on v1 that pushes to a local adapter repo whose commit endpoint fails: the adapter must stay
    on disk. The SFTTrainer is captured to inspect the trained model in memory."""
    import trl

    tmp = tmp_path_factory.mktemp("train")
    tags = make_dataset_repo(tmp / "hub")
    config = _config(
        tmp / "hub", tmp / "adapter", "--push_to_hub", ADAPTER_REPO, "--adapter_hub_dir", str(tmp / "models")
    )
    trainers = []

    class CapturedSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    class FailingCommits(FaultyHub):  # every Hub the push starts answers its commit with a 500
        def start(self):
            started = super().start()
            started.fail_next("POST", COMMIT_PATH, status=500)
            return started

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the evaluation recipe's fixtures (its test rows are checked before training)
        mp.setattr(trl, "SFTTrainer", CapturedSFTTrainer)
        mp.setattr(nanoflux.hub, "LocalHub", FailingCommits)
        with pytest.raises(PublishError) as err:
            main(config)
    (trainer,) = trainers
    summary = json.loads((tmp / "adapter" / "training_summary.json").read_text())
    return SimpleNamespace(
        config=config,
        out=tmp / "adapter",
        models=tmp / "models",
        tags=tags,
        trainer=trainer,
        error=err.value,
        summary=summary,
    )


@pytest.mark.slow
def test_training_logs_a_finite_loss_and_counts_steps_and_tokens(run):
    summary = run.summary
    assert summary["steps"] == 4 and summary["dataset"]["rows"] == 8
    curve = [loss for _, loss in summary["loss"]["curve"]]
    assert len(curve) == 4 and all(math.isfinite(loss) for loss in curve)
    assert (summary["loss"]["first"], summary["loss"]["last"], summary["loss"]["min"]) == (
        curve[0],
        curve[-1],
        min(curve),
    )
    # Padding excluded: more than one short conversation per step, less than full batches of max_length.
    assert 4 * 2 * 20 < summary["train_tokens"] < 4 * 2 * 512
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["wall_time_s"] > 0
    assert summary["hyperparameters"]["lora_r"] == 8 and summary["hyperparameters"]["precision"] == "fp32"
    # What a measured compute ratio needs: 4 steps x batch 2 over 8 rows is one epoch.
    compute = summary["compute"]
    assert (
        compute["optimizer_steps"],
        compute["epochs_trained"],
        compute["examples"],
        compute["devices"],
        compute["segments"],
    ) == (4, 1.0, 8, 1, 1)
    assert (
        compute["train_tokens"] == summary["train_tokens"] == compute["tokens_per_epoch"]
    )  # one epoch, padding excluded
    assert 0 < compute["loss_tokens_per_epoch"] < compute["tokens_per_epoch"]  # the answers only
    assert compute["device_seconds"] == compute["train_seconds"] == summary["wall_time_s"] and compute[
        "device_name"
    ] not in ("", "cpu")
    assert summary["dataset"]["test_rows_checked"] > 0 and summary["dataset"]["targets"] == "reasoning"


@pytest.mark.slow
def test_the_loss_covers_the_answer_only_the_prompt_labels_are_masked(run, embedded_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert run.trainer.args.completion_only_loss is True
    dataset = run.trainer.train_dataset
    assert len(dataset) == 8
    for row in dataset:
        ids, labels = row["input_ids"], row["labels"]
        # The prompt as evaluation renders it (chat template, generation prompt): every one of its labels is -100...
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert ids[:n] == tokenizer(prompt, add_special_tokens=False)["input_ids"] and set(labels[:n]) == {-100}
        # ...and every completion token (the answer and the end-of-turn token) is a label.
        assert labels[n:] == ids[n:] and -100 not in labels[n:]
        answer = tokenizer.decode(ids[n:])
        assert answer.startswith(row["completion"][0]["content"]) and "<|im_end|>" in answer


@pytest.mark.slow
@pytest.mark.parametrize("enable_thinking", [False, None])
def test_with_qwen3s_chat_template_the_prompt_evaluation_sends_is_masked(
    tmp_path, embedded_model_dir, enable_thinking
):
    """Qwen3's own template (TRL ships an exact copy) on a tiny random model: with enable_thinking false, as evaluation
    asks, the empty think block belongs to the masked prompt and the loss starts at the answer."""
    from pathlib import Path as _Path

    import trl
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from trainer.train import make_trainer
    from trainer.train_data import _dataset

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.chat_template = (_Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    tiny = AutoConfig.from_pretrained(embedded_model_dir)
    tiny.update(
        {
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        }
    )
    model = AutoModelForCausalLM.from_config(tiny)
    config = build_train_config(
        LOCAL_RECIPE, ["--enable_thinking", json.dumps(enable_thinking), "--eval_recipe", "null"]
    )
    question = "What is 2 + 2?\n\nGive only the final numeric answer, written as `Final answer: <number>`."
    rows = [prompt_completion(sft_messages(question, "2 and 2 make 4.", "4"), "row 0")]
    args = SFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        max_length=256,
        completion_only_loss=True,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
    )
    trainer = make_trainer(
        config,
        model,
        tokenizer,
        args,
        LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        _dataset(rows),
        None,
    )
    row = trainer.train_dataset[0]
    masked = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100])
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    asked = tokenizer.apply_chat_template(
        rows[0]["prompt"],
        add_generation_prompt=True,
        tokenize=False,
        **({} if enable_thinking is None else {"enable_thinking": enable_thinking}),
    )
    # What evaluation sends, with the same enable_thinking, is masked; only whitespace at the boundary may go to the
    # completion (this tokenizer merges "\n\n" with the next word; TRL starts the completion where the tokens diverge).
    assert asked.startswith(masked) and not asked[len(masked) :].strip()
    if enable_thinking is False:
        assert (
            masked.rstrip().endswith("<|im_start|>assistant\n<think>\n\n</think>")
            and trained.lstrip() == "2 and 2 make 4.\n\nFinal answer: 4<|im_end|>\n"
        )
    else:  # without it, the template's empty think block is part of what the model learns to write
        assert trained.startswith("<think>\n\n</think>\n\n2 and 2 make 4.")


@pytest.mark.slow
def test_base_weights_stay_frozen_and_only_the_lora_weights_move(run, embedded_model_dir):
    import torch
    from safetensors.torch import load_file

    original = {}
    for shard in sorted(Path(embedded_model_dir).glob("*.safetensors")):
        original.update(load_file(shard))
    compared = 0
    for name, param in run.trainer.model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad, name
            continue
        assert not param.requires_grad, name
        assert torch.equal(
            param.detach().cpu(), original[name.removeprefix("base_model.model.").replace(".base_layer", "")]
        ), name
        compared += 1
    assert compared == len(original)  # every base tensor (lm_head is tied to the embeddings)

    saved = load_file(run.out / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)  # the adapter only, no merged or base weights
    lora_b = [tensor for key, tensor in saved.items() if "lora_B" in key]
    assert len(lora_b) == 2 * 30 and all(tensor.abs().sum() > 0 for tensor in lora_b)  # PEFT starts B at zero


@pytest.mark.slow
def test_the_adapter_loads_with_peft_and_generates(run, embedded_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (
        json.loads((run.out / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_dir), run.out)
    tokenizer = AutoTokenizer.from_pretrained(run.out)
    messages = [
        {"role": "user", "content": "A 40-year-old has fever and crackles. Most likely? A) pneumonia B) asthma"}
    ]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        adapted = model(**inputs).logits
        with model.disable_adapter():
            plain = model(**inputs).logits
    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert not torch.allclose(adapted, plain)  # the adapter changes the model


@pytest.mark.slow
def test_the_card_pins_the_dataset_tag_and_commit(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run.out / "README.md")
    assert card.data.datasets == [REPO]
    assert (card.data.base_model, card.data.library_name, card.data.license) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft",
        "apache-2.0",
    )
    assert {"nanoflux", "lora", "sft", "trl"} <= set(card.data.tags)
    pins = re.findall(rf"{re.escape(REPO)}@(v\d+)@([0-9a-f]{{40}})", card.text)
    assert pins and set(pins) == {("v1", run.tags["v1"])}
    assert run.tags["v1"] != RepoStore(run.config.hub_dir).resolve("dataset", REPO, "main")  # the tag, not the head
    assert "Not evaluated yet" in card.text
    assert f'PeftModel.from_pretrained(base, "{ADAPTER_REPO}")' in card.text
    assert "## Evaluation" in card.text and "model-index" not in yaml.safe_dump(card.data.to_dict())
    # The epochs actually trained, not the configured limit alone; the loss is on the answer only.
    assert "| epochs trained | 1.00 (set by max_steps 4, which overrides num_train_epochs) |" in card.text
    assert "the loss covers the assistant's answer only" in card.text and "Checked against the" in card.text
    saved = yaml.safe_load((run.out / "nanoflux_train.yaml").read_text())
    assert saved["revision"] == "v1" and saved["sft"]["max_steps"] == 4 and saved["hub_dir"] is None  # no local paths


@pytest.mark.slow
def test_a_failed_push_keeps_the_adapter_and_publish_adapter_retries_only_the_push(run, monkeypatch, no_model_loading):
    import trl

    assert "publish-adapter" in str(run.error) and str(run.out) in str(run.error)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_summary.json",
        "nanoflux_train.yaml",
    ):
        assert (run.out / name).is_file(), name
    store = RepoStore(run.models)
    assert [c.title for c in store.history("model", ADAPTER_REPO, store.resolve("model", ADAPTER_REPO, "main"))] == [
        "initial commit"
    ]

    monkeypatch.setattr(trl, "SFTTrainer", None)  # nothing is trained again
    commit = publish_adapter(run.out, ADAPTER_REPO, hub_dir=str(run.models))
    history = list(store.history("model", ADAPTER_REPO, store.resolve("model", ADAPTER_REPO, "main")))
    assert [c.sha for c in history[:1]] == [commit] and len(history) == 2  # one commit holds everything
    files = history[0].files
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_summary.json",
        "nanoflux_train.yaml",
        "tokenizer.json",
    } <= set(files)
    assert "training_args.bin" not in files  # a pickle stays local
    for name in ("adapter_model.safetensors", "README.md"):
        assert store.read_file("model", ADAPTER_REPO, commit, name) == (run.out / name).read_bytes()


@pytest.mark.slow
def test_a_run_pushes_to_a_local_adapter_repo_in_one_commit_and_evaluates(tmp_path, embedded_model_dir):
    tags = make_dataset_repo(tmp_path / "hub")
    config = _config(
        tmp_path / "hub",
        tmp_path / "adapter",
        "--sft.max_steps",
        "2",
        "--eval_split",
        "test",
        "--push_to_hub",
        ADAPTER_REPO,
        "--adapter_hub_dir",
        str(tmp_path / "models"),
    )
    summary = main(config)
    assert summary["steps"] == 2 and summary["dataset"]["commit"] == tags["v1"]
    assert summary["dataset"]["eval_rows"] == 2 and math.isfinite(summary["eval_loss"])
    store = RepoStore(tmp_path / "models")
    head = store.resolve("model", ADAPTER_REPO, "main")
    assert head == summary["pushed_commit"] and len(list(store.history("model", ADAPTER_REPO, head))) == 2
    card = store.read_file("model", ADAPTER_REPO, head, "README.md").decode()
    assert f"{REPO}@v1@{tags['v1']}" in card and "Loss on the eval split" in card


@pytest.mark.slow
def test_a_run_killed_part_way_resumes_from_its_last_checkpoint(tmp_path, embedded_model_dir, monkeypatch):
    import trl

    make_dataset_repo(tmp_path / "hub")
    config = _config(
        tmp_path / "hub", tmp_path / "adapter", "--sft.save_strategy", "steps", "--sft.save_steps", "2"
    )  # 4 steps, a checkpoint every 2
    steps = []
    original = trl.SFTTrainer.training_step

    def crash_at_step_3(self, *args, **kwargs):
        steps.append(self.state.global_step + 1)
        if self.state.global_step == 2:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        main(config)
    assert (tmp_path / "adapter" / "checkpoint-2").is_dir() and not (
        tmp_path / "adapter" / "adapter_config.json"
    ).exists()

    steps.clear()
    monkeypatch.setattr(
        trl.SFTTrainer,
        "training_step",
        lambda self, *a, **k: steps.append(self.state.global_step + 1) or original(self, *a, **k),
    )
    summary = main(config)
    assert steps == [3, 4]  # only what the checkpoint did not hold was trained again
    assert (summary["resumed_from"], summary["steps"]) == ("checkpoint-2", 4)
    assert [step for step, _ in summary["loss"]["curve"]] == [1, 2, 3, 4]  # the log history came back with the state
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_full_benchmark_baseline_trains_on_a_benchmark_training_split(tmp_path, embedded_model_dir):
    from trainer.baseline import evaluation_row_keys
    from trainer.evaluation.config import build_eval_config

    # A MedQA-format training file that is no evaluation's test file (the local evaluation scores medqa.jsonl).
    train_file = tmp_path / "medqa_train.jsonl"
    rows = [json.loads(line) for line in (FIXTURES / "medqa.jsonl").read_text().splitlines() if line.strip()]
    train_file.write_text(
        "".join(
            json.dumps({**row, "question": f"(Training case {i}) {row['question']}"}) + "\n"
            for i, row in enumerate(rows)
        )
    )
    bench = "{format: medqa, path: " + str(train_file) + ", split: train}"
    config = build_train_config(
        LOCAL_RECIPE, ["--benchmark", bench, "--output_dir", str(tmp_path / "baseline"), "--sft.max_steps", "5"]
    )
    summary = main(config)

    data = summary["dataset"]
    assert (data["benchmark"], data["split"], data["commit"], summary["steps"], data["rows"]) == (
        "medqa",
        "train",
        "local",
        5,
        len(rows),
    )
    tests = len(evaluation_row_keys(build_eval_config(LOCAL_EVAL)))
    assert (data["targets"], data["rows_with_reasoning"], data["prompt"], data["test_rows_checked"]) == (
        "answer_only",
        0,
        "reasoning",
        tests,
    )
    assert summary["compute"]["epochs_trained"] == pytest.approx(10 / 8)  # 5 steps x 2 rows over 8 rows
    card = (tmp_path / "baseline" / "README.md").read_text()
    assert "the full-benchmark fine-tuning baseline" in card and "Benchmark `medqa`" in card
    assert (
        "- Targets: `answer_only` (0 of 8 carry reasoning)" in card
        and "**Limitation:**" in card
        and "--reasoning false" in card
    )
    assert "| epochs trained | 1.25 (set by max_steps 5, which overrides num_train_epochs) |" in card


def test_the_paper_recipes_load_and_chain_one_step_into_the_next():
    from builder.config import build_config
    from trainer.evaluation.config import build_eval_config

    paper = ROOT / "configs" / "paper"
    build = build_config(paper / "medical-build.yaml", [])
    train = build_train_config(paper / "medical-train.yaml")
    baseline = build_train_config(paper / "medical-baseline.yaml")
    evaluation = build_eval_config(paper / "medical-eval.yaml")

    assert (build.push_to_hub, build.curation.target_size, build.curation.quality_levels) == (
        train.dataset_name,
        200,
        [4],
    )
    assert (train.revision, train.model, baseline.model, evaluation.model) == (
        "v1",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-4B",
    )
    assert train.lora == baseline.lora
    assert (evaluation.adapter, evaluation.baseline_adapter) == (train.push_to_hub, baseline.push_to_hub)
    assert (
        (baseline.benchmark.format, baseline.benchmark.split)
        == (evaluation.compute.baseline.format, evaluation.compute.baseline.split)
        == ("medqa", "train")
    )
    assert evaluation.compute.nanoflux_data == train.dataset_name
    # Both adapters are trained on what step 4 does not score, and asked as step 4 asks.
    assert (
        train.eval_recipe == baseline.eval_recipe == "configs/paper/medical-eval.yaml"
        and evaluation.partition == "test"
    )
    assert (
        train.enable_thinking == baseline.enable_thinking == evaluation.enable_thinking is False
        and baseline.benchmark_reasoning == evaluation.reasoning
    )
