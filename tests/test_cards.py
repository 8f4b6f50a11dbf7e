"""The dataset and adapter cards say only what the run recorded, and row ids are stable and unique across versions.

One scripted build is crashed part-way and resumed, then published as v1 of a repo in a local repository folder;
two more builds (another recipe, another seed) publish v2 and v3. Every statement on the cards is checked against the
run's records (runs.json, summary.json, config.yaml, the versions' rows); the card metadata is parsed with the Hub's
own card classes; no local path reaches a pushed card. The adapter part (slow) trains the packaged SmolLM2 for two
epochs on v2 and checks its card, and its `model-index` once evaluation results are written and the adapter pushed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard import metadata_load

from builder import build, runfolder
from builder.config import BuildConfig, build_config
from builder.dataset import row_id
from localhub import RepoStore, load_version
from nanoflux import runfolder as kernel_runfolder
from nanoflux.journal import scan
from nanoflux.recipe import from_dict
from tests import scripted_roles
from tests.tgi_server import ScriptedTGI

pytestmark = [
    pytest.mark.usefixtures("allow_loopback_offline"),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
REPO = "org/nanoflux-medical"

# A third build's material: two more capabilities, four new questions, all valid L4 that the Defender fails.
THIRD = {
    ("rheumatology", 2): (
        "A woman has symmetric small-joint arthritis, morning stiffness over an hour and anti-CCP antibodies. Which"
        " drug is first line?"
    ),
    (
        "rheumatology",
        3,
    ): "A man with gout and stage 4 kidney disease has a flare; which urate-lowering drug needs no renal dose cut?",
    (
        "hematology",
        2,
    ): "A patient on heparin for five days has platelets falling by 60% and a new thrombosis. What is the next step?",
    (
        "hematology",
        3,
    ): "A smear shows schistocytes, low platelets, fever and confusion in a young woman. Which enzyme is deficient?",
}
THIRD_OPTIONS = ["option one", "option two", "option three", "option four", "option five"]


def respond(body: dict) -> str:
    """scripted_roles' script, plus the third build's questions."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "You are the Attacker" in system:
        skill, level = (
            re.search(r"Target reasoning skill: (.*)", user).group(1).strip(),
            int(re.search(r"Complexity: (\d)", user).group(1)),
        )
        if (skill, level) in THIRD:
            return json.dumps(
                {
                    "question": THIRD[skill, level],
                    "options": THIRD_OPTIONS,
                    "explanation": "1. Recall. 2. Apply.",
                    "reference_answer": "C",
                }
            )
    elif any(text in user for text in THIRD.values()):
        if "You are the Defender" in system:
            return json.dumps({"reasoning": "Step by step.", "answer": "B"})
        if "REFERENCE ANSWER" not in user:
            return json.dumps({"reasoning": "Solved blind.", "program": "", "answer": "C"})
        scores = {"clinical_accuracy": 4, "multi_hop": 4, "annotation": 4}
        return json.dumps(
            {
                "rationale": "Sound.",
                "question_valid": True,
                "reference_correct": True,
                "own_error": "",
                "defender_correct": False,
                **scores,
                "complexity": 3,
            }
        )
    return scripted_roles.respond(body)


def _config(url: str, output_dir: Path, **changes) -> BuildConfig:
    changes.setdefault("decontamination", {"enabled": False})  # offline: no benchmark to check against here
    config = from_dict(BuildConfig, scripted_roles.recipe(url, str(output_dir), **changes))
    config.validate()
    return config


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _card(hub: Path, revision: str) -> str:
    store = RepoStore(hub)
    return store.read_file("dataset", REPO, store.resolve("dataset", REPO, revision), "README.md").decode()


def _local_paths(tmp: Path) -> list[str]:
    """What no pushed card may contain: this machine's paths, the local output and fixture folders."""
    return [str(tmp), str(ROOT), "outputs/", "samples/", "tests/fixtures", "/tmp/", "/root/"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """v1 from a crashed-and-resumed build, v2 from another recipe, v3 from a third recipe with another seed."""
    tmp = tmp_path_factory.mktemp("cards")
    hub = tmp / "hub"
    with ScriptedTGI(responder=respond) as server, pytest.MonkeyPatch.context() as mp:
        target = {"push_to_hub": REPO, "hub_dir": str(hub)}
        # Build 1 crashes after 10 calls (its run record is never finished), then resumes and publishes v1.
        original, sent = build.Caller._call, []

        async def crash_after_ten(self, key, player, request):
            response = await original(self, key, player, request)
            sent.append(key)
            if len(sent) == 10:
                raise RuntimeError("simulated crash")
            return response

        mp.setattr(build.Caller, "_call", crash_after_ten)
        with pytest.raises(RuntimeError, match="simulated crash"):
            build.main(_config(server.url, tmp / "b1", **target))
        mp.setattr(build.Caller, "_call", original)
        first = build.main(_config(server.url, tmp / "b1", **target))
        # The same recipe built in one go: a resumed build must give the very same ids.
        reference = build.main(_config(server.url, tmp / "b1-reference"))
        second = build.main(
            _config(
                server.url,
                tmp / "b2",
                capabilities=[*scripted_roles.LATER_CAPABILITIES, "cardiology"],
                rounds=1,
                attacks_per_round=6,
                **target,
            )
        )
        third = build.main(
            _config(
                server.url,
                tmp / "b3",
                capabilities=["rheumatology", "hematology"],
                rounds=1,
                attacks_per_round=4,
                seed=7,
                **target,
            )
        )
        # The reproduce command of v1, run as the card gives it (in a scratch folder; the server is still up).
        mp.chdir(tmp)
        reproduced = _run_reproduce(_card(hub, "v1"), hub)
    return SimpleNamespace(
        tmp=tmp,
        hub=hub,
        builds=[first, second, third],
        reference=reference,
        reproduced=reproduced,
        versions={v: load_version(hub, REPO, v).to_list() for v in ("v1", "v2", "v3")},
    )


def _run_reproduce(card: str, hub: Path) -> Path:
    """Run the card's Reproduce commands exactly (HUB_DIR: this repo's folder); returns the rebuilt output folder."""
    block = card.split("## Reproduce")[1].split("```bash\n")[1].split("```")[0]
    commands = [line for line in block.splitlines() if line.strip()]
    output_dir = None
    for command in commands:
        args = shlex.split(command.replace("HUB_DIR", str(hub)))
        if args[0] == "python":
            subprocess.run(
                [sys.executable, *args[1:]],
                check=True,
                cwd=Path.cwd(),
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            )
        else:
            assert args[:2] == ["nanoflux", "build"] and "--push_to_hub" not in args, command
            config = build_config(
                args[args.index("--config") + 1],
                [a for i, a in enumerate(args[2:], 2) if a != "--config" and args[i - 1] != "--config"],
            )
            assert config.push_to_hub is None  # the shipped config publishes nothing
            build.main(config)
            output_dir = Path.cwd() / config.output_dir
    return output_dir


# --- ids -------------------------------------------------------------------------------------------------


def test_ids_are_unique_across_all_versions_and_a_hash_of_question_and_recipe(repo):
    v1, v2, v3 = (repo.versions[v] for v in ("v1", "v2", "v3"))
    assert len(v1) == 2 and len(v2) == 6 and len(v3) == 10
    for rows in (v1, v2, v3):
        assert len({r["id"] for r in rows}) == len(rows)
    by_id: dict[str, str] = {}
    for row in v1 + v2 + v3:
        assert by_id.setdefault(row["id"], row["question"]) == row["question"], row["id"]  # one id, one question
    assert len(by_id) == len({r["question"] for r in v1 + v2 + v3}) == 10
    # Each id is the hash of its question (and options) with the recipe fingerprint of the build that made it.
    fingerprints = {
        f"v{n}": kernel_runfolder.read_json(repo.tmp / f"b{n}" / "run.json")["fingerprint"] for n in (1, 2, 3)
    }
    assert len(set(fingerprints.values())) == 3
    for row in v3:
        assert row["id"] == row_id(row["question"], fingerprints[row["version"]], row["options"]), row
        assert isinstance(row["round"], int) and isinstance(row["attack_index"], int)  # kept as their own columns


def test_a_resumed_build_keeps_the_ids_of_the_same_recipe_built_in_one_go(repo):
    resumed = _rows(repo.tmp / "b1" / "pool.jsonl")
    one_go = _rows(repo.tmp / "b1-reference" / "pool.jsonl")
    assert [(r["id"], r["question"]) for r in resumed] == [(r["id"], r["question"]) for r in one_go]
    assert len({r["id"] for r in resumed}) == len(resumed) == 8  # the two repeated questions still get their own ids
    assert [r["id"] for r in repo.versions["v1"]] == [r["id"] for r in _rows(repo.tmp / "b1" / "curated.jsonl")]


def test_the_reproduce_command_rebuilds_v1_without_publishing(repo):
    rebuilt = _rows(repo.reproduced / "curated.jsonl")
    assert [(r["id"], r["question"], r["reference_answer"]) for r in rebuilt] == [
        (r["id"], r["question"], r["reference_answer"]) for r in repo.versions["v1"]
    ]
    assert [t for t in RepoStore(repo.hub).refs("dataset", REPO)["tags"]] == [
        "v1",
        "v2",
        "v3",
    ]  # nothing new was published


# --- the dataset card ------------------------------------------------------------------------------------


def test_the_resumed_builds_card_adds_up_every_run(repo):
    runs = runfolder.run_history(repo.tmp / "b1")
    assert [run["interrupted"] for run in runs] == [True, False]
    journal = list(scan(repo.tmp / "b1" / "calls.jsonl").records.values())
    # Every journaled call was sent by exactly one run: the crashed run's from the journal, the resume's from its
    # counters.
    assert sum(run["calls_sent"] for run in runs) == len(journal) == 28 and runs[0]["calls_sent"] >= 10
    for kind in ("prompt", "completion"):
        assert sum(run["tokens"][kind] for run in runs) == sum(r[f"{kind}_tokens"] for r in journal) > 0
    summary = json.loads((repo.tmp / "b1" / "summary.json").read_text())
    total = summary["build"]
    assert (
        total["wall_time_s"] == pytest.approx(sum(run["wall_time_s"] for run in runs), abs=0.011)
        and total["wall_time_s"] >= summary["wall_time_s"]  # the killed run may have lasted less than the rounding
        and total["runs"] == len(runs) == 2
    )

    card = _card(repo.hub, "v1")
    per_run = " s + ".join(str(run["wall_time_s"]) for run in runs)
    assert (
        f"- Build wall time: {total['wall_time_s']} s over 2 runs ({per_run} s; 1 interrupted, timed to its last"
        " journaled call;" in card
    )
    assert (
        f"- Calls sent: 28, with {total['tokens']['prompt']} prompt and {total['tokens']['completion']} completion"
        " tokens" in card
    )
    assert f"| 8 | 8 | 6 | 4 | 3 | {summary['kept']} | 2 |" in card
    for role, tokens in summary["tokens"].items():
        assert f"{role} {tokens['prompt']} / {tokens['completion']}" in card


def test_curation_sentences_follow_the_settings_as_they_were(repo, tmp_path):
    card = _card(repo.hub, "v1")
    config = yaml.safe_load((repo.tmp / "b1" / "config.yaml").read_text())
    assert config["curation"]["require_valid"] is True
    assert "only questions the Judge validated are kept" in card and "whether or not the Judge validated" not in card
    assert (
        "at reasoning-quality level L4 and any judge-rated complexity, ranked questions the Defender failed first"
        in card
    )
    assert f"at most {config['curation']['target_size']} rows per version" in card

    # The same release rendered for a build that did not require validity: no sentence claims it did.
    from builder import dataset_card, publish

    loose = {**config, "curation": {**config["curation"], "require_valid": False, "prefer_defender_failed": False}}
    plan = publish.plan_release(loose, _rows(repo.tmp / "b1" / "curated.jsonl"), [], "v1")
    text = dataset_card.render(
        REPO, "v1", loose, json.loads((repo.tmp / "b1" / "summary.json").read_text()), plan, publish.Previous()
    )
    assert (
        "only questions the Judge validated" not in text
        and "whether or not the Judge validated them (`require_valid: false`" in text
    )
    assert "ranked in build order, whether or not the Defender failed" in text


def test_changelog_has_one_line_per_fact_and_every_version(repo):
    card = _card(repo.hub, "v3")
    changelog = card.split("## Changelog")[1].split("## Sample")[0]
    assert [line for line in changelog.splitlines() if line.startswith("### ")] == ["### v3", "### v2", "### v1"]
    sections = {
        s.split("\n", 1)[0]: [line for line in s.splitlines() if line.startswith("- ")]
        for s in changelog.split("### ")[1:]
    }
    assert sections["v1"] == ["- 2 new rows, 2 in all; first version"]
    assert (
        sections["v2"][0].startswith("- 4 new rows, 6 in all; builds on v1 (commit ")
        and "- kept from v1: 2 of 2 rows" in sections["v2"]
    )
    assert sections["v3"][0].startswith("- 4 new rows, 10 in all; builds on v2 (commit ")
    assert "- kept from v2: 6 of 6 rows (by first version, v1: 2, v2: 4)" in sections["v3"]
    recipe_line = next(line for line in sections["v3"] if line.startswith("- recipe changes since v2: "))
    assert "seed: 0 -> 7" in recipe_line and "output_dir" not in recipe_line and "push_to_hub" not in recipe_line
    lines = [line for lines in sections.values() for line in lines]
    assert len(lines) == len(set(lines))
    numbers = [re.sub(r"\d+", "N", line) for line in sections["v3"]]
    assert len(numbers) == len(set(numbers))  # no fact stated twice in other words
    # The versions' own records say the same.
    provenance = json.loads(
        RepoStore(repo.hub).read_file(
            "dataset", REPO, RepoStore(repo.hub).resolve("dataset", REPO, "v3"), "provenance.json"
        )
    )
    assert {v: ["- " + line for line in lines] for v, lines in provenance["changelog"].items()} == sections


def test_reproduce_and_publish_commands_pin_this_version_and_carry_every_flag(repo):
    for number, version in enumerate(("v1", "v2", "v3"), 1):
        card = _card(repo.hub, version)
        section = card.split("## Reproduce")[1].split("## Decontamination")[0]
        seed = yaml.safe_load((repo.tmp / f"b{number}" / "config.yaml").read_text())["seed"]
        assert (
            f"nanoflux build --config nanoflux-medical-{version}/nanoflux_config.yaml --seed {seed} --output_dir"
            f" nanoflux-medical-{version}/build" in section
        )
        assert f'checkout("dataset", "{REPO}", "{version}", "nanoflux-medical-{version}")' in section
        assert f"nanoflux publish nanoflux-medical-{version}/build --repo_id {REPO} --hub_dir HUB_DIR" in section
        assert "--push_to_hub" not in section.split("```bash")[1].split("```")[0]  # rebuilding never publishes
        if version != "v1":  # built with --push_to_hub: the previous version was in its novelty bank
            earlier = f"v{number - 1}"
            assert (
                f"--novelty.bank nanoflux-medical-{version}-novelty/data/train-00000-of-00001.parquet" in section
                and f'"{earlier}", "nanoflux-medical-{version}-novelty")' in section
            )


def test_dataset_cards_parse_with_the_hubs_card_class_and_carry_no_local_path(repo):
    for version, rows in repo.versions.items():
        text = _card(repo.hub, version)
        card = DatasetCard(text)
        assert card.data.pretty_name == "NanoFlux medical reasoning" and card.data.license == "apache-2.0"
        assert (
            card.data.size_categories == ["n<1K"]
            and card.data.configs[0]["data_files"][0]["path"] == "data/train-*.parquet"
        )
        assert f"This is version **{version}** with **{len(rows)}** rows" in text
        for path in _local_paths(repo.tmp):
            assert path not in text, (version, path)
        config = (
            RepoStore(repo.hub)
            .read_file("dataset", REPO, RepoStore(repo.hub).resolve("dataset", REPO, version), "nanoflux_config.yaml")
            .decode()
        )
        assert str(repo.tmp) not in config and yaml.safe_load(config)["push_to_hub"] is None


# --- the adapter card (slow: trains the packaged SmolLM2 for two epochs) --------------------------------------


@pytest.fixture(scope="module")
def adapter(repo, tmp_path_factory, embedded_model_dir):
    from trainer.train import main
    from trainer.train_config import build_train_config

    tmp = tmp_path_factory.mktemp("adapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the local recipe's evaluation fixtures
        config = build_train_config(
            ROOT / "configs" / "train" / "local.yaml",
            [
                "--dataset_name",
                REPO,
                "--revision",
                "v2",
                "--hub_dir",
                str(repo.hub),
                "--output_dir",
                str(tmp / "adapter"),
                "--sft.num_train_epochs",
                "2",
                "--sft.max_steps",
                "-1",
                "--sft.per_device_train_batch_size",
                "3",
                "--sft.max_length",
                "256",
                "--eval_recipe",
                "null",
            ],
        )
        summary = main(config)
    return SimpleNamespace(tmp=tmp, out=tmp / "adapter", summary=summary)


def _results(adapter_dir: Path) -> dict:
    """Evaluation results as `nanoflux eval` writes them for the local recipe: local benchmark files, a local
    adapter."""
    from nanoflux.scoring import paired_comparisons, score

    flags = {"base": [True, False, False, True], "adapter": [True, True, False, True]}
    details = {v: [{"id": str(i), "correct": c} for i, c in enumerate(f)] for v, f in flags.items()}
    bench = {
        "name": "medqa",
        "title": "MedQA (USMLE, 4 options)",
        "format": "medqa",
        "kind": "choice",
        "path": "samples/benchmarks/medqa.jsonl",
        "subset": None,
        "split": "test",
        "revision": None,
        "rows": 4,
        "multimedqa": True,
        "scoring": "letter",
        "selection": {},
    }
    return {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "adapter": str(adapter_dir),
        "baseline_adapter": None,
        "variants": ["base", "adapter"],
        "partition": "test",
        "benchmarks": [bench],
        "results": {"medqa": {v: score(f, 0) for v, f in flags.items()}},
        "paired": {"medqa": paired_comparisons(details)},
        "aggregates": {},
        "generation": {"max_new_tokens": 64, "batch_size": 4, "reasoning": False, "dtype": "float32", "device": "cpu"},
    }


@pytest.mark.slow
def test_the_adapter_card_states_what_training_recorded(adapter):
    state = (
        json.loads(max(adapter.out.glob("checkpoint-*/trainer_state.json"), default=adapter.out / "none").read_text())
        if list(adapter.out.glob("checkpoint-*"))
        else None
    )
    summary = json.loads((adapter.out / "training_summary.json").read_text())
    assert summary["epochs"] == pytest.approx(2.0) and summary["steps"] == 4  # 6 rows, batch 3: 2 steps an epoch
    assert state is None or state["epoch"] == summary["epochs"]
    card = ModelCard.load(adapter.out / "README.md")
    name = "nanoflux-medical-SmolLM2-135M-Instruct-lora"  # no repo yet: named after the dataset and the base model
    assert card.data.model_name == name and card.text.lstrip().startswith(f"# {name}\n")
    hp = summary["hyperparameters"]
    assert "| epochs trained | 2.00 (num_train_epochs 2.0) |" in card.text
    assert f"| optimizer steps | {summary['steps']} |" in card.text and "| training examples | 6 |" in card.text
    assert (
        f"| LoRA rank `r` / alpha / dropout | {hp['lora_r']} / {hp['lora_alpha']} / {hp['lora_dropout']} |"
        in card.text
    )
    assert f"| batch size per device × accumulation = effective | 3 × 1 = {hp['effective_batch_size']} |" in card.text
    assert f"{REPO}@v2@" in card.text and "from nanoflux.models import model_path" in card.text
    assert 'AutoModelForCausalLM.from_pretrained(model_path("HuggingFaceTB/SmolLM2-135M-Instruct"))' in card.text


@pytest.mark.slow
def test_the_pushed_adapter_card_keeps_its_evaluation_under_the_repo_id_and_no_local_path(adapter, tmp_path):
    from trainer.adapter_hub import publish_adapter
    from trainer.evaluation.model_card import write_model_index

    write_model_index(
        adapter.out / "README.md", _results(adapter.out)
    )  # what `nanoflux eval` does for a local adapter
    local = ModelCard.load(adapter.out / "README.md")
    assert local.data.to_dict()["model-index"][0]["name"] == "nanoflux-medical-SmolLM2-135M-Instruct-lora"

    models = tmp_path / "models"
    commit = publish_adapter(adapter.out, "org/smollm2-nanoflux-medical-lora", hub_dir=str(models))
    pushed = RepoStore(models).read_file("model", "org/smollm2-nanoflux-medical-lora", commit, "README.md").decode()
    card = ModelCard(pushed)
    meta = metadata_load(_write(tmp_path / "pushed.md", pushed))
    (entry,) = meta["model-index"]
    assert entry["name"] == card.data.model_name == "org/smollm2-nanoflux-medical-lora"
    assert pushed.lstrip("-\n").split("---\n", 1)[1].lstrip().startswith("# org/smollm2-nanoflux-medical-lora\n")
    result = entry["results"][0]
    assert result["dataset"] == {"name": "MedQA (USMLE, 4 options) (a local copy)", "type": "medqa", "split": "test"}
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.75, "name": "Accuracy"}
    parsed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert parsed[("medqa", "accuracy")] == 0.75 and ("medqa", "accuracy_delta") in parsed
    assert (
        "| MedQA (USMLE, 4 options) | adapter | 4 | 3 |" in pushed and "Not evaluated yet" not in pushed
    )  # the section survives the push
    assert 'PeftModel.from_pretrained(base, "org/smollm2-nanoflux-medical-lora")' in pushed
    for path in _local_paths(adapter.tmp) + [str(adapter.out), "adapter-local"]:
        assert path not in pushed, path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
