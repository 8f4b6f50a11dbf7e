"""The adapter's Hub I/O, through `huggingface_hub.HfApi` only (the real Hub, or a local repository folder served on
loopback by `nanoflux.hub.open_target`): the dataset version a run trains on, pinned to its commit; the adapter repo
checked writable before any compute; the trained adapter pushed in one commit.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
from pathlib import Path

from builder import PublishError
from nanoflux.hub import open_target
from trainer.adapter_card import write_card
from trainer.train_config import SUMMARY_FILE, TrainConfig, TrainError

logger = logging.getLogger(__name__)

# What goes up to the adapter repo: the top-level files of output_dir (adapter, tokenizer, card, summary, config) but
# no pickles (`training_args.bin` is a pickled TrainingArguments) and no folders (checkpoints, logs).
UPLOAD_SKIP = ("*.bin", "*.pt", "*.pth", "*.pkl")


def dataset_commit(repo: str, revision: str, hub_dir: str | None = None) -> str:
    """The commit dataset version `revision` of `repo` points to, on the Hub or in the local repository folder
    `hub_dir`.

    Raises:
        TrainError: no such repo or version (naming the versions there), or the Hub cannot be read.
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if hub_dir is not None and not Path(hub_dir).is_dir():  # the local server would create it
        raise TrainError(
            f"hub_dir: folder not found (got {hub_dir!r}). Fix: point it at the folder `nanoflux build --hub_dir`"
            " published to"
        )
    with open_target(hub_dir) as api:
        where = hub_dir or api.endpoint
        try:
            return api.dataset_info(repo, revision=revision).sha
        except RevisionNotFoundError:
            tags = [tag.name for tag in api.list_repo_refs(repo, repo_type="dataset").tags]
            raise no_revision(repo, revision, tags) from None
        except RepositoryNotFoundError:
            raise TrainError(
                f"dataset_name: no dataset repo {repo!r} on {where}. Fix: check the repo id (and HF_TOKEN for a"
                " private repo), or set hub_dir for a local folder"
            ) from None
        except HfHubHTTPError as err:
            raise TrainError(
                f"dataset_name: cannot read {repo}@{revision} ({str(err).splitlines()[0]}). Fix: check the network"
                " and HF_TOKEN"
            ) from None


def download_dataset(repo: str, commit: str, hub_dir: str | None, folder: str | Path) -> Path:
    """The dataset's files at `commit`, downloaded into `folder` (a local repository folder's data is read this way;
    the Hub's is read by `datasets` itself)."""
    with open_target(hub_dir) as api:
        return Path(api.snapshot_download(repo, repo_type="dataset", revision=commit, local_dir=str(folder)))


def no_revision(repo: str, revision: str, tags: list[str]) -> TrainError:
    return TrainError(
        f"revision: {repo} has no version {revision!r} (versions: {', '.join(sorted(tags)) or 'none'}). Fix: pass"
        " --revision with one of those"
    )


def check_adapter_repo(config: TrainConfig) -> None:
    """Before any compute: the adapter repo exists (created if needed) and we may write to it.

    Raises:
        PublishError: the repo cannot be created or written, with the fix.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        with open_target(config.adapter_hub_dir) as api:
            api.create_repo(config.push_to_hub, repo_type="model", private=config.private, exist_ok=True)
    except HfHubHTTPError as err:
        raise PublishError(
            f"push_to_hub: cannot write to model repo {config.push_to_hub} ({str(err).splitlines()[0]}). "
            "Fix: use a write token (HF_TOKEN) and check the repo id, or remove push_to_hub"
        ) from None


def publish_adapter(output_dir: str | Path, repo_id: str, hub_dir: str | None = None, *, private: bool = False) -> str:
    """Upload a trained adapter folder (adapter, tokenizer, card, summary, config) to model repo `repo_id` in one
    commit, on the Hub or in the local repository folder `hub_dir`; nothing is retrained. Returns the commit sha."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    output_dir = Path(output_dir)
    needed = [output_dir / name for name in ("adapter_config.json", SUMMARY_FILE)]
    if not all(path.is_file() for path in needed):
        raise PublishError(
            f"output_dir: {output_dir} holds no trained adapter (needs adapter_config.json and {SUMMARY_FILE}). Fix:"
            " run `nanoflux train` first"
        )
    write_card(output_dir, repo_id)  # the loading snippet names the repo it goes to
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    files = sorted(
        p for p in output_dir.iterdir() if p.is_file() and not any(fnmatch.fnmatch(p.name, s) for s in UPLOAD_SKIP)
    )
    # In-memory files go up over plain LFS (huggingface_hub uses Xet only for files on disk), which both the Hub and
    # the local repository folder (LocalHub speaks LFS, not Xet) accept.
    operations = [CommitOperationAdd(path.name, io.BytesIO(path.read_bytes())) for path in files]
    try:
        with open_target(hub_dir) as api:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.create_commit(
                repo_id,
                repo_type="model",
                operations=operations,
                commit_message=f"NanoFlux LoRA adapter: {summary['base_model']} on {summary['dataset']['pinned']}",
            )
    except HfHubHTTPError as err:
        raise PublishError(
            f"pushing {output_dir} to {repo_id} failed ({str(err).splitlines()[0]}); the adapter is saved in"
            f" {output_dir}. Fix: run `nanoflux publish-adapter {output_dir} --repo_id {repo_id}"
            + (f" --hub_dir {hub_dir}" if hub_dir else "")
            + "` (nothing is retrained)"
        ) from None
    logger.info("Pushed the adapter to %s: commit %s", repo_id, commit.oid[:12])
    return commit.oid
