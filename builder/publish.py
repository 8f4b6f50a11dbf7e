"""Publish a finished build as the next version of a dataset repo: one commit, then a tag on exactly that commit.

Usage:
    nanoflux publish outputs/medical --repo_id org/nanoflux-medical                 # the Hub (token as usual)
    nanoflux publish outputs/local --repo_id local/nanoflux-medical --hub_dir outputs/hub   # local repository folder

A release is atomic: the data (`data/train-*.parquet`), the card (`README.md`), the resolved build config
(`nanoflux_config.yaml`), the provenance manifest (`provenance.json`) and, when decontamination ran, the ids of the
rows it removed (`contaminated.jsonl`) go up in a single commit whose parent is the head the release was computed
from; only then is the tag `vN` created on that commit. A publish that fails before the tag leaves no version, and
running it again publishes that version. Versions are numbered here, never by hand: `vN` follows the highest
`v<number>` tag of the repo.

A version holds at most `curation.target_size` rows. It re-curates the union of the previous version's rows and the
build's curated rows (those that are novel against the previous version) under the build's curation policy, after both
are checked against the evaluation benchmarks (`builder.decontamination`); rows keep the version they first appeared
in, and the card says which rows of the previous version left and why.

The local repository folder has the Hub's layout and tags: `localhub` serves it over the Hub's HTTP API,
so both targets go through the same `HfApi` code path.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from builder.build_folder import BuildFolder, migrate_config
from builder.config import CurationConfig
from builder.curation import curate, eligible
from builder.dataset import to_dataset
from builder.decontamination import Decontamination, DecontaminationConfig, Reference, decontaminate, report
from nanoflux.errors import NanoFluxError
from nanoflux.hub import open_target, package_versions
from nanoflux.recipe import from_dict, public_url
from nanoflux.runfolder import locked

logger = logging.getLogger(__name__)

PROVENANCE_PACKAGES = (
    "nanoflux",
    "huggingface_hub",
    "datasets",
    "transformers",
    "sentence-transformers",
    "torch",
    "llama-cpp-python",
)
_VERSION_TAG = re.compile(r"^v(\d+)$")


class PublishError(NanoFluxError, RuntimeError):
    """A release that cannot be made; the message says why and what to do."""


@dataclass
class Release:
    repo_id: str
    version: str
    commit: str
    num_rows: int
    new_rows: int
    left_rows: int = 0
    """Rows of the previous version that this one no longer holds (outranked, contaminated or no longer eligible)."""
    contaminated_rows: int = 0
    """Rows (previous version's and this build's) removed because they match an evaluation benchmark."""


@dataclass
class Previous:
    """The latest published version of a repo (none yet: version 0)."""

    number: int = 0
    commit: str | None = None
    rows: list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None
    history: dict[str, list[str]] | None = None
    """The changelog of every earlier version ({version: lines}), from the previous version's provenance.json."""

    @property
    def tag(self) -> str | None:
        return f"v{self.number}" if self.number else None


# --- targets ---------------------------------------------------------------------------------------------


def version_tags(api: HfApi, repo_id: str) -> dict[int, str]:
    """{N: commit} for the repo's `vN` tags (empty for a new repo)."""
    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return {}
    return {int(m.group(1)): tag.target_commit for tag in refs.tags if (m := _VERSION_TAG.match(tag.name))}


def preflight(api: HfApi, repo_id: str, *, private: bool = False, overwrite: bool = False) -> Previous:
    """Before any compute: the repo exists (created if needed) and is writable, and the next tag is free.

    Returns the version the release builds on (its rows join the build's novelty bank); with `overwrite`, that
    is the one before the latest, whose tag is then published again.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"repo_id: {repo_id!r} is not a dataset repo id. Fix: write it as org/name")
    try:
        if api.token is not False:
            role = api.whoami().get("auth", {}).get("accessToken", {}).get("role")
            if role == "read":
                raise PublishError(
                    f"repo_id: the token for {api.endpoint} can only read. Fix: use a write token (HF_TOKEN)"
                )
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        tags = version_tags(api, repo_id)
    except HfHubHTTPError as err:
        raise PublishError(
            f"repo_id: cannot write to dataset repo {repo_id} at {api.endpoint} ({_short(err)}). Fix: check HF_TOKEN"
            " and the repo id"
        ) from None
    latest = max(tags, default=0)
    base = latest - 1 if overwrite and latest else latest
    previous = Previous(base, tags.get(base))
    if base:
        previous.rows = _download_rows(api, repo_id, previous.commit)
        config = _download_yaml(api, repo_id, previous.commit, "nanoflux_config.yaml")
        previous.config = migrate_config(config) if isinstance(config, dict) else config
        previous.history = (_download_yaml(api, repo_id, previous.commit, "provenance.json") or {}).get("changelog")
    logger.info("Publishing to %s as v%d (%s)", repo_id, base + 1, f"builds on v{base}" if base else "first version")
    return previous


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:300]


def _download_rows(api: HfApi, repo_id: str, revision: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = api.hf_hub_download(repo_id, BuildFolder.DATA, repo_type="dataset", revision=revision)
    return pq.read_table(path).to_pylist()


def _download_yaml(api: HfApi, repo_id: str, revision: str, filename: str) -> dict[str, Any] | None:
    try:
        return yaml.safe_load(
            Path(api.hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision)).read_text()
        )
    except HfHubHTTPError:
        return None


# --- the release -----------------------------------------------------------------------------------------


def read_build(output_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A finished build's config (in today's layout), summary and curated rows."""
    folder = BuildFolder(output_dir)
    missing = folder.missing()
    if missing:
        raise PublishError(
            f"output_dir: {folder} is not a finished build (missing {', '.join(missing)}). Fix: run `nanoflux"
            " build` to the end first"
        )
    return folder.read_config(), folder.read_summary(), folder.read_curated()


def novel_rows(
    rows: list[dict[str, Any]], earlier: list[dict[str, Any]], novelty: dict[str, Any]
) -> list[dict[str, Any]]:
    """The rows that are not near-duplicates of an earlier version's questions (a no-op when the build already
    filtered against that version, which `--push_to_hub` does)."""
    if not rows or not earlier:
        return rows
    from builder.novelty import NoveltyFilter, embed, load_embedder

    embedder = load_embedder(novelty["model"])
    novelty_filter = NoveltyFilter(novelty["threshold"], bank=embed(embedder, [r["question"] for r in earlier]))
    decisions = novelty_filter.check(embed(embedder, [r["question"] for r in rows]))
    kept = [row for row, decision in zip(rows, decisions, strict=True) if decision.novel]
    if len(kept) < len(rows):
        logger.info("Dropped %d row(s) that repeat an earlier version", len(rows) - len(kept))
    return kept


LEFT_REASONS = {
    "contaminated": "matching an evaluation benchmark (see Decontamination)",
    "ineligible": "no longer eligible under this version's curation policy",
    "outranked": "outranked by new rows under the curation policy",
}


@dataclass
class Plan:
    """What a release holds, and what it leaves out and why."""

    rows: list[dict[str, Any]]
    """The version's rows: the previous version's that stay (in their order), then the new ones (in rank order)."""
    new: list[dict[str, Any]]
    decontamination: Decontamination
    left: dict[str, list[dict[str, Any]]]
    """Rows of the previous version that left, by reason (a key of LEFT_REASONS)."""
    not_published: dict[str, int]
    """This build's curated rows that did not make it: `repeats` (an earlier version's), `contaminated`,
    `outranked`."""

    @property
    def changed(self) -> bool:
        return bool(self.new) or any(self.left.values())


_BUILD_LOCAL_ID = re.compile(r"^r\d+-a\d+$")


def row_key(row: dict[str, Any]) -> str:
    """A row's id across versions: its `id` (a content hash, unique across versions). Rows published before ids were
    content hashes carry a build-local `r<round>-a<attack>` id, which is qualified with its version: `v1/r00-a0003`."""
    rid = str(row["id"])
    return f"{row['version']}/{rid}" if row.get("version") and _BUILD_LOCAL_ID.match(rid) else rid


def decontamination_settings(config: dict[str, Any]) -> DecontaminationConfig | None:
    """The build's `decontamination` block (None when its config predates decontamination)."""
    block = config.get("decontamination")
    if block is None:
        return None
    settings = from_dict(DecontaminationConfig, block, prefix="decontamination.")
    settings.validate("decontamination", domain=config["domain"])
    return settings


def plan_release(
    config: dict[str, Any],
    curated: list[dict[str, Any]],
    earlier: list[dict[str, Any]],
    version: str,
    *,
    decontamination: DecontaminationConfig | None = None,
    reference: Reference | None = None,
) -> Plan:
    """Re-curate the previous version's rows with the build's novel rows, after decontaminating both: at most
    `curation.target_size` rows, ranked by the build's curation policy; rows keep the version they first appeared
    in."""
    # A row whose id an earlier version holds is that row again (same recipe, same question): never published twice.
    published = {row_key(row) for row in earlier}
    candidates = [
        {**row, "version": None}
        for row in novel_rows(curated, earlier, config["novelty"])
        if row_key(row) not in published
    ]
    settings = decontamination or decontamination_settings(config)
    pool = earlier + candidates
    if settings is None:
        logger.warning(
            "The build's config.yaml has no decontamination block (it predates decontamination): the rows are not"
            " checked against evaluation benchmarks"
        )
        checked = Decontamination(
            pool,
            [],
            DecontaminationConfig(enabled=False),
            skipped="the build's config has no decontamination settings (it predates them)",
        )
    else:
        embedder = None
        if settings.enabled and settings.embedding_threshold is not None and pool:
            from builder.novelty import load_embedder

            embedder = load_embedder(config["novelty"]["model"])
        checked = decontaminate(pool, settings, domain=config["domain"], embedder=embedder, reference=reference)
    policy = from_dict(CurationConfig, config["curation"], prefix="curation.")
    ranked = curate(checked.clean, policy)
    kept = {row_key(row) for row in ranked}
    dirty = {row_key(row) for row in checked.contaminated}
    new = [{**row, "version": version} for row in ranked if not row.get("version")]
    left: dict[str, list[dict[str, Any]]] = {reason: [] for reason in LEFT_REASONS}
    for row in earlier:
        if row_key(row) not in kept:
            reason = (
                "contaminated" if row_key(row) in dirty else "ineligible" if not eligible(row, policy) else "outranked"
            )
            left[reason].append(row)
    dirty_new = sum(row_key(row) in dirty for row in candidates)
    return Plan(
        rows=[row for row in earlier if row_key(row) in kept] + new,
        new=new,
        decontamination=checked,
        left=left,
        not_published={
            "repeats": len(curated) - len(candidates),
            "contaminated": dirty_new,
            "outranked": len(candidates) - dirty_new - len(new),
        },
    )


def publish(
    output_dir: str | Path,
    repo_id: str,
    *,
    api: HfApi,
    private: bool = False,
    overwrite: bool = False,
    previous: Previous | None = None,
    decontamination: DecontaminationConfig | None = None,
    reference: Reference | None = None,
    hub_dir: str | None = None,
) -> Release | None:
    """Publish `output_dir` as the next version of `repo_id` (see the module docstring); None when the version
    would hold exactly the previous version's rows (a version identical to the last would be noise).

    `decontamination` overrides the build's settings; `reference` reuses benchmark questions already loaded;
    `hub_dir` (default: the build's own) is the local repository folder, for the card's commands.
    """
    config, summary, curated = read_build(output_dir)
    hub_dir = hub_dir or config.get("hub_dir")
    if previous is None:
        previous = preflight(api, repo_id, private=private, overwrite=overwrite)
    version = f"v{previous.number + 1}"
    plan = plan_release(
        config, curated, previous.rows or [], version, decontamination=decontamination, reference=reference
    )
    rows, new = plan.rows, plan.new
    if plan.decontamination.reference is not None:
        listed = BuildFolder(output_dir).write_contamination(plan.decontamination.contaminated, release=True)
        logger.info("Rows that match an evaluation benchmark: %s", listed)
    if not plan.changed and not overwrite:
        logger.warning(
            "%s: the build changes nothing in %s (no new row kept, none left); nothing was published",
            output_dir,
            repo_id,
        )
        return None
    if not overwrite and previous.number + 1 in version_tags(api, repo_id):
        # Someone published meanwhile: stop before uploading anything rather than mix two releases.
        raise PublishError(
            f"repo_id: {repo_id} already has tag {version}. Fix: run again to publish as the next version, "
            "or pass --overwrite to publish that tag again"
        )

    from builder import dataset_card  # the card module reads this one's Plan and Previous

    head = api.repo_info(repo_id, repo_type="dataset").sha
    files = {
        BuildFolder.DATA: _parquet_bytes(rows),
        "README.md": dataset_card.render(repo_id, version, config, summary, plan, previous, hub_dir=hub_dir).encode(),
        "nanoflux_config.yaml": yaml.safe_dump(public_config(config), sort_keys=False).encode(),
        "provenance.json": (
            json.dumps(
                provenance(
                    repo_id,
                    version,
                    config,
                    summary,
                    output_dir,
                    previous,
                    plan,
                    dataset_card.history(version, config, plan, previous),
                ),
                indent=2,
                ensure_ascii=False,
            ).encode()
        ),
    }
    if plan.decontamination.reference is not None:
        # Ids and matches only: the texts would put benchmark questions into the dataset repo.
        files["contaminated.jsonl"] = report(plan.decontamination.contaminated, texts=False)
    left = sum(len(v) for v in plan.left.values())
    try:
        commit = api.create_commit(
            repo_id,
            repo_type="dataset",
            operations=[CommitOperationAdd(path, io.BytesIO(content)) for path, content in files.items()],
            commit_message=f"NanoFlux {version}: {len(new)} new rows, {len(rows)} in all"
            + (f", {left} left" if left else ""),
            parent_commit=head,  # someone else published meanwhile: fail rather than mix two releases
        )
        if overwrite and previous.number + 1 in version_tags(api, repo_id):
            api.delete_tag(repo_id, tag=version, repo_type="dataset")
        api.create_tag(
            repo_id, tag=version, revision=commit.oid, repo_type="dataset", tag_message=f"NanoFlux {version}"
        )
    except HfHubHTTPError as err:
        raise PublishError(
            f"publishing {repo_id} {version} failed ({_short(err)}); no version was created. "
            f"Fix: run `nanoflux publish {output_dir} --repo_id {repo_id}` again"
        ) from None
    logger.info(
        "Published %s %s: %d rows (%d new, %d left), commit %s",
        repo_id,
        version,
        len(rows),
        len(new),
        left,
        commit.oid[:12],
    )
    return Release(repo_id, version, commit.oid, len(rows), len(new), left, len(plan.decontamination.contaminated))


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The build config as uploaded: endpoint URLs without credentials or query strings, no local paths, and no
    publish target, so that `nanoflux build --config nanoflux_config.yaml` rebuilds and never publishes."""
    public = {**config, "output_dir": None, "hub_dir": None, "push_to_hub": None}
    if isinstance(config.get("novelty"), dict):
        public["novelty"] = {**config["novelty"], "bank": _public_path(config["novelty"].get("bank"))}
    for role in ("player_a", "player_b", "judge"):
        public[role] = {**config[role], "base_url": public_url(config[role]["base_url"])}
    if isinstance(config.get("decontamination"), dict):
        public["decontamination"] = {
            **config["decontamination"],
            "eval_recipe": _public_path(config["decontamination"].get("eval_recipe")),
        }
    return public


def _public_path(path: str | None) -> str | None:
    """A path as it may be published: relative ones (configs/eval/medical.yaml) and Hub ids as they are, an absolute
    local path as its file name only."""
    return Path(path).name if path and Path(path).is_absolute() else path


def public_decontamination(summary: dict[str, Any]) -> dict[str, Any]:
    """`Decontamination.summary()` without local absolute paths (for the card and provenance)."""
    if not summary.get("checked"):
        return summary
    return {
        **summary,
        "eval_recipe": _public_path(summary["eval_recipe"]),
        "settings": {**summary["settings"], "eval_recipe": _public_path(summary["settings"]["eval_recipe"])},
        "benchmarks": [{**b, "path": _public_path(b["path"])} for b in summary["benchmarks"]],
    }


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    to_dataset(rows).to_parquet(buffer)
    return buffer.getvalue()


# --- card and provenance ---------------------------------------------------------------------------------


def _role_id(role: dict[str, Any]) -> str:
    from builder.config import RoleConfig

    return RoleConfig(**role).display_id()


def provenance(
    repo_id: str,
    version: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    output_dir: str | Path,
    previous: Previous,
    plan: Plan,
    changelog: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Machine-readable provenance: who played, with which settings and prompts, on which packages; never a key.
    `changelog` ({version: lines}, every version so far) is what the next version's card continues."""
    run_file = BuildFolder(output_dir).file(BuildFolder.RUN)
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    roles = {}
    for name in ("player_a", "player_b", "judge"):
        role = config[name]
        roles[name] = {
            "id": _role_id(role),
            "backend": role["backend"],
            "model": role["model"],
            "base_url": public_url(role["base_url"]),
            "generation": {k: role[k] for k in ("max_tokens", "temperature", "top_p", "structured_output")},
        }
    packages = package_versions(PROVENANCE_PACKAGES)
    return {
        "repo_id": repo_id,
        "version": version,
        "parent": {"version": previous.tag, "commit": previous.commit} if previous.tag else None,
        "rows": len(plan.rows),
        "new_rows": len(plan.new),
        "target_size": config["curation"]["target_size"],
        "left": {reason: [row_key(row) for row in rows] for reason, rows in plan.left.items()},
        "not_published": plan.not_published,
        "domain": config["domain"],
        "roles": roles,
        "prompt_hashes": summary["prompt_hashes"],
        "judge_tools": config["judge_tools"],
        "sandbox": config["sandbox"],
        "novelty": public_config(config)["novelty"],
        "curation": config["curation"],
        "seed": config.get("seed"),
        "decontamination": public_decontamination(plan.decontamination.summary()),
        "recipe_fingerprint": run.get("fingerprint"),
        "counts": {
            k: summary[k]
            for k in ("attacks", "generated", "novel", "judged_ok", "kept", "judge_status", "tokens", "retries")
        },
        "packages": packages,
        "build_wall_time_s": (
            (summary.get("build") or {}).get("wall_time_s", summary["wall_time_s"])
        ),  # every run of the build
        "build_runs": summary.get("runs"),
        "changelog": changelog,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(
    output_dir: str,
    repo_id: str,
    *,
    hub_dir: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    decontamination: DecontaminationConfig | None = None,
) -> Release | None:
    """`nanoflux publish`: publish (or retry publishing) a finished build (`decontamination` overrides its
    settings)."""
    config, _, _ = read_build(output_dir)  # fail on an unfinished build, or bad settings, before touching the repo
    if decontamination is not None:
        decontamination.validate("decontamination", domain=config["domain"])
    else:
        decontamination_settings(config)
    # One writer per folder: a build still writing it (or another publish) makes this fail at once, naming the holder.
    with locked(output_dir, "publish"), open_target(hub_dir) as api:
        return publish(
            output_dir,
            repo_id,
            api=api,
            private=private,
            overwrite=overwrite,
            decontamination=decontamination,
            hub_dir=hub_dir,
        )


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux publish OUTPUT_DIR --repo_id ORG/NAME [--hub_dir DIR] [--private] [--overwrite]`."""
    release = main(args.output_dir, args.repo_id, hub_dir=args.hub_dir, private=args.private, overwrite=args.overwrite)
    if release:
        print(
            f"{release.repo_id} {release.version}: {release.num_rows} rows ({release.new_rows} new), commit"
            f" {release.commit}"
        )
