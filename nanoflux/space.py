"""`nanoflux space`: run the Gradio Space (`spaces/`) on this machine, or deploy it to a Space repo.

Usage:
    nanoflux space                      # local dataset folder, packaged SmolLM2, local adapter, local results
    nanoflux space --port 7870 --adapter outputs/adapter-local --adapter local/smollm2-nanoflux-medical-lora
    # read from the Hub:
    nanoflux space --hub_dir none --dataset org/nanoflux-medical --adapter org/smollm2-nanoflux-lora
    nanoflux space deploy org/nanoflux-demo --dataset org/nanoflux-medical --adapter org/smollm2-nanoflux-lora \
        --results outputs/eval
    nanoflux space deploy local/nanoflux-demo --hub_dir outputs/hub    # a local repository folder

The Space reads its settings from environment variables (Space variables on the Hub; see spaces/app.py). The local
run sets them: the dataset repo of the local repository folder (`hub_dir`, served on loopback by
`localhub.LocalHub` and named in HF_ENDPOINT), the packaged SmolLM2 converted to a model folder (the page names it
by its Hub id: the folder goes in NANOFLUX_BASE_MODEL_FOLDER, the id in NANOFLUX_BASE_MODEL), the adapter
`nanoflux train --config configs/train/local.yaml` wrote and the results `nanoflux eval --config
configs/eval/local.yaml` wrote; then it runs `spaces/app.py` until Ctrl-C. Anything missing is reported by the
page itself, with the command that makes it.

Deploy uploads `spaces/` in one commit (`HfApi.create_repo(repo_type="space", space_sdk="gradio")` +
`upload_folder`), with the README front matter naming the dataset (`datasets`), the base model and the adapters
(`models`), which the Space reads when no Space variable overrides them, and the evaluation results under
`results/`. A redeploy keeps the settings it is not given; stale app files and results of an earlier deploy are
deleted in the same commit.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localhub.server import DEFAULT_PORT as HUB_PORT
from nanoflux.errors import NanoFluxError
from nanoflux.models import DEFAULT_MODEL_ID
from nanoflux.recipe import ConfigError, check_range, fail

logger = logging.getLogger(__name__)

SPACE_DIR = Path(__file__).resolve().parent.parent / "spaces"
# Files of spaces/ that a deploy replaces or removes: the app's modules and the results of an earlier deploy.
DEPLOY_DELETE_PATTERNS = ["*.py", "results/*"]
DEFAULT_PORT = 7860
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class SpaceError(NanoFluxError):
    """The Space could not be deployed; the message names the repo, the endpoint and the fix."""


@dataclass
class SpaceConfig:
    """`nanoflux space`: the Space on this machine. The defaults are the embedded default's outputs
    (configs/local.yaml published to outputs/hub, configs/train/local.yaml, configs/eval/local.yaml)."""

    dataset: str | None = "local/nanoflux-medical"
    """Dataset repo whose `vN` tags are the versions (in `hub_dir`, or on the Hub)."""
    hub_dir: str | None = "outputs/hub"
    """Local repository folder holding the dataset (and adapter repos); None: the Hub (HF_ENDPOINT, HF_TOKEN)."""
    base_model: str = DEFAULT_MODEL_ID
    """Hub id or folder; the packaged SmolLM2 is used from its converted local folder."""
    adapters: list[str] = field(default_factory=lambda: ["outputs/adapter-local"])
    """LoRA adapters: folders, or repo ids (their versions are their tags) in hub_dir or on the Hub."""
    results: str | None = "outputs/eval-local"
    """`nanoflux eval` output folder (results.json + details/) or a results.json."""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    """Gradio's usual port; the local Hub server (`python -m localhub`) defaults to 7861, so both can run at once."""
    max_new_tokens: int = 256

    def validate(self) -> None:
        check_range("port", self.port, 1, 65535)
        check_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        if self.dataset is not None and not _REPO_ID.match(self.dataset):
            fail("dataset", self.dataset, "not a dataset repo id", "write it as org/name")


@dataclass
class DeployConfig:
    """`nanoflux space deploy`: where the Space goes and what its front matter names (None: keep spaces/README.md's
    value)."""

    repo_id: str = ""
    hub_dir: str | None = None
    """A local repository folder instead of the Hub."""
    private: bool = False
    dataset: str | None = None
    base_model: str | None = None
    adapters: list[str] | None = None
    results: str | None = None
    """`nanoflux eval` output folder or results.json, uploaded as results/ (the Space's default results)."""

    def validate(self) -> None:
        if not _REPO_ID.match(self.repo_id):
            fail("repo_id", self.repo_id, "not a Space repo id", "write it as org/name")
        for name, value in [
            ("dataset", self.dataset),
            ("base_model", self.base_model),
            *(("adapter", a) for a in self.adapters or []),
        ]:
            if value is None:
                continue
            if Path(value).exists():
                fail(
                    name,
                    value,
                    "a local path: the Space on the Hub cannot read it",
                    "push it first (nanoflux publish / publish-adapter) and give its repo id",
                )
            if (
                "@" in value
            ):  # the Hub's `models` metadata holds repo ids; the Space offers every tag of an adapter repo
                fail(
                    name,
                    value,
                    "a revision cannot go in the front matter",
                    "give the repo id (the Space offers its tags), or pin it with the NANOFLUX_ADAPTERS Space"
                    " variable",
                )
            if not _REPO_ID.match(value):
                fail(name, value, "not a Hub repo id", "write it as org/name")
        if self.results is not None and not _results_file(self.results).is_file():
            fail(
                "results",
                self.results,
                "no results.json there",
                "run `nanoflux eval` first and pass its output folder",
            )


def _results_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


# --- the local run ---------------------------------------------------------------------------------------


def space_env(config: SpaceConfig, hub_url: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `spaces/app.py` runs with locally: its settings, and huggingface_hub pointed at `hub_url`."""
    from nanoflux.models import cache_root, model_path

    env = dict(os.environ if environ is None else environ)
    # A packaged model loads from its converted folder, but the page names it by its id, never by a cache path.
    folder = model_path(config.base_model)
    adapters = [str(Path(a).resolve()) if Path(a).exists() else a for a in config.adapters]
    results = (
        str(Path(config.results).resolve()) if config.results and Path(config.results).exists() else config.results
    )
    env.update(
        NANOFLUX_DATASET=config.dataset or "",
        NANOFLUX_BASE_MODEL=config.base_model,
        NANOFLUX_BASE_MODEL_FOLDER=folder if folder != config.base_model else "",
        NANOFLUX_ADAPTERS=",".join(adapters),
        NANOFLUX_RESULTS=results or "",
        NANOFLUX_MAX_NEW_TOKENS=str(config.max_new_tokens),
        GRADIO_SERVER_NAME=config.host,
        GRADIO_SERVER_PORT=str(config.port),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    if hub_url is not None:
        # The local folder is served on loopback: no token goes to it, HF_HUB_OFFLINE must not block it, and its
        # repos get their own download cache (the Hub's cache is keyed by repo id, not by server).
        env.pop("HF_TOKEN", None)
        env.update(
            HF_ENDPOINT=hub_url,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_CACHE=str(cache_root() / "space-hub-cache"),
        )
    return env


def _warn_missing(config: SpaceConfig) -> None:
    """Say what the page will miss, and how to make it, before it starts."""
    if config.hub_dir is not None and not Path(config.hub_dir).is_dir():
        logger.warning(
            "hub_dir %s not found: no dataset to explore. Make one with `nanoflux build --config configs/local.yaml"
            " --push_to_hub %s --hub_dir %s`",
            config.hub_dir,
            config.dataset or "local/nanoflux-medical",
            config.hub_dir,
        )
    for adapter in config.adapters:
        if not Path(adapter).exists():
            logger.warning(
                "adapter %s is no folder: it is looked up as a repo id in %s. To train one: `nanoflux train --config"
                " configs/train/local.yaml`",
                adapter,
                config.hub_dir or "the Hub",
            )
    if config.results and not _results_file(config.results).is_file():
        logger.warning("results %s not found: run `nanoflux eval --config configs/eval/local.yaml`", config.results)


def run_local(config: SpaceConfig) -> int:
    """Serve the Space at http://host:port until it stops (Ctrl-C); returns the app's exit code."""
    config.validate()
    app = SPACE_DIR / "app.py"
    if not app.is_file():
        raise ConfigError(
            f"spaces/app.py not found next to the nanoflux package ({SPACE_DIR}). Fix: run `nanoflux space` from a"
            " NanoFlux checkout (pip install -e .)"
        )
    _warn_missing(config)
    from localhub import LocalHub

    hub, empty, process = None, None, None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminated `nanoflux space` stops its app too
    try:
        if config.hub_dir is not None:
            # A missing folder is served empty (never created): the page then says what is missing, and nothing
            # that was meant to be local is looked up on the Hub.
            root = (
                config.hub_dir
                if Path(config.hub_dir).is_dir()
                else (empty := tempfile.mkdtemp(prefix="nanoflux-empty-hub-"))
            )
            hub = LocalHub(root).start()
        env = space_env(config, hub.url if hub else None)
        logger.info(
            "NanoFlux Space on http://%s:%d (dataset %s from %s)",
            config.host,
            config.port,
            config.dataset,
            config.hub_dir or "the Hub",
        )
        process = subprocess.Popen([sys.executable, str(app)], env=env)  # python puts app.py's folder on its path
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the app, and that is a normal end
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if hub is not None:
            hub.close()
        if empty is not None:
            shutil.rmtree(empty, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- deploy ----------------------------------------------------------------------------------------------


def stage(config: DeployConfig, folder: Path, current: dict[str, Any] | None = None) -> Path:
    """A copy of spaces/ as it is uploaded: the front matter names `config`'s dataset, base model and adapters (what
    is not given stays as the deployed Space's `current` front matter has it, else as spaces/README.md has it), and
    the evaluation results go under results/."""
    from huggingface_hub import SpaceCard

    shutil.copytree(
        SPACE_DIR, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results", ".*"), dirs_exist_ok=True
    )
    card = SpaceCard.load(folder / "README.md")
    current = current or {}
    models = list(current.get("models") or card.data.get("models") or [])
    base = config.base_model or (models[0] if models else DEFAULT_MODEL_ID)
    card.data.models = [base, *(config.adapters if config.adapters is not None else models[1:])]
    datasets = [config.dataset] if config.dataset is not None else current.get("datasets") or card.data.get("datasets")
    if datasets:
        card.data.datasets = list(datasets)
    card.save(folder / "README.md")
    if config.results is not None:
        source = _results_file(config.results)
        (folder / "results").mkdir()
        shutil.copy2(source, folder / "results" / "results.json")
        if (source.parent / "details").is_dir():
            shutil.copytree(source.parent / "details", folder / "results" / "details")
    return folder


def deploy(config: DeployConfig) -> str:
    """Create (if needed) and update the Space repo in one commit; returns the commit id."""
    from huggingface_hub.errors import HfHubHTTPError

    from nanoflux.hub import open_target

    config.validate()
    with tempfile.TemporaryDirectory(prefix="nanoflux-space-") as tmp, open_target(config.hub_dir) as api:
        try:
            api.create_repo(
                config.repo_id, repo_type="space", space_sdk="gradio", private=config.private, exist_ok=True
            )
            current = api.space_info(config.repo_id).card_data  # a redeploy keeps the settings it is not given
            folder = stage(config, Path(tmp) / "space", current.to_dict() if current else None)
            commit = api.upload_folder(
                repo_id=config.repo_id,
                repo_type="space",
                folder_path=folder,
                delete_patterns=DEPLOY_DELETE_PATTERNS,
                commit_message="NanoFlux Space"
                + (f": dataset {config.dataset}" if config.dataset else "")
                + (", with evaluation results" if config.results else ""),
            )
        except HfHubHTTPError as err:
            raise SpaceError(
                f"repo_id: cannot write to Space repo {config.repo_id} at {api.endpoint}"
                f" ({str(err).splitlines()[0][:300]}). Fix: check HF_TOKEN (a write token) and the repo id"
            ) from None
    logger.info("Deployed %s: commit %s", config.repo_id, commit.oid[:12])
    return commit.oid


# --- command line ----------------------------------------------------------------------------------------


def _hub_dir(value: str) -> str | None:
    return None if value.lower() in ("", "none", "hub") else value


def _parser(deploying: bool) -> argparse.ArgumentParser:
    if deploying:
        parser = argparse.ArgumentParser(
            prog="nanoflux space deploy", description="Upload spaces/ to a Gradio Space repo in one commit."
        )
        parser.add_argument("repo_id", help="Space repo, org/name")
        parser.add_argument("--hub_dir", help="a local repository folder instead of the Hub")
        parser.add_argument("--private", action="store_true", help="create the Space as private")
        parser.add_argument("--dataset", help="dataset repo the Space shows (front matter `datasets`)")
        parser.add_argument("--base_model", help="base model repo (front matter `models[0]`)")
        parser.add_argument(
            "--adapter", dest="adapters", action="append", help="adapter repo (repeatable; front matter `models[1:]`)"
        )
        parser.add_argument("--results", help="`nanoflux eval` output folder or results.json, uploaded as results/")
    else:
        defaults = SpaceConfig()
        parser = argparse.ArgumentParser(
            prog="nanoflux space",
            description="Run the NanoFlux Space locally (`nanoflux space deploy org/name` deploys it).",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=defaults.port,
            help=f"default: %(default)s (the local Hub server's is {HUB_PORT})",
        )
        parser.add_argument("--host", default=defaults.host, help="0.0.0.0 to serve beyond this machine")
        parser.add_argument("--dataset", default=defaults.dataset, help="dataset repo (default: %(default)s)")
        parser.add_argument(
            "--hub_dir",
            type=_hub_dir,
            default=defaults.hub_dir,
            help="local repository folder; `none` reads the Hub (default: %(default)s)",
        )
        parser.add_argument("--base_model", default=defaults.base_model, help="default: the packaged %(default)s")
        parser.add_argument(
            "--adapter",
            dest="adapters",
            action="append",
            help=f"adapter folder or repo id (repeatable; default: {defaults.adapters[0]})",
        )
        parser.add_argument(
            "--results", default=defaults.results, help="`nanoflux eval` output folder (default: %(default)s)"
        )
        parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


def main(argv: list[str]) -> Any:
    """`nanoflux space [...]` / `nanoflux space deploy REPO_ID [...]`."""
    deploying = bool(argv) and argv[0] == "deploy"
    args = vars(_parser(deploying).parse_args(argv[1:] if deploying else argv))
    logging.basicConfig(
        level=args.pop("log_level").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if deploying:
            commit = deploy(DeployConfig(**args))
            print(f"{args['repo_id']}: Space deployed, commit {commit}")
            return None
        config = SpaceConfig(**{**args, "adapters": args["adapters"] or SpaceConfig().adapters})
        sys.exit(run_local(config))
    except (ConfigError, SpaceError) as err:
        sys.exit(f"nanoflux space{' deploy' if deploying else ''}: {err}")
