"""Run `nanoflux train` as a Hugging Face Job (`--jobs.backend jobs`): a GPU on the Hub, the adapter pushed before it
ends.

Usage:
    nanoflux train --config configs/train/qwen3-4b-lora.yaml --jobs.backend jobs --jobs.flavor a100-large
    nanoflux train --config configs/train/qwen3-4b-lora.yaml --jobs.backend jobs --detach   # print the id and return
    nanoflux jobs status <job_id>
    nanoflux jobs logs <job_id> [--follow]

`main(config)` reads top to bottom: check, before anything is submitted, that the dataset version exists and the
adapter repo is writable (the job's GPU time is the expensive part, so a wrong revision fails here, in seconds);
make NanoFlux installable inside the job (the `jobs.package` pip requirement, or else this checkout built as a wheel
and uploaded to the private dataset repo `<namespace>/nanoflux-jobs`, as `hf jobs uv run` does with scripts); then
submit through `huggingface_hub`'s jobs API (`HfApi.run_job`) and follow the logs until the job ends.

Inside the job the same recipe runs with `jobs.backend: local`: it travels as YAML in the `NANOFLUX_TRAIN_RECIPE`
variable, and HF_TOKEN travels as a job *secret* (never in the environment, the command or the recipe). A job's disk is
ephemeral, so the recipe must push the adapter (`push_to_hub`): the push is the last step of the run, before it exits.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from nanoflux.errors import NanoFluxError
from nanoflux.recipe import to_dict
from trainer.adapter_hub import check_adapter_repo, dataset_commit
from trainer.train_config import TrainConfig
from trainer.train_data import check_test_rows, load_train_data

logger = logging.getLogger(__name__)

RECIPE_ENV = "NANOFLUX_TRAIN_RECIPE"
PACKAGE_REPO = "nanoflux-jobs"  # private dataset repo in the job's namespace holding uploaded wheels
TIMEOUT_RE = re.compile(r"^\d+(\.\d+)?[smhd]?$")
# Runs in the job's image. An image with NanoFlux preinstalled skips the install.
JOB_SCRIPT = """set -euo pipefail
if ! command -v nanoflux >/dev/null; then
  pip install --quiet --no-cache-dir "huggingface_hub>=1.0"
  {fetch}
  pip install --quiet --no-cache-dir {package}
fi
printf '%s' "${recipe_env}" > nanoflux_train.yaml
exec nanoflux train --config nanoflux_train.yaml
"""


class JobsError(NanoFluxError, RuntimeError):
    """A job could not be submitted or did not finish; the message says why and what to do."""


def job_recipe(config: TrainConfig) -> str:
    """The recipe the job runs: the same settings, trained where it runs (backend local), written to a folder of the
    job's own disk (a path of the submitting machine means nothing there). The test-row check (`eval_recipe`, a file
    of the submitting machine) runs before submission, so the job does not repeat it."""
    output_dir = f"outputs/{Path(config.output_dir).name or 'adapter'}"
    recipe = to_dict(config)
    recipe.update(jobs={**recipe["jobs"], "backend": "local"}, output_dir=output_dir, eval_recipe=None)
    return yaml.safe_dump(recipe, sort_keys=False)


def job_spec(config: TrainConfig, *, package: str, fetch: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `HfApi.run_job` (secrets added at submission): image, command, env, flavor, timeout.

    `package` is what `pip install` gets inside the job (a requirement, or the path `fetch` downloads a wheel to).
    """
    script = JOB_SCRIPT.format(fetch=fetch or ":", package=shlex.quote(package), recipe_env=RECIPE_ENV)
    return {
        "image": config.jobs.image,
        "command": ["bash", "-c", script],
        "env": {RECIPE_ENV: job_recipe(config), "PYTHONUNBUFFERED": "1"},
        "flavor": config.jobs.flavor,
        "timeout": config.jobs.timeout,
        "labels": {"nanoflux": "train", "adapter": config.push_to_hub.replace("/", "--")},
    }


def build_wheel(source: Path) -> Path:
    """This checkout as a wheel (no dependencies: the job's pip resolves them)."""
    if not (source / "pyproject.toml").is_file():
        raise JobsError(
            f"jobs.package: NanoFlux is not installed from a source checkout ({source} has no pyproject.toml), so"
            " there is nothing to upload. Fix: set jobs.package to a pip requirement for NanoFlux"
        )
    out = Path(tempfile.mkdtemp(prefix="nanoflux-wheel-"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(out),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(out.glob("nanoflux-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise JobsError(
            f"building the NanoFlux wheel failed: {result.stderr.strip()[-500:]}. Fix: set jobs.package to a pip"
            " requirement for NanoFlux"
        )
    return wheels[0]


def upload_package(api: Any, namespace: str, wheel: Path) -> tuple[str, str]:
    """Upload `wheel` to the private `<namespace>/nanoflux-jobs` dataset repo under a content hash; (repo, path)."""
    repo = f"{namespace}/{PACKAGE_REPO}"
    data = wheel.read_bytes()
    path = f"wheels/{hashlib.sha256(data).hexdigest()[:16]}/{wheel.name}"  # the wheel's own name keeps pip happy
    api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    if not api.file_exists(repo, path, repo_type="dataset"):
        api.upload_file(
            path_or_fileobj=data,
            path_in_repo=path,
            repo_id=repo,
            repo_type="dataset",
            commit_message=f"NanoFlux job package {wheel.name}",
        )
    return repo, path


def main(config: TrainConfig, *, detach: bool = False, on_log: Callable[[str], None] | None = None) -> Any:
    """Submit the training run as a job; unless `detach`, follow its logs until it ends. Returns the final JobInfo.
    `config` is a validated TrainConfig with backend jobs (its `validate()` ran `check_job_settings`)."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise JobsError(
            "HF_TOKEN: not set and not logged in; a job needs a write token (passed to it as a secret). Fix: export"
            " HF_TOKEN=hf_... or run `hf auth login`"
        )
    api = HfApi(token=token)
    namespace = config.jobs.namespace or api.whoami()["name"]
    # Before anything is uploaded or submitted: the data exists at that version, asks no question of the evaluation's
    # test rows (with eval_recipe), and the adapter repo is writable.
    if config.eval_recipe:
        data = load_train_data(config)
        check_test_rows(
            config, data, f"the training data of {config.benchmark.name if config.benchmark else config.dataset_name}"
        )
    elif config.benchmark is None:
        commit = dataset_commit(config.dataset_name, config.revision)
        logger.info("Dataset %s@%s = commit %s", config.dataset_name, config.revision, commit[:12])
    check_adapter_repo(config)

    if config.jobs.package:
        spec = job_spec(config, package=config.jobs.package)
    else:
        source = Path(__file__).resolve().parent.parent
        repo, path = upload_package(api, namespace, build_wheel(source))
        fetch = f"hf download {repo} {shlex.quote(path)} --repo-type dataset --local-dir nanoflux-package"
        spec = job_spec(config, package=f"nanoflux-package/{path}", fetch=fetch)
        logger.info("Uploaded this checkout as %s in %s", path, repo)
    job = api.run_job(**spec, secrets={"HF_TOKEN": token}, namespace=namespace)
    logger.info("Submitted job %s on %s: %s", job.id, config.jobs.flavor, job.url)
    if detach:
        return job
    for line in logs(job.id, namespace=namespace, follow=True):
        (on_log or logger.info)(line)
    job = api.wait_for_job(job.id, namespace=namespace, poll_interval=2.0)
    if job.status.stage != "COMPLETED":
        raise JobsError(
            f"job {job.id} ended {job.status.stage}: {job.status.message or 'no message'}. See `nanoflux jobs logs"
            f" {job.id}`"
        )
    logger.info("Job %s completed; the adapter is in %s", job.id, config.push_to_hub)
    return job


def status(job_id: str, *, namespace: str | None = None) -> dict[str, Any]:
    """A job's state as plain data: stage, message, times, flavor, image and the adapter it trains."""
    from huggingface_hub import HfApi

    job = HfApi().inspect_job(job_id=job_id, namespace=namespace)
    return {
        "id": job.id,
        "stage": str(getattr(job.status.stage, "value", job.status.stage)),
        "message": job.status.message,
        "flavor": str(getattr(job.flavor, "value", job.flavor)),
        "image": job.docker_image or job.space_id,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "labels": job.labels or {},
        "url": job.url,
    }


def logs(job_id: str, *, namespace: str | None = None, follow: bool = False) -> Iterator[str]:
    """A job's log lines (with `follow`, live until it ends)."""
    from huggingface_hub import HfApi

    yield from HfApi().fetch_job_logs(job_id=job_id, namespace=namespace, follow=follow)


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux jobs status|logs JOB_ID [--namespace NS] [--follow]`."""
    import yaml
    from huggingface_hub.errors import HfHubHTTPError

    try:
        if args.action == "status":
            print(yaml.safe_dump(status(args.job_id, namespace=args.namespace), sort_keys=False), end="")
        else:
            for line in logs(args.job_id, namespace=args.namespace, follow=args.follow):
                print(line, flush=True)
    except HfHubHTTPError as err:
        raise JobsError(f"job {args.job_id}: {str(err).splitlines()[0]}") from None
