"""LoRA training on a pinned NanoFlux dataset version: recipes, data loading (local folder and Hub), and — marked
`slow` — real runs of the packaged SmolLM2 on CPU: frozen base, trained adapter, the card's pin, the push and its retry.

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

from builder.config import ConfigError
from builder.dataset import sft_messages, to_dataset
from builder.localhub import LocalHub, RepoStore
from builder.publish import DATA_PATH, PublishError
from trainer.train import TrainConfig, TrainError, build_train_config, load_train_data, main, publish_adapter

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
LOCAL_RECIPE = ROOT / "configs" / "train" / "local.yaml"
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


def _rows(start: int, n: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        question = f"Case {i}: a {30 + i}-year-old has fever, cough and crackles. Most likely? A) pneumonia B) asthma"
        rows.append({"id": f"r0-a{i}", "question": question, "reference_answer": "A", "version": "v1",
                     "messages": sft_messages(question, f"Step 1: fever and crackles in case {i}. Step 2: consolidation.", "A")})  # fmt: skip
    return rows


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    to_dataset(rows).to_parquet(buffer)
    return buffer.getvalue()


def make_dataset_repo(root: Path, repo: str = REPO, versions: tuple[int, ...] = (8, 12)) -> dict[str, str]:
    """A NanoFlux-like dataset repo with one tag per version (`versions` = train rows in each); {tag: commit}."""
    store = RepoStore(root)
    store.create_repo("dataset", repo)
    tags = {}
    for number, n in enumerate(versions, start=1):
        files = {DATA_PATH: _parquet(_rows(0, n)), "data/test-00000-of-00001.parquet": _parquet(_rows(100, 2)), "README.md": README.encode()}
        sha = store.create_commit("dataset", repo, "main", add=files, title=f"v{number}")
        tags[f"v{number}"] = store.create_ref("dataset", repo, "tags", f"v{number}", sha)
    return tags


def _config(hub_dir: Path, output_dir: Path, *overrides: str) -> TrainConfig:
    """The local recipe, on `hub_dir`, shortened to a few steps."""
    return build_train_config(LOCAL_RECIPE, ["--hub_dir", str(hub_dir), "--output_dir", str(output_dir), "--max_steps", "4", *overrides])


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load (or convert) a model fails the test."""
    import transformers

    import builder.embedded

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(builder.embedded, "embedded_model_path", refuse)


# --- fast: recipes ---------------------------------------------------------------------------------------


def test_both_recipes_load_and_validate():
    local = build_train_config(LOCAL_RECIPE)
    assert (local.model, local.hub_dir, local.dataset_name, local.revision) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "outputs/hub", REPO, "v1")
    assert (local.lora_r, local.lora_target_modules, local.max_steps, local.per_device_train_batch_size) == (8, ["q_proj", "v_proj"], 10, 2)
    assert (local.max_length, local.bf16, local.gradient_checkpointing, local.push_to_hub) == (512, False, False, None)

    qwen = build_train_config(QWEN_RECIPE)
    assert (qwen.model, qwen.dataset_name, qwen.revision, qwen.hub_dir) == ("Qwen/Qwen3-4B", "org/nanoflux-medical", "v1", None)
    assert (qwen.lora_r, qwen.lora_alpha, qwen.lora_dropout) == (16, 32, 0.05)
    assert set(qwen.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (qwen.learning_rate, qwen.num_train_epochs, qwen.max_steps) == (1e-4, 3.0, -1)
    assert (qwen.per_device_train_batch_size, qwen.gradient_accumulation_steps, qwen.max_length) == (4, 4, 2048)
    assert (qwen.bf16, qwen.gradient_checkpointing, qwen.push_to_hub) == (True, True, "org/qwen3-4b-nanoflux-medical-lora")


def test_cli_overrides_win_and_learning_rates_may_be_written_1e_4():
    config = build_train_config(LOCAL_RECIPE, ["--learning_rate", "1e-4", "--lora_target_modules", "[q_proj, k_proj]", "--revision=v2"])
    assert (config.learning_rate, config.lora_target_modules, config.revision) == (1e-4, ["q_proj", "k_proj"], "v2")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lora_r", "0"], "lora_r: out of range (got 0). Fix: use a value >= 1"),
        (["--learning_rat", "1e-4"], "learning_rat: unknown field (got '1e-4'). Fix: did you mean `learning_rate`?"),
        (["--max_steps", "ten"], "max_steps: expected int (got 'ten')"),
        (["--max_steps", "0"], "max_steps: out of range (got 0). Fix: use -1"),
        (["--lora_dropout", "1.5"], "lora_dropout: out of range (got 1.5)"),
        (["--bf16", "maybe"], "bf16: expected bool (got 'maybe')"),
        (["--push_to_hub", "just-a-name"], "push_to_hub: not a repo id (got 'just-a-name'). Fix: write it as org/name"),
        (["--adapter_hub_dir", "outputs/models"], "adapter_hub_dir: set without push_to_hub"),
        (["--lora_target_modules", "[]"], "lora_target_modules: needs module names"),
    ],
)
def test_bad_values_fail_naming_the_field_the_value_and_the_fix(args, message):
    with pytest.raises(ConfigError) as err:
        build_train_config(LOCAL_RECIPE, args)
    assert message in str(err.value)


def test_unknown_key_in_a_recipe_file_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(LOCAL_RECIPE.read_text()), "lora_rank": 8}))
    with pytest.raises(ConfigError, match=r"lora_rank: unknown field \(got 8\)\. Fix: did you mean `lora_r`\?"):
        build_train_config(recipe)


# --- fast: data ------------------------------------------------------------------------------------------


def test_a_version_loads_from_the_local_folder_at_its_tagged_commit(tmp_path):
    tags = make_dataset_repo(tmp_path / "hub")
    config = _config(tmp_path / "hub", tmp_path / "out", "--eval_split", "test")
    train, evaluation, commit = load_train_data(config)
    assert commit == tags["v1"] != RepoStore(tmp_path / "hub").resolve("dataset", REPO, "main")
    assert (len(train), len(evaluation), train.column_names) == (8, 2, ["messages"])
    assert train[0]["messages"][0]["role"] == "user" and train[0]["messages"][1]["role"] == "assistant"


def test_a_version_loads_from_the_hub_at_its_tagged_commit(tmp_path, hub_endpoint):
    tags = make_dataset_repo(tmp_path / "hub")
    with LocalHub(tmp_path / "hub") as hub:
        hub_endpoint(hub.url)
        config = build_train_config(LOCAL_RECIPE, ["--hub_dir", "null", "--revision", "v2"])
        train, evaluation, commit = load_train_data(config)
        assert (commit, len(train), evaluation) == (tags["v2"], 12, None)
        with pytest.raises(TrainError, match=r"revision: local/nanoflux-medical has no version 'v7' \(versions: v1, v2\)"):
            load_train_data(build_train_config(LOCAL_RECIPE, ["--hub_dir", "null", "--revision", "v7"]))


def test_a_missing_revision_fails_before_any_model_is_loaded(tmp_path, no_model_loading):
    make_dataset_repo(tmp_path / "hub")
    with pytest.raises(TrainError) as err:
        main(_config(tmp_path / "hub", tmp_path / "out", "--revision", "v9"))
    assert str(err.value) == "revision: local/nanoflux-medical has no version 'v9' (versions: v1, v2). Fix: pass --revision with one of those"
    assert not (tmp_path / "out").exists()


def test_bf16_without_a_gpu_fails_with_the_fix(tmp_path, no_model_loading):
    import torch

    if torch.accelerator.is_available():
        pytest.skip("this machine can train in bf16")
    make_dataset_repo(tmp_path / "hub")
    with pytest.raises(TrainError, match=r"bf16: no GPU or other accelerator found \(got True\)\. Fix: pass --bf16 false"):
        main(_config(tmp_path / "hub", tmp_path / "out", "--bf16", "true"))


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
    with pytest.raises(TrainError, match=r"revision: local/nanoflux-medical@v1 \(commit [0-9a-f]{12}\) has no rows to train on"):
        main(_config(tmp_path / "hub", tmp_path / "out"))


# --- slow: real training on the packaged SmolLM2 ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_model_dir):
    """One 4-step run on v1 that pushes to a local adapter repo whose commit endpoint fails: the adapter must stay
    on disk. The SFTTrainer is captured to inspect the trained model in memory."""
    import trl

    tmp = tmp_path_factory.mktemp("train")
    tags = make_dataset_repo(tmp / "hub")
    config = _config(tmp / "hub", tmp / "adapter", "--push_to_hub", ADAPTER_REPO, "--adapter_hub_dir", str(tmp / "models"))
    trainers = []

    class CapturedSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    start = LocalHub.start

    def start_failing_commits(hub):  # every LocalHub the push starts answers its commit with a 500
        started = start(hub)
        started.fail_next("POST", COMMIT_PATH, status=500)
        return started

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, "SFTTrainer", CapturedSFTTrainer)
        mp.setattr(LocalHub, "start", start_failing_commits)
        with pytest.raises(PublishError) as err:
            main(config)
    (trainer,) = trainers
    summary = json.loads((tmp / "adapter" / "training_summary.json").read_text())
    return SimpleNamespace(config=config, out=tmp / "adapter", models=tmp / "models", tags=tags, trainer=trainer, error=err.value, summary=summary)


@pytest.mark.slow
def test_training_logs_a_finite_loss_and_counts_steps_and_tokens(run):
    summary = run.summary
    assert summary["steps"] == 4 and summary["dataset"]["rows"] == 8
    curve = [loss for _, loss in summary["loss"]["curve"]]
    assert len(curve) == 4 and all(math.isfinite(loss) for loss in curve)
    assert (summary["loss"]["first"], summary["loss"]["last"], summary["loss"]["min"]) == (curve[0], curve[-1], min(curve))
    # Padding excluded: more than one short conversation per step, less than full batches of max_length.
    assert 4 * 2 * 20 < summary["train_tokens"] < 4 * 2 * 512
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["wall_time_s"] > 0
    assert summary["hyperparameters"]["lora_r"] == 8 and summary["hyperparameters"]["precision"] == "fp32"


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
        assert torch.equal(param.detach().cpu(), original[name.removeprefix("base_model.model.").replace(".base_layer", "")]), name
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

    assert json.loads((run.out / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_dir), run.out)
    tokenizer = AutoTokenizer.from_pretrained(run.out)
    messages = [{"role": "user", "content": "A 40-year-old has fever and crackles. Most likely? A) pneumonia B) asthma"}]
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
    assert (card.data.base_model, card.data.library_name, card.data.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "peft", "apache-2.0")
    assert {"nanoflux", "lora", "sft", "trl"} <= set(card.data.tags)
    pins = re.findall(rf"{re.escape(REPO)}@(v\d+)@([0-9a-f]{{40}})", card.text)
    assert pins and set(pins) == {("v1", run.tags["v1"])}
    assert run.tags["v1"] != RepoStore(run.config.hub_dir).resolve("dataset", REPO, "main")  # the tag, not the head
    assert "Not evaluated yet" in card.text
    assert f'PeftModel.from_pretrained(base, "{ADAPTER_REPO}")' in card.text
    assert "## Evaluation" in card.text and "model-index" not in yaml.safe_dump(card.data.to_dict())
    saved = yaml.safe_load((run.out / "nanoflux_train.yaml").read_text())
    assert saved["revision"] == "v1" and saved["max_steps"] == 4 and saved["hub_dir"] is None  # no local paths


@pytest.mark.slow
def test_a_failed_push_keeps_the_adapter_and_publish_adapter_retries_only_the_push(run, monkeypatch, no_model_loading):
    import trl

    assert "publish-adapter" in str(run.error) and str(run.out) in str(run.error)
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "training_summary.json", "nanoflux_train.yaml"):
        assert (run.out / name).is_file(), name
    store = RepoStore(run.models)
    assert [c.title for c in store.history("model", ADAPTER_REPO, store.resolve("model", ADAPTER_REPO, "main"))] == ["initial commit"]

    monkeypatch.setattr(trl, "SFTTrainer", None)  # nothing is trained again
    commit = publish_adapter(run.out, ADAPTER_REPO, hub_dir=str(run.models))
    history = list(store.history("model", ADAPTER_REPO, store.resolve("model", ADAPTER_REPO, "main")))
    assert [c.sha for c in history[:1]] == [commit] and len(history) == 2  # one commit holds everything
    files = history[0].files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training_summary.json", "nanoflux_train.yaml", "tokenizer.json"} <= set(files)
    assert "training_args.bin" not in files  # a pickle stays local
    for name in ("adapter_model.safetensors", "README.md"):
        assert store.read_file("model", ADAPTER_REPO, commit, name) == (run.out / name).read_bytes()


@pytest.mark.slow
def test_a_run_pushes_to_a_local_adapter_repo_in_one_commit_and_evaluates(tmp_path, embedded_model_dir):
    tags = make_dataset_repo(tmp_path / "hub")
    config = _config(tmp_path / "hub", tmp_path / "adapter", "--max_steps", "2", "--eval_split", "test",
                     "--push_to_hub", ADAPTER_REPO, "--adapter_hub_dir", str(tmp_path / "models"))  # fmt: skip
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
    config = _config(tmp_path / "hub", tmp_path / "adapter", "--save_steps", "2")  # 4 steps, a checkpoint every 2
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
    assert (tmp_path / "adapter" / "checkpoint-2").is_dir() and not (tmp_path / "adapter" / "adapter_config.json").exists()

    steps.clear()
    monkeypatch.setattr(trl.SFTTrainer, "training_step", lambda self, *a, **k: steps.append(self.state.global_step + 1) or original(self, *a, **k))
    summary = main(config)
    assert steps == [3, 4]  # only what the checkpoint did not hold was trained again
    assert (summary["resumed_from"], summary["steps"]) == ("checkpoint-2", 4)
    assert [step for step, _ in summary["loss"]["curve"]] == [1, 2, 3, 4]  # the log history came back with the state
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_full_benchmark_baseline_trains_on_a_benchmark_training_split(tmp_path, embedded_model_dir):
    bench = "{format: medqa, path: " + str(ROOT / "tests/fixtures/benchmarks/medqa.jsonl") + ", split: train}"
    config = build_train_config(LOCAL_RECIPE, ["--benchmark", bench, "--output_dir", str(tmp_path / "baseline"), "--max_steps", "2"])
    summary = main(config)

    data = summary["dataset"]
    assert (data["benchmark"], data["split"], data["commit"], summary["steps"]) == ("medqa", "train", "local", 2)
    assert data["rows"] == sum(1 for line in (ROOT / "tests/fixtures/benchmarks/medqa.jsonl").read_text().splitlines() if line.strip())
    card = (tmp_path / "baseline" / "README.md").read_text()
    assert "the full-benchmark fine-tuning baseline" in card and "Benchmark `medqa`" in card


def test_the_paper_recipes_load_and_chain_one_step_into_the_next():
    from builder.config import build_config
    from trainer.evaluate import build_eval_config

    paper = ROOT / "configs" / "paper"
    build = build_config(paper / "medical-build.yaml", [])
    train = build_train_config(paper / "medical-train.yaml")
    baseline = build_train_config(paper / "medical-baseline.yaml")
    evaluation = build_eval_config(paper / "medical-eval.yaml")

    assert (build.push_to_hub, build.target_size, build.curation.quality_levels) == (train.dataset_name, 200, [4])
    assert (train.revision, train.model, baseline.model, evaluation.model) == ("v1", "Qwen/Qwen3-4B", "Qwen/Qwen3-4B", "Qwen/Qwen3-4B")
    assert {k: v for k, v in vars(train).items() if k.startswith("lora_")} == {k: v for k, v in vars(baseline).items() if k.startswith("lora_")}
    assert (evaluation.adapter, evaluation.baseline_adapter) == (train.push_to_hub, baseline.push_to_hub)
    assert (baseline.benchmark.format, baseline.benchmark.split) == (evaluation.compute.baseline.format, evaluation.compute.baseline.split) == ("medqa", "train")
    assert evaluation.compute.nanoflux_data == train.dataset_name
