"""Training as a Hugging Face Job (`--jobs.backend jobs`), through huggingface_hub's real jobs client against
LocalHub's Jobs API (localhub.jobs): the job spec built from a recipe, the token passed only as a secret, the checks
made before anything is submitted, `nanoflux jobs status|logs`, and — marked `slow` — a real training job that pushes
its adapter before its (ephemeral) disk goes away."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from localhub import JobRunner, LocalHub
from nanoflux.cli import main as cli_main
from nanoflux.recipe import ConfigError, to_dict
from tests.test_train import ADAPTER_REPO, LOCAL_RECIPE, QWEN_RECIPE, REPO, make_dataset_repo
from trainer.jobs import RECIPE_ENV, JobsError, job_spec
from trainer.jobs import main as submit
from trainer.train_config import TrainConfig, TrainError, build_train_config

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

TOKEN = "hf_localhub_write_token"
ROOT = Path(__file__).resolve().parent.parent


def _jobs_config(*overrides: str) -> TrainConfig:
    """The local recipe as a job: data and adapter on the (local) Hub, NanoFlux preinstalled in the 'image'."""
    args = [
        "--jobs.backend",
        "jobs",
        "--hub_dir",
        "null",
        "--push_to_hub",
        ADAPTER_REPO,
        "--jobs.package",
        "nanoflux",
        *overrides,
    ]
    return build_train_config(LOCAL_RECIPE, args)


@pytest.fixture
def hub(tmp_path, hub_endpoint, monkeypatch):
    """A LocalHub with the two-version dataset repo, a Jobs API that holds jobs (never runs them) and a write token."""
    monkeypatch.chdir(ROOT)  # the local recipe's eval_recipe names the repository's benchmark fixtures
    make_dataset_repo(tmp_path / "hub")
    with LocalHub(tmp_path / "hub", token=TOKEN, jobs=JobRunner(run=False)) as server:
        hub_endpoint(server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


# --- fast: the spec ----------------------------------------------------------------------------------------


def test_the_job_runs_the_same_recipe_locally_on_the_requested_hardware():
    config = build_train_config(
        QWEN_RECIPE, ["--jobs.backend", "jobs", "--jobs.flavor", "a100-large", "--jobs.timeout", "3h"]
    )
    spec = job_spec(config, package="nanoflux==0.1.0")

    assert (spec["image"], spec["flavor"], spec["timeout"]) == (
        "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime",
        "a100-large",
        "3h",
    )
    assert spec["command"][:2] == ["bash", "-c"]
    script = spec["command"][2]
    assert "pip install --quiet --no-cache-dir nanoflux==0.1.0" in script
    assert script.rstrip().endswith("exec nanoflux train --config nanoflux_train.yaml")
    recipe = yaml.safe_load(spec["env"][RECIPE_ENV])
    # Inside the job, the run trains where it is, into a folder of the job's own disk; the test-row check (a recipe
    # file of this machine) ran before submission.
    assert (recipe["jobs"]["backend"], recipe["output_dir"], recipe["eval_recipe"]) == (
        "local",
        "outputs/qwen3-4b-nanoflux-medical-lora",
        None,
    )
    assert config.eval_recipe == "configs/eval/medical.yaml"
    same = {k: v for k, v in to_dict(config).items() if k not in ("jobs", "output_dir", "eval_recipe")}
    assert {k: v for k, v in recipe.items() if k not in ("jobs", "output_dir", "eval_recipe")} == same
    assert recipe["jobs"] == {**to_dict(config)["jobs"], "backend": "local"}
    assert spec["labels"] == {"nanoflux": "train", "adapter": "org--qwen3-4b-nanoflux-medical-lora"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--push_to_hub", "null"], "push_to_hub: required with backend jobs"),
        (["--hub_dir", "outputs/hub"], "hub_dir: a local folder is not visible to a job (got 'outputs/hub')"),
        (["--adapter_hub_dir", "outputs/models"], "adapter_hub_dir: a local folder is not visible to a job"),
        (
            ["--jobs.timeout", "two hours"],
            "jobs.timeout: not a duration (got 'two hours'). Fix: write seconds or a number with s/m/h/d",
        ),
        (["--jobs.flavor", "''"], "jobs.flavor: empty (got ''). Fix: name a Jobs hardware flavor"),
        (["--jobs.backend", "slurm"], "jobs.backend: unknown (got 'slurm'). Fix: use local"),
    ],
)
def test_a_recipe_a_job_cannot_run_is_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        _jobs_config(*overrides)
    assert message in str(err.value)


# --- fast: submission through the real client --------------------------------------------------------------


def test_submission_passes_the_token_only_as_a_secret(hub):
    job = submit(_jobs_config("--jobs.flavor", "a10g-small", "--jobs.timeout", "90m"), detach=True)

    assert job.status.stage == "SCHEDULING"
    assert job.secrets == ["HF_TOKEN"]  # the API names secrets, never shows them
    recorded = hub.jobs.get("localhub", job.id).spec  # what the server received
    assert recorded["secrets"] == {"HF_TOKEN": TOKEN}
    assert (recorded["flavor"], recorded["timeoutSeconds"], recorded["dockerImage"]) == (
        "a10g-small",
        5400,
        "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime",
    )
    assert TOKEN not in json.dumps({k: v for k, v in recorded.items() if k != "secrets"})
    assert yaml.safe_load(recorded["environment"][RECIPE_ENV])["push_to_hub"] == ADAPTER_REPO
    assert hub.store.exists("model", ADAPTER_REPO)  # the adapter repo was created (and writable) before submitting


def test_without_job_package_this_checkout_goes_up_as_a_wheel_the_job_downloads(hub):
    job = submit(
        build_train_config(
            LOCAL_RECIPE, ["--jobs.backend", "jobs", "--hub_dir", "null", "--push_to_hub", ADAPTER_REPO]
        ),
        detach=True,
    )

    files = hub.store.commit(
        "dataset", "localhub/nanoflux-jobs", hub.store.resolve("dataset", "localhub/nanoflux-jobs", "main")
    ).files
    wheels = [path for path in files if path.endswith(".whl")]
    assert len(wheels) == 1 and Path(wheels[0]).name.startswith("nanoflux-0.1.0-py3-none-any")
    assert hub.store.meta("dataset", "localhub/nanoflux-jobs")["private"]
    script = job.command[2]
    assert f"hf download localhub/nanoflux-jobs {wheels[0]} --repo-type dataset --local-dir nanoflux-package" in script
    assert f"pip install --quiet --no-cache-dir nanoflux-package/{wheels[0]}" in script


def test_a_missing_version_fails_before_anything_is_submitted(hub):
    with pytest.raises(TrainError, match=r"revision: local/nanoflux-medical has no version 'v9' \(versions: v1, v2\)"):
        submit(_jobs_config("--revision", "v9"), detach=True)
    assert hub.jobs.list("localhub") == []


def test_training_rows_that_are_evaluation_test_rows_are_refused_before_anything_is_submitted(
    tmp_path, hub_endpoint, monkeypatch
):
    from nanoflux.benchmarks import test_questions
    from trainer.evaluation.config import build_eval_config

    monkeypatch.chdir(ROOT)
    medqa = next(
        b for b in build_eval_config(ROOT / "configs" / "eval" / "local.yaml").benchmarks if b.name == "medqa"
    )
    make_dataset_repo(tmp_path / "hub", questions={2: next(iter(test_questions(medqa).values()))})
    with LocalHub(tmp_path / "hub", token=TOKEN, jobs=JobRunner(run=False)) as server:
        hub_endpoint(server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        with pytest.raises(
            TrainError,
            match=(
                r"eval_recipe: the training data of local/nanoflux-medical holds 1 question\(s\) of the evaluation's"
                r" test rows"
            ),
        ):
            submit(_jobs_config(), detach=True)
        assert server.jobs.list("localhub") == [] and not server.store.exists("model", ADAPTER_REPO)


def test_no_token_fails_with_the_fix(hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN_PATH", str(hub.root / "no-saved-token"))
    with pytest.raises(JobsError, match="HF_TOKEN: not set and not logged in"):
        submit(_jobs_config(), detach=True)


def test_jobs_status_and_logs_show_a_finished_job(tmp_path, hub_endpoint, monkeypatch, capsys):
    from huggingface_hub import HfApi

    with LocalHub(tmp_path / "hub", token=TOKEN, jobs=JobRunner()) as server:
        hub_endpoint(server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        job = HfApi().run_job(
            image="python:3.12", command=["bash", "-c", "echo step 1; echo step 2; exit 3"], flavor="cpu-basic"
        )
        HfApi().wait_for_job(job.id, timeout=30)

        cli_main(["jobs", "status", job.id])
        status = yaml.safe_load(capsys.readouterr().out)
        assert (status["id"], status["stage"], status["message"], status["flavor"]) == (
            job.id,
            "ERROR",
            "Job failed with exit code: 3",
            "cpu-basic",
        )

        cli_main(["jobs", "logs", job.id])
        assert capsys.readouterr().out.splitlines() == ["step 1", "step 2"]

        with pytest.raises(SystemExit, match="nanoflux jobs: job nosuchjob: 404"):
            cli_main(["jobs", "logs", "nosuchjob"])


# --- slow: a real training job -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_training_job_pushes_its_adapter_before_its_disk_is_gone(
    tmp_path, hub_endpoint, monkeypatch, embedded_model_dir, capsys
):
    monkeypatch.chdir(ROOT)  # the test-row check runs here, before submission (the job's recipe has eval_recipe null)
    tags = make_dataset_repo(tmp_path / "hub")
    # The 'image' has NanoFlux installed: this environment's `nanoflux` is first on the job's PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with LocalHub(tmp_path / "hub", token=TOKEN, jobs=JobRunner(base_env={**os.environ, "PATH": path})) as server:
        hub_endpoint(server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        # Relative output_dir: the adapter is written inside the job's temporary folder, deleted when the job ends.
        cli_main(
            [
                "train",
                "--config",
                str(LOCAL_RECIPE),
                "--jobs.backend",
                "jobs",
                "--hub_dir",
                "null",
                "--push_to_hub",
                ADAPTER_REPO,
                "--jobs.package",
                "nanoflux",
                "--sft.max_steps",
                "2",
                "--output_dir",
                "outputs/adapter",
            ]
        )
        out = capsys.readouterr().out

        assert "COMPLETED" in out.splitlines()[-1]
        assert "Pushed the adapter to local/smollm2-nanoflux-medical-lora" in out  # the job's own log, streamed here
        assert TOKEN not in out
        files = server.store.commit("model", ADAPTER_REPO, server.store.resolve("model", ADAPTER_REPO, "main")).files
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training_summary.json"} <= set(files)
        summary = json.loads(server.store.read_file("model", ADAPTER_REPO, "main", "training_summary.json"))
        assert summary["dataset"]["pinned"] == f"{REPO}@v1@{tags['v1']}"
        assert summary["steps"] == 2
        assert TOKEN not in server.store.read_file("model", ADAPTER_REPO, "main", "nanoflux_train.yaml").decode()
