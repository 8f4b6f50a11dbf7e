"""The build's summary: what the rounds produced, what the calls and endpoints did (`summary.json`), and its log lines.

`summarize` counts from the rows and the run's context only, so a resumed build reports the whole build; the run's
own share (calls sent, tokens) goes to `runs.json` (`builder/runfolder.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from builder.config import BuildConfig
from builder.dataset import DEFENDER_STATUSES, JUDGE_STATUSES
from builder.rounds import Context, defender_record, players
from nanoflux.chat import ChatClient

logger = logging.getLogger(__name__)


def endpoint_report(clients: dict[str, ChatClient]) -> list[dict[str, Any]]:
    """Per endpoint client (roles on one endpoint share one): what serves it, the structured-output mode sent, the
    HTTP attempts it made (retries included), tokens, and what the adaptive concurrency limit did."""
    report = []
    for client in {id(c): c for c in clients.values()}.values():
        stats = getattr(client, "stats", None)
        if stats is None or not hasattr(stats, "attempts"):  # the embedded model: no HTTP
            continue
        server, limit = getattr(client, "server", None), getattr(client, "concurrency", None)
        report.append(
            {
                "roles": sorted(name for name, c in clients.items() if c is client),
                "server": dataclasses.asdict(server) if server else None,
                "attempts": stats.attempts,
                "attempts_by_role": dict(stats.attempts_by_role),
                "retries": stats.retries,
                "errors_by_kind": dict(stats.errors_by_kind),
                "probes": stats.probes,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "concurrency": dataclasses.asdict(limit.stats) if limit is not None else None,
            }
        )
    return report


def summarize(
    config: BuildConfig, rows: list[dict[str, Any]], kept: list[dict[str, Any]], ctx: Context, wall_s: float
) -> dict[str, Any]:
    endpoints = endpoint_report(ctx.caller.clients)
    judged = [r for r in rows if r.get("judge_status")]
    statuses = Counter(r["judge_status"] for r in judged)
    tokens: dict[str, dict[str, int]] = {}
    for role in ("attacker", "defender", "judge"):
        tokens[role] = {
            kind: sum(r.get(f"{role}_{kind}_tokens") or 0 for r in rows) for kind in ("prompt", "completion")
        }
    per_round = []
    for r in range(config.rounds):
        in_round = [row for row in rows if row["round"] == r]
        answered = defender_record(in_round, players(r)[1])
        per_round.append(
            {
                "round": r,
                "attacker": players(r)[0],
                "generated": len(in_round),
                "novel": sum(row["novel"] for row in in_round),
                "judged_ok": sum(row.get("judge_status") == "ok" for row in in_round),
                "valid": sum(bool(row.get("question_valid")) for row in in_round),
                "kept": sum(row["round"] == r for row in kept),
                "defender_failure_rate": (
                    (sum(not row["defender_correct"] for row in answered) / len(answered)) if answered else None
                ),
                "targets": dict(Counter(row["capability"] for row in in_round)),
            }
        )
    return {
        "attacks": config.rounds * config.attacks_per_round,
        "attack_errors": ctx.counts["attack_error"],
        "attack_parse_errors": ctx.counts["attack_parse_error"],
        "attack_refusals": ctx.counts["attack_refused"],
        "generated": len(rows),
        "not_novel": ctx.counts["not_novel"],
        "novel": len(rows) - ctx.counts["not_novel"],
        "defender_status": {
            status: sum(r.get("defender_status") == status for r in rows) for status in DEFENDER_STATUSES
        },
        "judge_status": {status: statuses.get(status, 0) for status in JUDGE_STATUSES},
        "judged_ok": statuses.get("ok", 0),
        "valid": sum(bool(r.get("question_valid")) for r in rows),
        "validity_decided_by": dict(Counter(r["validity_decided_by"] for r in rows if r.get("validity_decided_by"))),
        "kept": len(kept),
        "target_size": config.curation.target_size,
        "per_round": per_round,
        "tokens": tokens,
        "calls_answered": ctx.caller.stats.calls_sent,
        "calls_sent": sum(e["attempts"] for e in endpoints) if endpoints else ctx.caller.stats.calls_sent,
        "calls_replayed": ctx.caller.stats.calls_replayed,
        "endpoints": endpoints,
        "retries": sum(rec.get("retries", 0) for rec in ctx.caller.journal.records.values()),
        "endpoint_failures": dict(ctx.caller.stats.endpoint_failures),
        "prompt_hashes": ctx.prompts.hashes(),
        "wall_time_s": round(wall_s, 2),
    }


def log_summary(summary: dict[str, Any], output_dir: Path) -> None:
    s = summary
    logger.info(
        "Build finished in %.1fs: %d attacks -> %d generated -> %d novel -> %d judged ok -> %d valid -> %d kept"
        " (target %d)",
        s["wall_time_s"],
        s["attacks"],
        s["generated"],
        s["novel"],
        s["judged_ok"],
        s["valid"],
        s["kept"],
        s["target_size"],
    )
    logger.info(
        "Defender answers %s; validity decided by %s", s["defender_status"], s["validity_decided_by"] or "nothing"
    )
    decontamination = s.get("decontamination") or {}
    if decontamination.get("checked"):
        found = decontamination["contaminated"]
        logger.info(
            "Decontamination against %s: %d of %d candidate rows dropped %s",
            decontamination["eval_recipe"],
            found["rows"],
            decontamination["rows_checked"],
            found,
        )
    logger.info(
        "Attack errors %d, unparseable %d, refused %d; not novel %d; judge status %s",
        s["attack_errors"],
        s["attack_parse_errors"],
        s["attack_refusals"],
        s["not_novel"],
        s["judge_status"],
    )
    logger.info(
        "Calls sent %d (HTTP attempts to endpoints, retries included; answered %d), replayed from journal %d, retries"
        " %d, endpoint failures %s",
        s["calls_sent"],
        s["calls_answered"],
        s["calls_replayed"],
        s["retries"],
        s["endpoint_failures"] or "none",
    )
    for endpoint in s["endpoints"]:
        server = endpoint["server"] or {}
        logger.info(
            "Endpoint of %s: %s, structured output %s (%s); peak concurrency %s",
            "/".join(endpoint["roles"]),
            server.get("server", "?"),
            server.get("mode", "?"),
            server.get("evidence", "?"),
            (endpoint["concurrency"] or {}).get("peak_in_flight", "?"),
        )
    for role, t in s["tokens"].items():
        logger.info("Tokens %-8s in %7d  out %7d", role, t["prompt"], t["completion"])
    logger.info("Dataset: %s (curated.jsonl, data/train-*.parquet; every example in pool/)", output_dir)
