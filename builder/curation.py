"""Curation: which judged examples make the dataset, in a documented, deterministic order.

Policy (each step a `curation` recipe field):
1. only rows the Judge handled (`judge_status == "ok"`) and that passed the novelty filter;
2. `require_valid`: only questions the Judge (and its tools) validated;
3. `quality_levels`: reasoning-quality level in the listed bands (L4 = score 3.5-4.49 by default);
4. `complexity_levels`: judge-rated complexity in the listed levels (all when null);
5. rank: questions the Defender failed first (`prefer_defender_failed`), then by round and attack index;
6. keep the first `target_size`.
"""

from __future__ import annotations

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


def curate(rows: list[dict[str, Any]], policy: CurationConfig, target_size: int) -> list[dict[str, Any]]:
    """The curated rows: same pool and settings always give the same rows in the same order."""
    kept = [row for row in rows if eligible(row, policy)]
    kept.sort(key=lambda row: (policy.prefer_defender_failed and bool(row["defender_correct"]), row["round"], row["attack_index"]))
    return kept[:target_size]
