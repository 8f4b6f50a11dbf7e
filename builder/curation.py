"""Curation: which judged examples make the dataset, in a documented, deterministic order.

Policy (each step a `curation` recipe field):
1. only rows the Judge handled (`judge_status == "ok"`) and that passed the novelty filter;
2. `require_valid`: only questions the Judge (and its tools) validated;
3. `quality_levels`: reasoning-quality level in the listed bands (L4 = score 3.5-4.49 by default);
4. `complexity_levels`: judge-rated complexity in the listed levels (all when null);
5. rank: questions the Defender failed first (`prefer_defender_failed`), then the ones it solved, then the ones it
   gave no usable answer to (a format failure says nothing about the question's difficulty); within each, rows of
   earlier published versions first (a new version keeps what the last one had unless new rows outrank it), then
   by round and attack index;
6. `balance_capabilities`: take the ranked rows in turns across capabilities;
7. `target_size`: keep the first that many.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from builder.config import CurationConfig


def eligible(row: dict[str, Any], policy: CurationConfig) -> bool:
    if row.get("judge_status") != "ok" or not row["novel"]:
        return False
    if policy.require_valid and not row["question_valid"]:
        return False
    if row["quality_level"] not in policy.quality_levels:
        return False
    return policy.complexity_levels is None or row["judge_complexity"] in policy.complexity_levels


def _outcome_rank(row: dict[str, Any], policy: CurationConfig) -> int:
    """0: the Defender failed, 1: it solved, 2: it gave no usable answer (never ranked as a failure)."""
    correct = row.get("defender_correct")
    if correct is None:
        return 2
    return int(bool(correct)) if policy.prefer_defender_failed else 0


def _version_rank(row: dict[str, Any]) -> float:
    """Rows of published versions by version number (v1 first); rows not yet published last."""
    version = row.get("version") or ""
    return int(version[1:]) if version[1:].isdigit() else float("inf")


def rank_key(row: dict[str, Any], policy: CurationConfig) -> tuple:
    return (_outcome_rank(row, policy), _version_rank(row), row["round"], row["attack_index"])


def _balanced(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ranked rows in turns across capabilities (in order of each capability's best row), each keeping its rank."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["capability"]].append(row)
    queues = list(groups.values())
    out = []
    for turn in range(max((len(q) for q in queues), default=0)):
        out += [queue[turn] for queue in queues if turn < len(queue)]
    return out


def curate(rows: list[dict[str, Any]], policy: CurationConfig) -> list[dict[str, Any]]:
    """The curated rows (at most `policy.target_size`): same pool and policy always give the same rows in the same
    order."""
    kept = sorted((row for row in rows if eligible(row, policy)), key=lambda row: rank_key(row, policy))
    if policy.balance_capabilities:
        kept = _balanced(kept)
    return kept[: policy.target_size]
