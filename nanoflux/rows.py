"""Benchmark rows → Examples: the question, its options, its gold answer and the prompt (`nanoflux/rows.py`).

`normalise` reads rows in a benchmark's own schema (columns mapped by `ColumnsConfig`): options from a list or mapping
column, one column per option, or inline in the question (`split_inline_options`); the gold answer checked strictly
(`parse_gold`: an index out of range or an unknown label is an error naming the row, the column and the fix, never a
silent drop); rows without any gold answer or with fewer than two options are dropped and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nanoflux.errors import NanoFluxError
from nanoflux.questions import LETTERS, build_prompt
from nanoflux.scoring import extract_number

if TYPE_CHECKING:
    from nanoflux.benchmarks import BenchmarkConfig, ColumnsConfig

logger = logging.getLogger(__name__)


class EvalError(NanoFluxError, RuntimeError):
    """The evaluation cannot go on (no such adapter, column or label); the message says why and what to do."""


# --- examples ----------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One benchmark question, normalised: what the model sees and what counts as right."""

    id: str
    prompt: str
    options: list[str]
    """Option texts in A, B, C... order (empty for numeric and yes/no/maybe answers)."""
    gold: str | float
    """An option letter, yes/no/maybe, or a number."""
    explanation: str | None = None
    question: str = ""
    """The question as the data has it (without the options), for overlap checks against training data."""


class ExampleSet(list):
    """Examples, with `selection`: what was read (data, split, filters, sample, dropped rows), for results.json."""

    selection: dict[str, Any]

    def __init__(self, examples: Sequence[Example] = (), selection: dict[str, Any] | None = None) -> None:
        super().__init__(examples)
        self.selection = selection or {}


def normalise(
    rows: Any, bench: BenchmarkConfig, *, reasoning: bool = True, indices: Sequence[int] | None = None
) -> ExampleSet:
    """Rows in the benchmark's own schema → Examples (id, prompt, options, gold); `indices` are the rows' positions in
    their split (the ids of rows without an id column)."""
    columns = bench.columns
    needed = [columns.question, columns.answer, columns.id, columns.options, *(columns.option_columns or [])]
    needed += [columns.context.split(".")[0]] if columns.context else []
    available = list(rows.column_names)
    for name in filter(None, needed):
        if name not in available:
            hint = (
                " (a CSV without a header row: set header: false, the columns are then named 0, 1, 2, ...)"
                if str(bench.path).endswith(".csv") and bench.header
                else ""
            )
            raise EvalError(
                f"{bench.name}: column {name!r} is not in {bench.path} (has: {available}). Fix: map it with"
                f" benchmarks[].columns{hint}"
            )
    examples, no_gold, few_options = ExampleSet(), [], []
    for position, row in enumerate(rows):
        row_id = str(row[columns.id]) if columns.id else str(indices[position] if indices is not None else position)
        question = str(row[columns.question]).strip()
        options: list[str] = []
        if bench.kind == "choice":
            if columns.options:
                value = row[columns.options]
                values = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])
                options = [str(v) for v in values if v is not None]
            elif columns.option_columns:
                options = [str(row[c]) for c in columns.option_columns]
            else:
                question, options = split_inline_options(question)
            if len(options) < 2:
                few_options.append(row_id)
                continue
        gold = parse_gold(row[columns.answer], bench, row_id, len(options))
        if gold is None:
            no_gold.append(row_id)
            continue
        context = _get(row, columns.context) if columns.context else None
        if isinstance(context, list):
            context = "\n".join(str(c) for c in context)
        examples.append(
            Example(
                row_id,
                build_prompt(question, options, bench.kind, reasoning=reasoning, context=context),
                options,
                gold,
                _explanation(row, columns),
                question,
            )
        )
    dropped = {
        "count": len(no_gold) + len(few_options),
        "no_gold": len(no_gold),
        "fewer_than_two_options": len(few_options),
        "ids": (no_gold + few_options)[:20],
    }
    if dropped["count"]:
        logger.warning(
            "%s: dropped %d row(s): %d without a gold answer, %d with fewer than two options (ids %s)",
            bench.name,
            dropped["count"],
            len(no_gold),
            len(few_options),
            ", ".join(dropped["ids"][:5]),
        )
    if not examples:
        raise EvalError(
            f"{bench.name}: no row of {bench.path} [{bench.split}] has a usable answer. Fix: check the split (test"
            " splits may be unlabelled) and columns.answer / answer_type"
        )
    examples.selection = {"dropped": dropped}
    return examples


def _explanation(row: dict[str, Any], columns: ColumnsConfig) -> str | None:
    text = _get(row, columns.explanation) if columns.explanation else None
    if text is None and isinstance(row[columns.answer], str):
        match = re.search(r"<explanation>\s*(.*?)\s*</explanation>", row[columns.answer], re.S)
        text = match.group(1) if match else None
    if text is None:
        return None
    text = str(text)
    if "####" in text:  # GSM8K: the solution, then `#### <number>`; without its <<48/2=24>> calculator annotations
        text = re.sub(r"<<[^<>]*>>", "", text.split("####")[0]).strip()
    return text or None


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# --- gold answers ----------------------------------------------------------------------------------------

_GOLD_TAG = re.compile(r"<answer>\s*(?:option\s+)?\(?([A-Ja-j])(?:\s*[).:]|\s*</answer>)", re.I)


def parse_gold(value: Any, bench: BenchmarkConfig, row_id: str, n_options: int) -> str | float | None:
    """A row's gold answer in the form extraction gives (letter, yes/no/maybe, number); None when the row has none.

    Raises:
        EvalError: the value is there but cannot be an answer (an index out of range, an unknown letter or label),
            naming the benchmark, the row, the column, the value and the fix.
    """
    if (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, int) and not isinstance(value, bool) and value == -1 and bench.kind == "choice")
    ):
        return None  # no gold (-1: the `datasets` ClassLabel for "no label", e.g. MedMCQA's unlabelled test split)
    column = f"columns.answer ({bench.columns.answer!r})"
    if bench.kind == "number":
        number = (
            float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else extract_number(str(value))
        )
        if number is None or number != number or number in (float("inf"), float("-inf")):
            raise EvalError(
                f"{bench.name}: row {row_id}: {column} = {value!r} is not a number. Fix: map columns.answer to the"
                " numeric answer column"
            )
        return number
    if bench.kind == "yes_no_maybe":
        label = str(value).strip().lower()
        if label not in ("yes", "no", "maybe"):
            raise EvalError(
                f"{bench.name}: row {row_id}: {column} = {value!r} is not yes, no or maybe. Fix: map columns.answer to"
                " the yes/no/maybe label column"
            )
        return label
    return _gold_letter(value, bench, row_id, n_options, column)


def _gold_letter(value: Any, bench: BenchmarkConfig, row_id: str, n_options: int, column: str) -> str:
    columns = bench.columns
    as_index = columns.answer_type == "index" or (
        columns.answer_type == "auto" and isinstance(value, int) and not isinstance(value, bool)
    )
    if as_index:
        try:
            index = int(value) - columns.answer_base
        except (TypeError, ValueError):
            raise EvalError(
                f"{bench.name}: row {row_id}: {column} = {value!r} is not an option index. Fix: set"
                " columns.answer_type: letter, or map columns.answer to the index column"
            ) from None
        if not 0 <= index < n_options:
            low = columns.answer_base
            raise EvalError(
                f"{bench.name}: row {row_id}: {column} = {value!r} is out of range for {n_options} options with"
                f" answer_base {columns.answer_base} (valid: {low}-{low + n_options - 1}). Fix: set"
                f" columns.answer_base to {1 - columns.answer_base} if the data counts options from"
                f" {1 - columns.answer_base} (HF MedMCQA's cop is 0-based, its raw dev.json 1-based), or check"
                " columns.answer"
            )
        return LETTERS[index]
    text = str(value).strip()
    match = _GOLD_TAG.search(text) or re.fullmatch(r"\(?([A-Ja-j])\s*[).:]?", text)
    if not match:
        raise EvalError(
            f"{bench.name}: row {row_id}: {column} = {text[:80]!r} is not an option letter. Fix: set"
            " columns.answer_type (letter or index) or map columns.answer to the answer column"
        )
    letter = match.group(1).upper()
    if LETTERS.index(letter) >= n_options:
        raise EvalError(
            f"{bench.name}: row {row_id}: {column} = {text[:80]!r} names option {letter}, but the row has {n_options}"
            " options. Fix: check the options columns (or the inline options of the question)"
        )
    return letter


# --- inline options --------------------------------------------------------------------------------------

_INLINE_OPTION = re.compile(r"(?:(?<=\s)|^|(?<=[:\"']))(\()?([A-Ja-j])([.)])\s+(\"|“|')?")
_CHOOSE = re.compile(r"\s*please choose one of the following options\s*:?\s*$", re.I)
_CHOOSE_ANYWHERE = re.compile(r"choose one of the following options\s*:?", re.I)


def split_inline_options(text: str) -> tuple[str, list[str]]:
    """`"... Please choose one of the following options: a. x b. y c. z"` → (stem, [x, y, z]); (text, []) when there
    is no run of two or more labels.

    Labels are `a.`, `a)` or `(a)`, in order a, b, c, ... Of every possible chain of labels the one taken is the
    longest; then one that starts after the "choose one of the following options" marker (or else after the last `?`
    that leaves room for it), so that "plan a. and plan b." in the question is not read as options; then one whose
    labels all look alike (case, bracket, an opening quote), so that "B. subtilis" inside an option is not a label;
    then the one that starts first, so that a second a..e run inside the last option does not win a tie.
    """
    matches = list(_INLINE_OPTION.finditer(text))
    chains: list[list[re.Match[str]]] = []

    def extend(chain: list[re.Match[str]], start: int) -> None:
        if len(chains) > 5000:
            return
        grown = False
        wanted = LETTERS[len(chain)].lower() if len(chain) < len(LETTERS) else None
        for j in range(start, len(matches)):
            if wanted and matches[j].group(2).lower() == wanted:
                grown = True
                extend([*chain, matches[j]], j + 1)
        if not grown and len(chain) >= 2:
            chains.append(chain)

    for i, match in enumerate(matches):
        if match.group(2).lower() == "a":
            extend([match], i + 1)
    if not chains:
        return text, []
    longest = max(len(c) for c in chains)
    chains = [c for c in chains if len(c) == longest]
    marker = list(_CHOOSE_ANYWHERE.finditer(text))
    anchors = [marker[-1].end()] if marker else [m.end() for m in re.finditer(r"\?", text)]
    anchor = max((a for a in anchors if any(c[0].start() >= a for c in chains)), default=0)

    def style(m: re.Match[str]) -> tuple[Any, ...]:
        return (m.group(2).isupper(), bool(m.group(1)), m.group(3), bool(m.group(4)))

    def rank(chain: list[re.Match[str]]) -> tuple[Any, ...]:
        alike = sum(style(m) == style(chain[0]) for m in chain)
        return (chain[0].start() >= anchor, alike, -chain[0].start(), [-m.start() for m in chain])

    best = max(chains, key=rank)
    bounds = [m.start() for m in best[1:]] + [len(text)]
    options = [text[m.end() : end].strip().strip("'\"“”").strip() for m, end in zip(best, bounds, strict=True)]
    return _CHOOSE.sub("", text[: best[0].start()]).strip(), options


def format_gold(gold: str | float) -> str:
    """A gold answer as a target writes it: a letter or yes/no/maybe as is, a number without exponent or trailing
    .0."""
    if isinstance(gold, str):
        return gold
    if float(gold).is_integer():
        return str(int(gold))
    return repr(float(gold))


def answer_target(explanation: str | None, gold: str | float) -> str:
    """A training target: the explanation (when there is one), then `Final answer: <gold>`, which evaluation reads."""
    explanation = (explanation or "").strip()
    return (f"{explanation}\n\n" if explanation else "") + f"Final answer: {format_gold(gold)}"
