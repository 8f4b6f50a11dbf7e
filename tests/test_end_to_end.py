"""The whole loop on the embedded default, through the `nanoflux` command: build -> publish (local repository
folder) -> train -> eval -> the adapter card carries the scores. Slow (a real 135M model on CPU), still run by CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from localhub import RepoStore
from nanoflux.cli import main as nanoflux

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]

ROOT = Path(__file__).resolve().parent.parent
REPO = "local/nanoflux-medical"


def test_build_publish_train_eval_and_the_card_carries_the_scores(tmp_path, embedded_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name repository paths (fixtures, prompts)
    hub, adapter, evaluation = tmp_path / "hub", tmp_path / "adapter", tmp_path / "eval"

    # The tiny Judge rarely validates a question; keeping every question it judged (require_valid false) makes
    # sure v1 has rows to train on. Nothing else about the local recipe changes.
    nanoflux(
        [
            "build",
            "--config",
            "configs/local.yaml",
            "--rounds",
            "1",
            "--curation.require_valid",
            "false",
            "--output_dir",
            str(tmp_path / "build"),
            "--push_to_hub",
            REPO,
            "--hub_dir",
            str(hub),
        ]
    )
    store = RepoStore(hub)
    v1 = store.resolve("dataset", REPO, "v1")
    kept = json.loads((tmp_path / "build" / "summary.json").read_text())["kept"]
    assert kept > 0

    nanoflux(
        [
            "train",
            "--config",
            "configs/train/local.yaml",
            "--hub_dir",
            str(hub),
            "--sft.max_steps",
            "2",
            "--output_dir",
            str(adapter),
        ]
    )
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["dataset"]["pinned"] == f"{REPO}@v1@{v1}" and summary["dataset"]["rows"] == kept

    nanoflux(
        [
            "eval",
            "--config",
            "configs/eval/local.yaml",
            "--adapter",
            str(adapter),
            "--limit",
            "2",
            "--benchmarks",
            "[{format: medqa, path: samples/benchmarks/medqa.jsonl, split: test}]",
            "--compute",
            "null",
            "--output_dir",
            str(evaluation),
        ]
    )
    results = json.loads((evaluation / "results.json").read_text())
    assert results["variants"] == ["base", "adapter"]

    card = (adapter / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    (entry,) = metadata["model-index"]
    metrics = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in entry["results"]}
    # A local benchmark file is named by its benchmark, never by its path (the card is pushed as it is).
    title = results["benchmarks"][0]["title"]
    assert metrics == {f"{title} (a local copy)": round(results["results"]["medqa"]["adapter"]["accuracy"], 4)}
    assert f"{REPO}@v1@{v1}" in card
