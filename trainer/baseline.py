"""The full-benchmark fine-tuning baseline's data, and the guard that keeps every benchmark's test rows out of
training.

A baseline trains on a benchmark's own training data, asked exactly as `nanoflux eval` asks (the same
`nanoflux.questions.build_prompt`), with the benchmark's reasoning as the target where it has one (MedMCQA `exp`,
PubMedQA `long_answer`, GSM8K's solution): `<explanation>\\n\\nFinal answer: <gold>`. A benchmark without reasoning
(MedQA) gives answer-only targets; the training summary and the card record `targets: answer_only`.

Training never sees a benchmark's test rows: `check_baseline_source` refuses, before anything is loaded, a baseline
whose split is the one `nanoflux eval` scores that benchmark on (GSM-Hard and PubMedQA pqa_labeled have no other
split: their baselines are GSM8K's train split and PubMedQA's pqa_artificial), and `check_no_test_rows` refuses a
training set that asks a question of an evaluation recipe's test rows (the questions compared case- and
whitespace-folded).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nanoflux.errors import NanoFluxError
from nanoflux.recipe import fail
from nanoflux.rows import answer_target

logger = logging.getLogger(__name__)

# Benchmarks whose labelled rows are all evaluation rows at their default Hub location, keyed by (format, subset),
# with what to train a baseline on instead.
EVALUATION_ONLY = {
    ("gsm_hard", None): (
        "GSM-Hard has one split, and nanoflux eval scores all of it. Fix: train the baseline on GSM8K's "
        "training split instead: benchmark: {format: gsm8k, split: train}"
    ),
    ("pubmedqa", "pqa_labeled"): (
        "PubMedQA's pqa_labeled rows are its test and dev rows. Fix: train the baseline on "
        "PubMedQA's artificial training set: benchmark: {format: pubmedqa, subset: pqa_artificial, split: train}"
    ),
    ("genome_bench", None): (
        "Genome-Bench has one split (test), and nanoflux eval scores it. Fix: there is no Genome-Bench "
        "training split to fine-tune a baseline on; compare against the base model only"
    ),
}
# GSM-Hard's questions are GSM8K's test questions with larger numbers.
GSM8K_TEST_FIX = "GSM-Hard's 1,319 questions are GSM8K's test questions with larger numbers. Fix: use split: train"


@dataclass(frozen=True)
class BaselineData:
    """A baseline's training rows in TRL's prompt-completion conversational format, and what their targets hold."""

    rows: list[dict[str, Any]]
    targets: str
    """`reasoning` (every target has the benchmark's explanation), `answer_only` (none has) or `mixed`."""
    rows_with_reasoning: int
    prompt: str
    """`reasoning` (the user turn asks for step-by-step reasoning) or `answer_only`."""


def check_baseline_source(bench: Any, field_name: str = "benchmark") -> None:
    """Refuse a baseline on the rows `nanoflux eval` scores that benchmark on (its test rows); no I/O. A local file or
    another repo cannot be told apart here: `check_no_test_rows` compares its questions with an evaluation's.

    Raises:
        ConfigError: naming the field, the value and the training data to use instead.
    """
    from nanoflux.benchmark_formats import FORMATS

    preset = FORMATS[bench.format]
    if preset.path is None or bench.path != preset.path:
        return
    if bench.format == "gsm8k":  # a training source only (nanoflux eval scores GSM-Hard, not GSM8K)
        if bench.split == "test":
            reason, fix = GSM8K_TEST_FIX.split(" Fix: ")
            fail(f"{field_name}.split", bench.split, f"training on it would train on evaluation rows: {reason}", fix)
        return
    problem = EVALUATION_ONLY.get((bench.format, bench.subset if bench.format == "pubmedqa" else None))
    if problem is not None:
        reason, fix = problem.split(" Fix: ")
        fail(
            f"{field_name}.format",
            f"{bench.format} [{bench.subset or 'default'}]",
            f"training on it would train on evaluation rows: {reason}",
            fix,
        )
    if bench.split == preset.split and (preset.subset is None or bench.subset == preset.subset):
        fail(
            f"{field_name}.split",
            bench.split,
            f"this is the split nanoflux eval scores {preset.title} on, so the baseline would train on its test rows",
            "use the benchmark's training split, e.g. split: train",
        )


def baseline_rows(bench: Any, *, reasoning: bool = True, revision: str | None = None) -> BaselineData:
    """A benchmark's training rows: the user turn as `nanoflux eval` asks (reasoning on or off), the target the
    benchmark's explanation (when `reasoning` and it has one), then `Final answer: <gold>`."""
    from nanoflux.benchmarks import load_benchmark

    examples = load_benchmark(bench, reasoning=reasoning, revision=revision)
    rows, explained = [], 0
    for example in examples:
        # The question travels with the row for the test-row guard; SFT reads only prompt and completion.
        explanation = (example.explanation or "").strip() if reasoning else ""
        explained += bool(explanation)
        target = answer_target(explanation, example.gold)
        rows.append(
            {
                "prompt": [{"role": "user", "content": example.prompt}],
                "completion": [{"role": "assistant", "content": target}],
                "question": example.question,
            }
        )
    targets = "reasoning" if explained == len(rows) else "answer_only" if explained == 0 else "mixed"
    if reasoning and targets != "reasoning":
        logger.warning(
            "%s: %d of %d training targets carry no reasoning, but the prompt asks for it (targets: %s). For a"
            " like-for-like comparison evaluate both adapters with --reasoning false, or train with"
            " benchmark_reasoning: false",
            bench.name,
            len(rows) - explained,
            len(rows),
            targets,
        )
    return BaselineData(rows, targets, explained, "reasoning" if reasoning else "answer_only")


def question_key(question: str) -> str:
    """A question as a comparable key: case and whitespace folded."""
    return re.sub(r"\s+", " ", question).strip().lower()


def evaluation_row_keys(eval_config: Any, partitions: Iterable[str] = ("test",)) -> dict[str, tuple[str, str, str]]:
    """{question key: (benchmark name, partition, row id)} of every row of the evaluation recipe's benchmarks in
    `partitions` (their `limit`s ignored: a row outside the evaluated slice is still a test row)."""
    from nanoflux.benchmarks import load_benchmark, test_questions

    keys: dict[str, tuple[str, str, str]] = {}
    for bench in eval_config.benchmarks:
        for partition in partitions:
            if partition == "test":
                questions = test_questions(bench)
            else:
                examples = load_benchmark(dataclasses.replace(bench, limit=None), reasoning=False, partition=partition)
                questions = {e.id: e.question for e in examples}
            for row_id, question in questions.items():
                keys.setdefault(question_key(question), (bench.name, partition, row_id))
    return keys


def check_no_test_rows(
    questions: Iterable[str],
    eval_config: Any,
    *,
    field_name: str,
    what: str,
    partitions: Iterable[str] = ("test",),
    fix: str = "train on data the evaluation does not score (e.g. the benchmark's train split), or remove those rows",
) -> int:
    """Refuse a training set that asks a question of `eval_config`'s test rows (and of its dev rows, with
    `partitions=("test", "dev")`): exact match, case and whitespace folded; the builder's n-gram decontamination
    covers near copies. Returns how many evaluation rows were compared.

    Raises:
        TestRowsInTraining: naming the benchmark rows found, the field that named the evaluation, and the fix.
    """
    partitions = tuple(partitions)
    keys = evaluation_row_keys(eval_config, partitions)
    leaked = sorted({keys[key] for key in map(question_key, questions) if key in keys})
    if leaked:
        shown = ", ".join(f"{name} {partition} row {row_id}" for name, partition, row_id in leaked[:5]) + (
            f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        )
        raise TestRowsInTraining(
            f"{field_name}: {what} holds {len(leaked)} question(s) of the evaluation's {' and '.join(partitions)} rows"
            f" ({shown}). Fix: {fix}"
        )
    logger.info(
        "No training question is one of the %d %s rows of the evaluation's benchmarks", len(keys), "/".join(partitions)
    )
    return len(keys)


class TestRowsInTraining(NanoFluxError, RuntimeError):
    """A training set holds evaluation test rows; the message names them and the fix."""

    __test__ = False  # not a pytest test class
