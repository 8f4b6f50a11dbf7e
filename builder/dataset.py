"""The example row: its columns (one explicit schema, so even an empty dataset has them all) and the writers."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, List, Value

from nanoflux.questions import build_prompt

JUDGE_STATUSES = ("ok", "parse_error", "refused", "error", "tool_error")
DEFENDER_STATUSES = ("ok", "unparseable", "refused", "error")

# Column -> (feature, description). The descriptions are the README's and the dataset card's column table.
COLUMNS: dict[str, tuple[Any, str]] = {
    "id": (
        Value("string"),
        (
            "stable row id: a hash of the question (normalised) and the build's recipe fingerprint; unique across"
            " versions"
        ),
    ),
    "round": (Value("int32"), "round number, from 0"),
    "attack_index": (
        Value("int32"),
        "attack number within the round (with `round`: where in its build the row was made)",
    ),
    "domain": (Value("string"), "math, science, medical, ..."),
    "capability": (Value("string"), "reasoning skill the Attacker was asked to target"),
    "target_complexity": (Value("int32"), "complexity level (1-5) the Attacker was asked for"),
    "attacker": (Value("string"), "player who attacked (player_a / player_b)"),
    "defender": (Value("string"), "player who defended"),
    "attacker_model": (Value("string"), "attacker's model id / endpoint"),
    "defender_model": (Value("string"), "defender's model id / endpoint"),
    "judge_model": (Value("string"), "judge's model id / endpoint"),
    "question": (Value("string"), "the Attacker's question (multiple choice: the stem, without its options)"),
    "options": (List(Value("string")), "multiple choice: the option texts, A first (empty otherwise)"),
    "reference_answer": (Value("string"), "the Attacker's answer (a number, an option letter or text)"),
    "explanation": (Value("string"), "the Attacker's step-by-step annotated rationale"),
    "verification_code": (Value("string"), "the Judge's own verification program, written blind (may be empty)"),
    "defender_reasoning": (Value("string"), "the Defender's reasoning"),
    "defender_answer": (Value("string"), "the Defender's final answer (null: no usable answer)"),
    "defender_status": (
        Value("string"),
        "ok / unparseable / refused / error: whether the Defender gave a usable answer",
    ),
    "defender_correct": (Value("bool"), "Defender's answer matches the reference (null: no usable answer)"),
    "correctness_decided_by": (
        Value("string"),
        "answer_check (deterministic check against the key) or judge (free text)",
    ),
    "judge_defender_correct": (Value("bool"), "the Judge LLM's own view of the Defender's answer"),
    "judge_blind_answer": (Value("string"), "the Judge's own answer, given before it saw the reference"),
    "judge_blind_agrees": (Value("bool"), "the Judge's blind answer matches the reference (null: free text)"),
    "judge_reference_correct": (Value("bool"), "the Judge's ruling on the reference once it saw it"),
    "judge_own_error": (
        Value("string"),
        "when the Judge ruled the reference right against its blind answer: its mistake",
    ),
    "question_valid": (
        Value("bool"),
        "the question is sound and its reference answer right (see validity_decided_by)",
    ),
    "validity_decided_by": (
        Value("string"),
        "python (the Judge's program), blind_solve, judge_ruling, judge or format",
    ),
    "reference_verified": (
        Value("bool"),
        "the Judge's verification program's output matched the reference (null: not run)",
    ),
    "judge_scores": (List({"name": Value("string"), "score": Value("int32")}), "per-criterion rubric scores (1-5)"),
    "reasoning_quality": (Value("float32"), "mean of the rubric scores (1-5)"),
    "quality_level": (Value("int32"), "band of reasoning_quality: L1..L5 as 1..5 (L4 = 3.5-4.49)"),
    "judge_complexity": (Value("int32"), "complexity (1-5) as rated by the Judge"),
    "judge_rationale": (Value("string"), "the Judge's rationale"),
    "judge_status": (Value("string"), "ok / parse_error / refused / error / tool_error (null: not judged)"),
    "tool_calls": (
        List(
            {
                "tool": Value("string"),
                "input": Value("string"),
                "output": Value("string"),
                "ok": Value("bool"),
                "error": Value("string"),
            }
        ),
        "the Judge's tool uses and their results",
    ),
    "novel": (Value("bool"), "passed the novelty filter"),
    "novelty_similarity": (Value("float32"), "cosine similarity to the nearest earlier question"),
    "attacker_prompt_tokens": (Value("int32"), "tokens in the Attacker's prompts"),
    "attacker_completion_tokens": (Value("int32"), "tokens the Attacker generated"),
    "defender_prompt_tokens": (Value("int32"), "tokens in the Defender's prompts"),
    "defender_completion_tokens": (Value("int32"), "tokens the Defender generated"),
    "judge_prompt_tokens": (Value("int32"), "tokens in the Judge's prompts"),
    "judge_completion_tokens": (Value("int32"), "tokens the Judge generated"),
    "error": (Value("string"), "what went wrong, when something did"),
    "created_at": (Value("string"), "when the question was generated (UTC, ISO 8601)"),
    "judged_at": (Value("string"), "when the Judge finished (UTC, ISO 8601)"),
    "version": (Value("string"), "dataset version in which the row first appeared (set when published)"),
    "messages": (
        List({"role": Value("string"), "content": Value("string")}),
        "SFT conversation: question -> annotated reasoning and answer",
    ),
}

FEATURES = Features({name: feature for name, (feature, _) in COLUMNS.items()})
SCHEMA = FEATURES.arrow_schema


ID_LENGTH = 16
"""Hex digits of a row id: 64 bits, so two different questions share an id with odds of about n²/2⁶⁵."""


def normalise_question(question: str, options: Sequence[str] = ()) -> str:
    """What a row id hashes: the question and its options, NFKC, case-folded, whitespace collapsed (so a re-typed
    copy of the same question is the same question)."""
    text = "\n".join([question, *options])
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def row_id(question: str, fingerprint: str, options: Sequence[str] = (), repeat: int = 0) -> str:
    """A row's id: sha256 of the build's recipe fingerprint and the normalised question, `ID_LENGTH` hex digits.

    The same question from another recipe gets another id; a resumed build (same fingerprint, same journaled
    questions) gets the same ids. `repeat` counts earlier rows of the same build with the same question (the novelty
    filter drops them, but the pool keeps them), so ids stay unique within a build too.
    """
    key = f"{fingerprint}\n{normalise_question(question, options)}" + (f"\n#{repeat}" if repeat else "")
    return hashlib.sha256(key.encode()).hexdigest()[:ID_LENGTH]


def assign_ids(rows: list[dict[str, Any]], fingerprint: str) -> None:
    """Set every row's `id` (rows in build order: round, then attack)."""
    seen: dict[str, int] = {}
    for row in rows:
        text = normalise_question(row["question"], row.get("options") or ())
        row["id"] = row_id(row["question"], fingerprint, row.get("options") or (), repeat=seen.get(text, 0))
        seen[text] = seen.get(text, 0) + 1


# The evaluation's answer kind for each builder answer format (free text has no evaluation kind: no instruction).
EVAL_KINDS = {"number": "number", "choice": "choice"}


def sft_messages(
    question: str, explanation: str, answer: str, *, options: Sequence[str] = (), answer_format: str = "choice"
) -> list[dict[str, str]]:
    """The `messages` column: the question exactly as evaluation puts it (same option layout, same answer
    instruction), then the annotated reasoning ending in `Final answer: <answer>`, which evaluation extracts."""
    kind = EVAL_KINDS.get(answer_format)
    user = build_prompt(question, options, kind) if kind else question
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"{explanation.strip()}\n\nFinal answer: {answer}"},
    ]


def to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """The rows as a `datasets.Dataset` with every column (also when there are none), typed by FEATURES."""
    table = pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in COLUMNS}, schema=SCHEMA)
    # A fingerprint of the rows' own content: datasets would otherwise hash the table through dill (slow, unused here).
    digest = hashlib.sha256(b"".join(json.dumps(row, sort_keys=True, default=str).encode() for row in rows))
    return Dataset(table, info=DatasetInfo(features=FEATURES), fingerprint=digest.hexdigest()[:16])


def write_rows(rows: list[dict[str, Any]], parquet_path: Path, jsonl_path: Path) -> Dataset:
    """Write rows as parquet and as JSON Lines, with every column even when there are no rows."""
    dataset = to_dataset(rows)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(parquet_path))
    with jsonl_path.open("w", encoding="utf-8") as f:
        # Arrow's own conversion: the rows iterating the Dataset gives, without its per-row formatting.
        for row in dataset.data.table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return dataset
