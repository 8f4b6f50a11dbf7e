"""What `nanoflux train` reads: one pinned dataset version, or a benchmark's training rows, in TRL's prompt-completion
conversational format (`prompt`: the turns before the answer, `completion`: the assistant's answer), so that the loss
covers the answer only. The revision is resolved to its commit before anything is read; `check_test_rows` refuses
training rows that ask a question of an evaluation recipe's test rows.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.adapter_hub import dataset_commit, download_dataset
from trainer.train_config import TrainError

if TYPE_CHECKING:
    from nanoflux.benchmarks import BenchmarkConfig
    from trainer.train_config import TrainConfig

logger = logging.getLogger(__name__)


# --- data ------------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """What training reads: prompt-completion rows, the exact commit, and what the targets hold (for the summary)."""

    train: Any
    """`datasets.Dataset` with `prompt` (the turns before the answer) and `completion` (the assistant's answer)."""
    evaluation: Any | None
    commit: str
    questions: list[str]
    """The training rows' questions, for the test-row guard (`eval_recipe`)."""
    targets: str
    """`reasoning` (every target reasons before its final answer), `answer_only` (none does) or `mixed`."""
    rows_with_reasoning: int
    prompt: str = "reasoning"
    """How the user turn asks: `reasoning` (step by step) or `answer_only`."""


def load_train_data(config: TrainConfig) -> TrainData:
    """The dataset at `config.revision` (or the baseline benchmark's training rows) in TRL's prompt-completion format.

    The revision is resolved to a commit first and the data is read at that commit, so what is trained on is exactly
    the commit the card names, even if the tag moved meanwhile.
    """
    from datasets import load_dataset

    if config.benchmark is not None:
        return _benchmark_data(config.benchmark, reasoning=config.benchmark_reasoning)
    repo, revision = config.dataset_name, config.revision
    commit = dataset_commit(repo, revision, config.hub_dir)
    with tempfile.TemporaryDirectory(prefix="nanoflux-train-data-") as checkout:
        if config.hub_dir is None:
            source = {"path": repo, "revision": commit}
        else:
            # load_dataset copies the parquet into its cache, so the checkout can go when this block ends.
            source = {"path": str(download_dataset(repo, commit, config.hub_dir, checkout))}
        try:
            splits = load_dataset(**source)
        except (
            ValueError
        ) as err:  # datasets refuses a split without rows ("Instruction 'train' corresponds to no data!")
            raise _no_rows(repo, revision, commit, f" ({err})") from None

    def split_rows(split: str) -> tuple[Any, list[str]]:
        if split not in splits:
            raise TrainError(
                f"{repo}@{revision} has no split {split!r} (has: {list(splits)}). Fix: publish it, or pick one of"
                " those"
            )
        data = splits[split]
        if "messages" not in data.column_names:
            raise TrainError(
                f"dataset_name: {repo}@{revision} has no `messages` column, so it is not a NanoFlux dataset. Fix:"
                " point at a dataset `nanoflux build` published"
            )
        data = data.filter(lambda row: bool(row["messages"]))
        rows = [
            prompt_completion(messages, f"{repo}@{revision} [{split}] row {i}")
            for i, messages in enumerate(data["messages"])
        ]
        questions = (
            [str(q) for q in data["question"]]
            if "question" in data.column_names
            else [user_turn(row["prompt"]) for row in rows]
        )
        return rows, questions

    train_rows, questions = split_rows("train")
    if not train_rows:
        raise _no_rows(repo, revision, commit)
    eval_rows = split_rows(config.eval_split)[0] if config.eval_split else None
    explained = sum(has_reasoning(row["completion"][0]["content"]) for row in train_rows)
    logger.info("Dataset %s@%s = commit %s: %d training conversations", repo, revision, commit[:12], len(train_rows))
    return TrainData(
        _dataset(train_rows),
        _dataset(eval_rows) if eval_rows else None,
        commit,
        questions,
        targets_kind(explained, len(train_rows)),
        explained,
    )


def prompt_completion(messages: list[dict[str, str]], where: str) -> dict[str, list[dict[str, str]]]:
    """A conversation in TRL's prompt-completion form: every turn before the last assistant turn is the prompt (no
    loss), that assistant turn the completion (the loss). Later turns, if any, are not trained on."""
    last = max((i for i, message in enumerate(messages) if message.get("role") == "assistant"), default=None)
    if not last:  # None, or an assistant turn with nothing before it
        raise TrainError(
            f"dataset_name: {where} has no assistant turn after a user turn (roles:"
            f" {[m.get('role') for m in messages]}). Fix: publish rows whose `messages` end with the assistant's"
            " answer"
        )
    return {"prompt": [dict(m) for m in messages[:last]], "completion": [dict(messages[last])]}


def user_turn(prompt: list[dict[str, str]]) -> str:
    """The last user message of a prompt."""
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def has_reasoning(target: str) -> bool:
    """Whether an assistant target reasons before its `Final answer:` line."""
    head, found, _ = target.rpartition("Final answer:")
    return bool(found and head.strip())


def targets_kind(explained: int, rows: int) -> str:
    return "reasoning" if explained == rows else "answer_only" if explained == 0 else "mixed"


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": row["prompt"], "completion": row["completion"]} for row in rows])


def _benchmark_data(bench: BenchmarkConfig, *, reasoning: bool) -> TrainData:
    """A benchmark's training rows as `nanoflux eval` asks them (trainer.baseline); the commit is the Hub commit it
    resolved to ("local" for a local file)."""
    from nanoflux.benchmarks import resolve_revision
    from nanoflux.rows import EvalError
    from trainer.baseline import baseline_rows

    commit = resolve_revision(bench) or "local"
    try:
        data = baseline_rows(bench, reasoning=reasoning, revision=None if commit == "local" else commit)
    except (EvalError, OSError, ValueError) as err:
        raise TrainError(
            f"benchmark: cannot read {bench.path} [{bench.split}] ({str(err).splitlines()[0]}). Fix: check"
            " benchmark.path, subset and split"
        ) from None
    logger.info(
        "Baseline data: %s [%s], %d training conversations (targets: %s)",
        bench.path,
        bench.split,
        len(data.rows),
        data.targets,
    )
    return TrainData(
        _dataset(data.rows),
        None,
        commit,
        [row["question"] for row in data.rows],
        data.targets,
        data.rows_with_reasoning,
        data.prompt,
    )


def check_test_rows(config: TrainConfig, data: TrainData, what: str) -> int:
    """With `eval_recipe`: refuse training rows that ask a question of that evaluation's test rows
    (trainer.baseline)."""
    from nanoflux.recipe import ConfigError
    from nanoflux.rows import EvalError
    from trainer.baseline import TestRowsInTraining, check_no_test_rows
    from trainer.evaluation.config import build_eval_config

    try:
        evaluation = build_eval_config(config.eval_recipe)
    except ConfigError as err:
        raise TrainError(f"eval_recipe: {config.eval_recipe}: {err}") from None
    try:
        checked = check_no_test_rows(data.questions, evaluation, field_name="eval_recipe", what=what)
        if config.benchmark is None:
            check_near_copies(config.eval_recipe, data.questions, what)
        return checked
    except TestRowsInTraining as err:
        raise TrainError(str(err)) from None
    except (EvalError, OSError, ValueError) as err:
        raise TrainError(
            f"eval_recipe: cannot read the test rows of {config.eval_recipe} ({str(err).splitlines()[0]}). Fix: check"
            " its benchmarks, or set eval_recipe: null"
        ) from None


# At train time near copies are looked for with 13-grams (GPT-3 / OLMo) and number-masked n-grams: no embedding model
# is loaded here. The builder's own decontamination (8-grams and embeddings too) ran before the version was published.
TRAIN_TIME_CHECK = {"ngram": 13, "embedding_threshold": None}


def check_near_copies(eval_recipe: str, questions: list[str], what: str) -> None:
    """Refuse NanoFlux training rows that nearly copy a question of the evaluation's benchmarks (builder's
    decontamination detectors), so that no pool is trained on unchecked. A benchmark's own training split is not
    checked this way: its near-duplicates of the test split are the benchmark's, and the exact-match guard applies.

    Raises:
        TrainError: naming the rows, the benchmark questions they match, and the fix.
    """
    from builder import DecontaminationConfig, load_reference
    from builder import check_contamination as check

    settings = DecontaminationConfig(eval_recipe=eval_recipe, **TRAIN_TIME_CHECK)
    _, contaminated = check([{"question": q} for q in questions], load_reference(eval_recipe), settings, None)
    if contaminated:
        matches = [
            f"{m['benchmark']} {m['item_id']} ({m['detector']})"
            for row in contaminated
            for m in row["contamination"][:1]
        ]
        raise TrainError(
            f"eval_recipe: {what} holds {len(contaminated)} question(s) that nearly copy the evaluation's benchmark"
            f" questions ({', '.join(matches[:5])}). Fix: rebuild or re-publish the dataset with decontamination on"
            " (it drops them), or train on another version"
        )
    logger.info(
        "No training question nearly copies a question of the evaluation's benchmarks (%s)",
        ", ".join(f"{k}={v}" for k, v in TRAIN_TIME_CHECK.items()),
    )


def _no_rows(repo: str, revision: str, commit: str, detail: str = "") -> TrainError:
    return TrainError(
        f"revision: {repo}@{revision} (commit {commit[:12]}) has no rows to train on{detail}. Fix: pick a version that"
        " has rows, or publish a build that kept some"
    )
