"""Build a NanoFlux dataset: Attacker / Defender / tool-augmented Judge rounds, novelty filtering, curation.

Usage:
    nanoflux build --config configs/local.yaml                          # embedded default, CPU, no network
    nanoflux build --config configs/medical.yaml                        # endpoints named in the recipe
    nanoflux build --config configs/medical.yaml --rounds 3 --curation.target_size 150 --judge.base_url http://host:8080

In round r player A attacks and player B defends; in round r+1 they swap. Each attack: the Attacker, shown how the
player it now attacks did on earlier valid questions, writes a question aimed at a capability and complexity chosen
from that player's failure rates (`targeting`), with reference answer and annotated explanation; the novelty filter
drops near-duplicates; the Defender answers while the Judge solves the question blind (for numbers it writes the
verification program that runs in the sandbox); then the Judge sees the reference, both answers and the tool results
and grades. Tool verdicts override the Judge's word, and each row records what decided. Every finished call is
journaled, so a killed build resumes where it stopped (`--fresh` starts over).

This module runs a build top to bottom: pre-flight, the run folder (its files: `builder/build_folder.py`), the rounds
(`builder/rounds.py`, each role a task of `builder/roles/`), decontamination and curation, the summary
(`builder/summary.py`), publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from builder import publish, roles, runfolder, sandbox
from builder.build_folder import BuildFolder
from builder.calls import Caller
from builder.config import BuildConfig, RoleConfig, build_config
from builder.corpus import Corpus, packaged_corpus
from builder.curation import curate, eligible
from builder.dataset import assign_ids
from builder.decontamination import Reference, decontaminate, load_reference
from builder.novelty import NoveltyFilter, embed, load_embedder, read_bank
from builder.rounds import CALLS_PER_ATTACK, Context, Tasks, run_rounds
from builder.sandbox import SandboxLimits
from builder.screen import Screen
from builder.summary import log_summary, summarize
from nanoflux.chat import ChatClient
from nanoflux.errors import NanoFluxError
from nanoflux.hub import open_target
from nanoflux.journal import Journal
from nanoflux.progress import Progress
from nanoflux.recipe import to_dict
from nanoflux.runfolder import claim, fingerprint, hold
from nanoflux.runfolder import release as release_folder

logger = logging.getLogger(__name__)


class BuildError(NanoFluxError, RuntimeError):
    """A build that produced nothing useful: the message gives the cause (role, model, the server's own words) and
    the fix. What was journaled is kept, so a re-run after the fix resumes."""


# Fields that change how requests are sent, not what they return: changing them does not invalidate a journal.
TRANSPORT_FIELDS = ("max_concurrency", "timeout", "max_attempts", "token_env", "structured_output")
# Where the result goes, not what it is.
PUBLISH_FIELDS = ("output_dir", "push_to_hub", "hub_dir", "private")
# Curation (its policy includes `target_size`) runs after the rounds, on the journaled rows (nothing in a round
# depends on it): changing it re-curates a finished build without a single new call.
CURATION_FIELDS = ("curation", "decontamination")


# --- the run's identity ----------------------------------------------------------------------------------


def recipe_fingerprint(config: BuildConfig, prompt_hashes: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """sha256 of everything that decides what the rounds generate (not where it goes, how it is sent or curated)."""
    data = to_dict(config)
    for name in (*PUBLISH_FIELDS, *CURATION_FIELDS):
        data.pop(name)
    data["prompt_hashes"] = prompt_hashes
    # Benchmark questions in the novelty bank change which attacks are judged: then (only) it is part of the identity.
    data["benchmarks_in_novelty_bank"] = config.decontamination.enabled and config.decontamination.seed_novelty_bank
    for role in ("player_a", "player_b", "judge"):
        for name in TRANSPORT_FIELDS:
            data[role].pop(name)
    return fingerprint(data), data


def prepare_output_dir(config: BuildConfig, prompts: roles.PromptSet, fresh: bool) -> Path:
    """Create or reopen the output dir, locked for this run (one writer per folder: the kernel's `hold`; main releases
    it with `release_folder`); refuse to resume a different recipe unless `fresh` (the kernel's `claim`). State files
    are written atomically; a damaged run.json raises DamagedStateFile (path and fix)."""
    output_dir = Path(config.output_dir)
    folder = BuildFolder(output_dir)
    _, identity = recipe_fingerprint(config, prompts.hashes())
    hold(output_dir, "build")  # FolderBusy at once when another process builds or publishes here

    def discard() -> None:
        folder.discard_outputs()
        runfolder.clear(output_dir)

    try:
        if claim(
            output_dir,
            identity,
            fresh=fresh,
            discard=discard,
            what="a build",
            damaged_fix=runfolder.doctor_fix(output_dir),
        ):
            logger.info("Resuming the build in %s", output_dir)
        folder.write_config(config)
    except BaseException:
        release_folder(output_dir)
        raise
    return output_dir


# --- clients ---------------------------------------------------------------------------------------------


def make_clients(config: BuildConfig) -> dict[str, ChatClient]:
    """One client per role; roles with the same endpoint and transport settings (or all on the embedded model)
    share one, so that its concurrency bound and its batching apply to all of their requests together."""
    shared: dict[tuple, ChatClient] = {}
    clients = {}
    for name in ("player_a", "player_b", "judge"):
        role: RoleConfig = getattr(config, name)
        key = (
            role.backend,
            role.base_url,
            role.model,
            role.structured_output,
            *(getattr(role, f) for f in TRANSPORT_FIELDS),
        )
        if role.backend == "embedded":
            key = ("embedded", role.model)
        if key not in shared:
            shared[key] = _make_client(name, role)
        clients[name] = shared[key]
    return clients


def _make_client(name: str, role: RoleConfig) -> ChatClient:
    if role.backend == "embedded":
        # The packaged GGUF under a managed llama.cpp server on loopback (one per process and model), reached through
        # the same EndpointClient as any endpoint; at most llama_engine.SLOTS requests in flight (it serves one at a
        # time).
        from builder.llama_engine import engine_client

        return engine_client(
            name,
            role.model,
            max_concurrency=role.max_concurrency,
            timeout=role.timeout,
            max_attempts=role.max_attempts,
        )
    from nanoflux.retries import RetryPolicy
    from nanoflux.transport import EndpointClient

    return EndpointClient(
        name=name,
        base_url=role.base_url,
        model=role.model,
        token_env=role.token_env,
        max_concurrency=role.max_concurrency,
        retry=RetryPolicy(max_attempts=role.max_attempts, timeout=role.timeout),
        structured_output=role.structured_output,
    )


# --- outcome ---


def check_outcome(config: BuildConfig, summary: dict[str, Any], causes: Counter) -> None:
    """Raise BuildError when the build produced nothing useful: more than `max_failed_share` of the attacks failed,
    or no example was judged, or nothing was kept. The summary is already written, and the journal keeps every
    finished call."""
    failed = summary["attack_errors"] + summary["attack_parse_errors"] + summary["attack_refusals"]
    cause = f" Most common cause ({causes.most_common(1)[0][1]}x): {causes.most_common(1)[0][0]}." if causes else ""
    if failed > config.max_failed_share * summary["attacks"]:
        raise BuildError(
            f"{failed} of {summary['attacks']} attacks failed (max_failed_share {config.max_failed_share}).{cause}"
            " Fix: check the role's endpoint, model and structured_output, then re-run: finished calls are not sent"
            " again."
        )
    if summary["judged_ok"] == 0:
        raise BuildError(
            f"no example was judged (judge status {summary['judge_status']}, defender"
            f" {summary['defender_status']}).{cause} Fix: check the Judge's endpoint and model (the examples' `error`"
            " column in pool.jsonl says what failed)."
        )
    if summary["kept"] == 0:
        raise BuildError(
            f"nothing was kept: {summary['generated']} generated, {summary['not_novel']} near-duplicates (of this"
            f" build, the novelty bank or earlier versions), {summary['judged_ok']} judged, {summary['valid']} valid,"
            f" 0 in the curation bands (quality_levels {config.curation.quality_levels}, require_valid"
            f" {config.curation.require_valid}). The pool is in pool.jsonl. Fix: more rounds or attacks, stronger"
            " roles, or another curation (re-curating sends no call: e.g. --curation.quality_levels [3,4])."
        )


# --- main ------------------------------------------------------------------------------------------------


def main(config: BuildConfig, *, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) a build and write the curated dataset; returns the summary."""
    from builder.preflight import validate_inputs

    validate_inputs(config)  # every input readable and usable before any request or output file
    started = time.perf_counter()
    prompts = roles.load_prompts(config.domain, config.prompts)
    previous, earlier = _previous_version(config)
    # Pre-flight: untrusted programs run only under real confinement (bubblewrap or the kernel's layers), decided
    # before any call is sent; and the benchmarks to decontaminate against must load.
    sandbox_mode = sandbox.require_confinement(config.sandbox) if "python" in config.judge_tools else None
    reference: Reference | None = None
    if config.decontamination.enabled:
        reference = load_reference(config.decontamination.recipe_for(config.domain))
        if config.decontamination.seed_novelty_bank:
            earlier += reference.texts
    output_dir = prepare_output_dir(config, prompts, fresh)
    try:
        # This run's record: a resume adds its time and tokens to the earlier runs'.
        run_index = runfolder.begin_run(output_dir)
        ctx = _context(config, prompts, output_dir, earlier, reference)
        try:
            rows = asyncio.run(run_rounds(ctx))
        finally:
            ctx.close()
        assign_ids(rows, recipe_fingerprint(config, prompts.hashes())[0])  # stable: the same journal, the same ids
        kept, checked = _curate(config, rows, ctx, reference, output_dir)
        summary = summarize(config, rows, kept, ctx, time.perf_counter() - started)
        summary["decontamination"] = checked.summary()
        summary["sandbox"] = sandbox_mode
        summary["novelty_bank_version"] = (
            previous.tag if config.push_to_hub else None
        )  # earlier questions it was novel against
        runs = runfolder.end_run(
            output_dir,
            run_index,
            wall_time_s=summary["wall_time_s"],
            calls_sent=ctx.caller.stats.calls_sent,
            tokens={kind: ctx.caller.stats.tokens_sent[kind] for kind in ("prompt", "completion")},
        )
        summary["runs"], summary["build"] = runs, runfolder.run_totals(runs)
        BuildFolder(output_dir).write_summary(summary)
        log_summary(summary, output_dir)
        check_outcome(config, summary, ctx.causes)
        if config.push_to_hub:
            summary["release"] = _publish(config, output_dir, reference)
        return summary
    finally:
        release_folder(output_dir)  # the folder's lock, taken by prepare_output_dir, is held for the whole run


def _previous_version(config: BuildConfig) -> tuple[Any, list[str]]:
    """Pre-flight before any compute when publishing: the repo is writable, and its latest version (returned with
    its questions) joins the novelty bank."""
    if not config.push_to_hub:
        return None, []
    with open_target(config.hub_dir) as api:
        previous = publish.preflight(api, config.push_to_hub, private=config.private)
    return previous, [row["question"] for row in previous.rows or []]


def _context(
    config: BuildConfig, prompts: roles.PromptSet, output_dir: Path, earlier: list[str], reference: Reference | None
) -> Context:
    """What the rounds run with: the role tasks, the clients behind the journal, the tools, the novelty filter
    (over the recipe's bank and `earlier` questions), the background decontamination against `reference`."""
    logger.info("Loading the novelty embedder %s", config.novelty.model)
    embedder = load_embedder(config.novelty.model)
    bank = (read_bank(config.novelty.bank) if config.novelty.bank else []) + earlier
    progress = Progress(config.rounds * config.attacks_per_round * CALLS_PER_ATTACK, desc="calls")
    return Context(
        config=config,
        prompts=prompts,
        tasks=Tasks.of(prompts, config),
        corpus=Corpus.load(config.corpus or packaged_corpus(config.domain)),
        caller=Caller(config, make_clients(config), Journal(output_dir / BuildFolder.CALLS), progress),
        examples=Journal(output_dir / BuildFolder.EXAMPLES),
        tools=Journal(output_dir / BuildFolder.TOOLS),
        limits=SandboxLimits(
            wall_seconds=config.sandbox.wall_seconds,
            cpu_seconds=config.sandbox.cpu_seconds,
            memory_bytes=config.sandbox.memory_mb * 1024**2,
            allow_unconfined=config.sandbox.allow_unconfined,
        ),
        embedder=embedder,
        novelty=NoveltyFilter(config.novelty.threshold, bank=embed(embedder, bank) if bank else None),
        screen=Screen(reference, config.decontamination, embedder) if reference is not None else None,
    )


def _curate(
    config: BuildConfig, rows: list[dict[str, Any]], ctx: Context, reference: Reference | None, output_dir: Path
) -> tuple[list[dict[str, Any]], Any]:
    """Decontaminate, curate and write the pool, the curated dataset and the contamination report; (kept, check)."""
    # Only rows curation could keep are checked: a contaminated row must not take a slot a clean one could have had.
    # Their matches were mostly found while the build ran (the screen); the rest are found now.
    candidates = [row for row in rows if eligible(row, config.curation)]
    checked = decontaminate(
        candidates,
        config.decontamination,
        domain=config.domain,
        embedder=ctx.embedder,
        reference=reference,
        matches=ctx.screen.matches(candidates) if ctx.screen is not None else None,
    )
    contaminated_ids = {row["id"] for row in checked.contaminated}
    kept = curate([row for row in rows if row["id"] not in contaminated_ids], config.curation)
    folder = BuildFolder(output_dir)
    folder.write_pool(rows)
    folder.write_curated(kept)
    folder.write_contamination(checked.contaminated)
    return kept, checked


def _publish(config: BuildConfig, output_dir: Path, reference: Reference | None) -> dict[str, Any] | None:
    """The build is safe on disk; if this fails, `nanoflux publish <output_dir>` retries without rebuilding.
    publish() reads the repo's latest version again: it may have moved on during a long build."""
    with open_target(config.hub_dir) as api:
        release = publish.publish(output_dir, config.push_to_hub, api=api, private=config.private, reference=reference)
    return dataclasses.asdict(release) if release else None


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux build [--config RECIPE] [--fresh] [--field value ...]`."""
    main(build_config(args.config, overrides), fresh=args.fresh)
