"""The dataset card (`README.md` of a dataset version), rendered from the run's records and nothing else.

Every number and sentence on it comes from what was recorded: the build's `config.yaml` (the curation settings as
they were), its `summary.json` (the funnel, tokens, and the wall time of every run of the build, a resumed one
included: `runs.json`), the release plan (rows kept, new, left and why) and the previous version's provenance (the
changelog so far). The reproduce section names the config file shipped in the same commit (`nanoflux_config.yaml`,
no publish target in it) and the seed, so that its command rebuilds this version's build without publishing; the
publish command that follows carries every flag the target needs (`--hub_dir` for a local repository folder).
"""

from __future__ import annotations

import importlib.resources
import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from builder.build_folder import BuildFolder
from builder.dataset import COLUMNS
from builder.publish import LEFT_REASONS, Plan, Previous, public_config, public_decontamination, row_key

TEMPLATE = Path(
    str(importlib.resources.files("dataset_cards") / "dataset_card.md")
)  # package data: a wheel install has it
CONFIG_FILE = "nanoflux_config.yaml"
MAX_IDS_IN_CHANGELOG = 10
HUB_DIR_PLACEHOLDER = "HUB_DIR"
# Not part of what a recipe builds: where it goes (a changed output folder is no recipe change).
_TARGET_FIELDS = ("output_dir", "hub_dir", "push_to_hub", "private")


def _size_category(n: int) -> str:
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"


def _fence_safe(text: str) -> str:
    """Untrusted text goes into ```text blocks: break up any fence it contains so it cannot end the block."""
    return text.replace("```", "`\u200b``")


def _ids(rows: list[dict[str, Any]]) -> str:
    keys = [row_key(row) for row in rows]
    more = len(keys) - MAX_IDS_IN_CHANGELOG
    return ", ".join(keys[:MAX_IDS_IN_CHANGELOG]) + (f" and {more} more (all in provenance.json)" if more > 0 else "")


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


# --- changelog -------------------------------------------------------------------------------------------


def changelog(version: str, config: dict[str, Any], plan: Plan, previous: Previous) -> list[str]:
    """This version against the previous one, one fact per line (the version is the heading, not repeated)."""
    rows, new = plan.rows, plan.new
    lines = [
        f"{len(new)} new row{'' if len(new) == 1 else 's'}, {len(rows)} in all; "
        + (f"builds on {previous.tag} (commit {previous.commit[:12]})" if previous.tag else "first version")
    ]
    if previous.config:
        from nanoflux.recipe import changed_fields

        def recipe(c: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in public_config(c).items() if k not in _TARGET_FIELDS}

        changed = changed_fields(recipe(previous.config), recipe(config))
        lines.append(f"recipe changes since {previous.tag}: " + ("; ".join(changed) if changed else "none"))
    if previous.tag:
        carried = Counter(row["version"] for row in rows if row["version"] != version)
        by_version = ", ".join(f"{v}: {n}" for v, n in sorted(carried.items(), key=lambda kv: int(kv[0][1:])))
        lines.append(
            f"kept from {previous.tag}: {sum(carried.values())} of {_rows(len(previous.rows or []))}"
            + (f" (by first version, {by_version})" if len(carried) > 1 else "")
        )
    for reason, gone in plan.left.items():
        if gone:
            lines.append(f"left since {previous.tag}: {_rows(len(gone))} {LEFT_REASONS[reason]}: {_ids(gone)}")
    dropped = {k: n for k, n in plan.not_published.items() if n}
    if dropped:
        names = {
            "repeats": "repeating an earlier version",
            "contaminated": "matching an evaluation benchmark",
            "outranked": "outranked",
        }
        lines.append(
            f"rows of this build not published: {'; '.join(f'{_rows(n)} {names[k]}' for k, n in dropped.items())}"
        )
    return lines


def history(version: str, config: dict[str, Any], plan: Plan, previous: Previous) -> dict[str, list[str]]:
    """Every version's changelog so far, this one included ({version: lines}, oldest first)."""
    return {**(previous.history or {}), version: changelog(version, config, plan, previous)}


# --- reproduce -------------------------------------------------------------------------------------------


def _shown_dir(path: str | None) -> str | None:
    """A local repository folder as the card may show it: a relative path as typed, an absolute one as a placeholder
    (the card never carries this machine's paths)."""
    if path is None:
        return None
    return HUB_DIR_PLACEHOLDER if Path(path).is_absolute() else path


def reproduce(
    repo_id: str, version: str, config: dict[str, Any], summary: dict[str, Any], hub_dir: str | None
) -> dict[str, Any]:
    """The commands that rebuild this version's build from the config and seed pinned in this version's commit (no
    publishing), and the one that publishes such a build as the next version."""
    folder = f"{repo_id.split('/')[-1]}-{version}"
    shown = _shown_dir(hub_dir)

    def fetch(revision: str, files: list[str], dest: str) -> str:
        if shown is None:
            return (
                f"hf download {shlex.quote(repo_id)} {' '.join(files)} --repo-type dataset --revision {revision}"
                f" --local-dir {dest}"
            )
        args = ", ".join(json.dumps(a) for a in ("dataset", repo_id, revision, dest))
        code = f"from localhub import RepoStore; RepoStore({json.dumps(shown)}).checkout({args})"
        return f"python -c {shlex.quote(code)}"

    commands = [fetch(version, [CONFIG_FILE], folder)]
    build = f"nanoflux build --config {folder}/{CONFIG_FILE} --seed {config['seed']} --output_dir {folder}/build"
    notes = []
    earlier = summary.get("novelty_bank_version")
    if earlier:
        # Built with --push_to_hub: the repo's latest version then was in its novelty bank; a rebuild needs it too.
        bank = f"{folder}-novelty"
        commands.append(fetch(earlier, [BuildFolder.DATA], bank))
        build += f" --novelty.bank {bank}/{BuildFolder.DATA}"
        notes.append(
            f"This build also kept its questions novel against {earlier}'s rows (it was built with `--push_to_hub`),"
            " hence `--novelty.bank`."
        )
    commands.append(build)
    publish = f"nanoflux publish {folder}/build --repo_id {shlex.quote(repo_id)}" + (
        f" --hub_dir {shlex.quote(shown)}" if shown else ""
    )
    if shown == HUB_DIR_PLACEHOLDER:
        notes.append(f"`{HUB_DIR_PLACEHOLDER}` is the local repository folder this repo is stored in.")
    return {"commands": commands, "publish": publish, "notes": notes, "folder": folder}


# --- the card --------------------------------------------------------------------------------------------


def curation_facts(config: dict[str, Any]) -> dict[str, Any]:
    """The curation settings as they were, in words (each an exact statement of the build's `curation` block)."""
    c = config["curation"]
    levels = ", ".join(f"L{q}" for q in c["quality_levels"])
    return {
        "require_valid": bool(c["require_valid"]),
        "quality": f"reasoning-quality level {levels}",
        "complexity": (
            f"judge-rated complexity {', '.join(map(str, c['complexity_levels']))}"
            if c.get("complexity_levels")
            else "any judge-rated complexity"
        ),
        "ranking": (
            "questions the Defender failed first, then the ones it solved"
            if c["prefer_defender_failed"]
            else "in build order, whether or not the Defender failed"
        ),
        "balanced": bool(c.get("balance_capabilities")),
        "target_size": c["target_size"],
    }


def build_cost(summary: dict[str, Any]) -> dict[str, Any]:
    """The build's time and tokens over all its runs (`summary["build"]`); a summary from before run records has
    only its last run's numbers, and says so."""
    totals = summary.get("build")
    if totals:
        return {**totals, "per_run": [run.get("wall_time_s") for run in summary.get("runs") or []], "recorded": True}
    return {
        "runs": None,
        "interrupted": 0,
        "wall_time_s": summary["wall_time_s"],
        "calls_sent": summary.get("calls_answered"),
        "tokens": None,
        "per_run": [],
        "recorded": False,
    }


def render(
    repo_id: str,
    version: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    plan: Plan,
    previous: Previous,
    *,
    hub_dir: str | None = None,
) -> str:
    rows, new = plan.rows, plan.new
    domain = config["domain"]
    pretty_name = f"NanoFlux {domain} reasoning"
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license="apache-2.0",
        language=["en"],
        tags=["synthetic", "nanoflux", domain, "reasoning"],
        task_categories=["question-answering"],
        size_categories=[_size_category(len(rows))],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    )
    from builder.publish import _role_id

    by_player: dict[str, list[bool]] = {}
    for row in new:
        if row["defender_correct"] is not None:
            by_player.setdefault(row["defender"], []).append(not row["defender_correct"])
    sample = [
        {**row, "question": _fence_safe(row["question"]), "reference_answer": _fence_safe(row["reference_answer"])}
        for row in new[:3]
    ]
    versions = history(version, config, plan, previous)
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        pretty_name=pretty_name,
        repo_id=repo_id,
        version=version,
        domain=domain,
        num_rows=len(rows),
        new_rows=len(new),
        judge_tools=", ".join(config["judge_tools"]),
        curation=curation_facts(config),
        summary=summary,
        cost=build_cost(summary),
        defender_failure_by_player={p: f"{100 * sum(v) / len(v):.0f}%" for p, v in sorted(by_player.items())},
        quality_counts=Counter(row["quality_level"] for row in rows),
        complexity_counts=Counter(row["judge_complexity"] for row in rows),
        columns=[(name, description) for name, (_, description) in COLUMNS.items()],
        role_models={role: _role_id(config[role]) for role in ("player_a", "player_b", "judge")},
        prompt_hashes=summary["prompt_hashes"],
        novelty=config["novelty"],
        decontamination=public_decontamination(plan.decontamination.summary()),
        reproduce=reproduce(repo_id, version, config, summary, hub_dir),
        seed=config["seed"],
        changelog=list(reversed(versions.items())),  # newest first
        sample=sample,
    ).content
