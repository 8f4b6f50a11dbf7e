"""Scoring: answer extraction, correctness as each benchmark's authors judge it, and the statistics
(`nanoflux/scoring.py`).

- Numbers: the number after the last `Final answer:`, else after `####`, else in `\\boxed{}`, else the last number; it
  reads fractions (`1/3`, `\\frac{1}{3}`, `2 1/2`), scale words (`2.5 million`), thousands separators, scientific
  notation (`1.5e6`, `1.5 × 10^6`) and negative numbers. A number is right when `abs(pred - target) < 1e-3`, the
  GSM-Hard authors' rule (reasoning-machines/pal `scripts/gsm_eval.py`): GSM-Hard targets are mostly >= 1e5, where a
  relative tolerance would accept target ± 1.
- Letters and yes/no/maybe: see `extract_choice` and `extract_yes_no_maybe`; unparseable outputs count as wrong.
- Statistics: accuracy with a percentile bootstrap CI; paired comparisons of two variants on the same examples (the
  difference in accuracy with a paired bootstrap CI, and McNemar's exact test); the MultiMedQA aggregate (macro: mean
  of the subset accuracies, micro: pooled), each with a stratified bootstrap CI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from nanoflux.questions import LETTERS

CI_LEVEL = 0.95
NUMBER_ABS_TOL = 1e-3
"""PAL's GSM-Hard rule: `abs(pred - target) < 1e-3` (strictly less)."""
NUMBER_REL_TOL = 0.0
"""No relative tolerance by default; a benchmark entry with real-valued answers may set `rel_tol`."""

# --- answer extraction -----------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)
_DIGITS = (  # 1,234,567 / 1 234 567 (thin spaces)
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[\u2009\u202f]\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
)
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER = re.compile(
    r"(?<![\w./])(?P<sign>[-−])?"
    r"(?:\\d?frac\{(?P<fnum>\d+)\}\{(?P<fden>\d+)\}"  # \frac{1}{3}
    r"|(?:(?P<whole>\d+)\s+)?(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d/])"  # 1/3, 2 1/2
    rf"|(?P<value>{_DIGITS})"
    r"(?:(?P<exp>[eE][-+]?\d+)|\s*(?:×|x|\*|\\times|\\cdot)\s*10\s*\^\s*\{?(?P<pow>[-−]?\d+)\}?)?"
    rf"(?:\s+(?P<scale>{'|'.join(_SCALES)})s?\b)?)"
    r"(?![\d])"
)
_FINAL = r"\bfinal\s+answer\b"
_ANSWER = r"<answer>|\b(?:correct|right|best)\s+(?:answer|option|choice)\b|\bthe\s+answer\b|\banswer\b"
_AFTER = re.compile(  # what may stand between a marker and the letter: "is", ":", "**", "option", "(", ...
    r"(?:[\s*_:：=(\[-]|\bis\b|\b(?:would|should)\s+be\b|\boption\b|\bchoice\b|\bletter\b)*([A-Ja-j])(?![A-Za-z0-9])(.?)",
    re.I,
)


def _visible(text: str) -> str:
    """The answer part of an output: without a `<think>...</think>` block (an unclosed one hides everything after
    it)."""
    return _THINK.sub("", text).strip()


def parse_number(match: re.Match[str]) -> float | None:
    """The value of one `_NUMBER` match (fractions exactly, then as a float)."""
    sign = -1 if match.group("sign") else 1
    if match.group("fnum") is not None or match.group("num") is not None:
        num, den = (
            (match.group("fnum"), match.group("fden"))
            if match.group("fnum") is not None
            else (match.group("num"), match.group("den"))
        )
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den)) + int(match.group("whole") or 0)
        return sign * float(value)
    token = re.sub(r"[,\u2009\u202f]", "", match.group("value"))
    try:
        value = float(token + (match.group("exp") or ""))
    except ValueError:
        return None
    if match.group("pow") is not None:
        value *= 10.0 ** int(match.group("pow").replace("−", "-"))
    if match.group("scale"):
        value *= _SCALES[match.group("scale").lower()]
    return sign * value


def extract_number(text: str) -> float | None:
    """The number after the last `Final answer:`, else after `####`, else in `\\boxed{}`, else the last number."""
    text = _visible(text).replace("$", "").replace("**", "").replace("\\!", "").replace("{,}", ",")
    for marker in (_FINAL + r"\s*(?:is)?\s*[:：]?", r"####", r"\\boxed\{"):
        found = list(re.finditer(marker, text, re.I))
        if found:
            number = _NUMBER.search(text, found[-1].end())
            if number:
                return parse_number(number)
    numbers = list(_NUMBER.finditer(text))
    return parse_number(numbers[-1]) if numbers else None


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter a model chose, or None when it cannot be told.

    In order: the letter after the last `<answer>` tag or `Final answer:`; after the last `Answer:` / `the answer
    is` / `correct option is`; a single distinct `(B)` / `B)` / `option B` / a bare leading `B`; the one option whose
    exact text appears. Only letters of existing options count; lowercase letters only when they stand alone
    (`b)`, `b.`, end of line), so that "the answer is a mutation" is not read as A.
    """
    text = _visible(text)
    valid = LETTERS[: len(options)]
    for markers in (rf"<answer>|{_FINAL}", _ANSWER):
        for found in reversed(list(re.finditer(markers, text, re.I))):
            letter = _letter_after(text, found.end(), valid)
            if letter:
                return letter
    standalone = re.findall(
        r"\(([A-J])\)|(?<![\w(])([A-J])\)|\b[Oo]ption\s+([A-J])\b|^\s*([A-J])(?:[.:]|\s*$)", text, re.M
    )
    letters = {next(filter(None, groups)) for groups in standalone} & set(valid)
    if len(letters) == 1:
        return letters.pop()
    return _option_by_text(text, options)


def _letter_after(text: str, position: int, valid: str) -> str | None:
    match = _AFTER.match(text, position)
    if not match:
        return None
    letter, following = match.group(1), match.group(2)
    if letter.islower() and following not in ("", ")", ".", ",", "*", "<", "\n", ":"):
        return None
    return letter.upper() if letter.upper() in valid else None


def _option_by_text(text: str, options: Sequence[str]) -> str | None:
    def norm(s: str) -> str:
        return " " + re.sub(r"[^a-z0-9]+", " ", s.lower()).strip() + " "

    haystack = norm(text)
    hits = [i for i, option in enumerate(options) if norm(option).strip() and norm(option) in haystack]
    # An option that is part of a longer matching option ("Vitamin B12" in "Vitamin B12 deficiency") does not count.
    hits = [i for i in hits if not any(j != i and norm(options[i]) in norm(options[j]) for j in hits)]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def extract_yes_no_maybe(text: str) -> str | None:
    """yes / no / maybe: after the last `Final answer:` or `Answer:`, else the first word, else the only one used."""
    text = _visible(text)
    word = re.compile(r"(?:[\s*_:：=(\[-]|\bis\b)*(yes|no|maybe)\b", re.I)
    for markers in (rf"<answer>|{_FINAL}", _ANSWER):
        for found in reversed(list(re.finditer(markers, text, re.I))):
            match = word.match(text, found.end())
            if match:
                return match.group(1).lower()
    first = re.match(r"\W*(yes|no|maybe)\b", text, re.I)
    if first:
        return first.group(1).lower()
    used = {w.lower() for w in re.findall(r"\b(yes|no|maybe)\b", text, re.I)}
    return used.pop() if len(used) == 1 else None


def extract_answer(text: str, example: Any, kind: str) -> str | float | None:
    """The answer in a model output, in the form of `example.gold`; None when unparseable."""
    if kind == "number":
        return extract_number(text)
    if kind == "choice":
        return extract_choice(text, example.options)
    return extract_yes_no_maybe(text)


def is_correct(
    extracted: str | float | None,
    gold: str | float,
    kind: str,
    *,
    abs_tol: float = NUMBER_ABS_TOL,
    rel_tol: float = NUMBER_REL_TOL,
) -> bool:
    """Unparseable (None) is wrong; a number is right when `abs(pred - gold) < abs_tol` (PAL's GSM-Hard rule, 1e-3), or
    within `rel_tol` of the gold when a benchmark entry sets one; letters and yes/no/maybe must be equal."""
    if extracted is None:
        return False
    if kind == "number":
        difference = abs(float(extracted) - float(gold))
        return difference < abs_tol or (rel_tol > 0 and difference <= rel_tol * abs(float(gold)))
    return extracted == gold


# --- accuracy --------------------------------------------------------------------------------------------


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    correct: Sequence[bool], *, samples: int = 1000, seed: int = 0, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the accuracy (deterministic for a seed)."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    return _percentiles(means, level)


def score(correct: Sequence[bool], unparseable: int, *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """n, correct, accuracy, its bootstrap CI, and the unparseable outputs (counted wrong) as a count and a rate."""
    n = len(correct)
    low, high = bootstrap_ci(correct, samples=samples, seed=seed)
    return {
        "n": n,
        "correct": int(sum(correct)),
        "accuracy": sum(correct) / n if n else math.nan,
        "ci_low": low,
        "ci_high": high,
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n if n else math.nan,
    }


# --- paired comparisons ----------------------------------------------------------------------------------

PAIRS = (("adapter", "base"), ("adapter", "baseline"), ("baseline", "base"))
"""(variant, reference) pairs compared on the same examples: the difference is variant minus reference."""


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test: the two-sided binomial p-value of `b` vs `c` discordant pairs (p = 0.5); 1.0 when none."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integer arithmetic: no underflow for thousands of pairs


def paired_bootstrap_ci(
    a: Sequence[bool], b: Sequence[bool], *, samples: int = 1000, seed: int = 0, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) - mean(b): examples are resampled, the same indices for both arms."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    return _percentiles(means, level)


def paired_comparison(a: Sequence[bool], b: Sequence[bool], *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Variant `a` against reference `b` on the same examples, in the same order: accuracy difference (a - b) with a
    paired bootstrap CI, the discordant pairs (a right / b wrong, a wrong / b right) and McNemar's exact p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same examples in both arms (got {len(a)} and {len(b)})")
    n = len(a)
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    low, high = paired_bootstrap_ci(a, b, samples=samples, seed=seed)
    return {
        "n": n,
        "delta": (sum(a) - sum(b)) / n if n else math.nan,
        "ci_low": low,
        "ci_high": high,
        "wins": a_only,
        "losses": b_only,
        "p_value": mcnemar_exact(a_only, b_only),
    }


def _aligned(
    details: Mapping[str, Sequence[Mapping[str, Any]]], variant: str, reference: str
) -> tuple[list[bool], list[bool]]:
    """The `correct` flags of two variants, checked to be on the same example ids in the same order."""
    a, b = details[variant], details[reference]
    if [d["id"] for d in a] != [d["id"] for d in b]:
        raise ValueError(f"{variant} and {reference} were not evaluated on the same examples in the same order")
    return [bool(d["correct"]) for d in a], [bool(d["correct"]) for d in b]


def paired_comparisons(
    details: Mapping[str, Sequence[Mapping[str, Any]]], *, samples: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Every pair of `PAIRS` whose two variants were both evaluated: `{"adapter-vs-base": {...}, ...}`."""
    return {
        f"{variant}-vs-{reference}": {
            "variant": variant,
            "reference": reference,
            **paired_comparison(*_aligned(details, variant, reference), samples=samples, seed=seed),
        }
        for variant, reference in PAIRS
        if variant in details and reference in details
    }


# --- aggregates (MultiMedQA) -----------------------------------------------------------------------------


def _stratified_means(groups: Sequence[np.ndarray], samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates of (macro, micro) means: each group resampled on its own (the same draws for every arm
    given the same seed and group sizes)."""
    rng = np.random.default_rng(seed)
    sums, counts, accuracies = np.zeros(samples), 0, []
    for values in groups:
        drawn = values[rng.integers(0, values.size, size=(samples, values.size))]
        sums += drawn.sum(axis=1)
        counts += values.size
        accuracies.append(drawn.mean(axis=1))
    return np.mean(accuracies, axis=0), sums / counts


def aggregate(
    groups: Sequence[Sequence[float]], *, samples: int = 1000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, Any]:
    """Macro (mean of the group accuracies) and micro (pooled) accuracy of several benchmarks, with stratified
    bootstrap CIs. For paired differences, pass per-example differences (1, 0, -1) as the groups."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return {
            "n": 0,
            "macro": math.nan,
            "macro_ci_low": math.nan,
            "macro_ci_high": math.nan,
            "micro": math.nan,
            "micro_ci_low": math.nan,
            "micro_ci_high": math.nan,
        }
    macro, micro = _stratified_means(arrays, samples, seed)
    (macro_low, macro_high), (micro_low, micro_high) = _percentiles(macro, level), _percentiles(micro, level)
    n = sum(a.size for a in arrays)
    return {
        "n": n,
        "macro": float(np.mean([a.mean() for a in arrays])),
        "macro_ci_low": macro_low,
        "macro_ci_high": macro_high,
        "micro": float(sum(a.sum() for a in arrays) / n),
        "micro_ci_low": micro_low,
        "micro_ci_high": micro_high,
    }


def aggregate_results(
    name: str,
    members: Sequence[str],
    details: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """An aggregate over benchmarks `members` (`details[benchmark][variant]` = per-example records): per variant macro
    and micro accuracy with CIs, and per pair of `PAIRS` the paired macro/micro differences with CIs and McNemar's
    exact p-value on the pooled discordant pairs."""
    variants = [v for v in next(iter(details.values())) if all(v in details[m] for m in members)] if details else []
    result: dict[str, Any] = {"name": name, "members": list(members), "variants": {}, "paired": {}}
    for variant in variants:
        groups = [[float(d["correct"]) for d in details[m][variant]] for m in members]
        result["variants"][variant] = aggregate(groups, samples=samples, seed=seed)
    for variant, reference in PAIRS:
        if variant not in variants or reference not in variants:
            continue
        pairs = [_aligned(details[m], variant, reference) for m in members]
        diffs = [[float(x) - float(y) for x, y in zip(a, b, strict=True)] for a, b in pairs]
        stats = aggregate(diffs, samples=samples, seed=seed)
        wins = sum(x and not y for a, b in pairs for x, y in zip(a, b, strict=True))
        losses = sum(y and not x for a, b in pairs for x, y in zip(a, b, strict=True))
        result["paired"][f"{variant}-vs-{reference}"] = {
            "variant": variant,
            "reference": reference,
            "n": stats["n"],
            "macro_delta": stats["macro"],
            "macro_ci_low": stats["macro_ci_low"],
            "macro_ci_high": stats["macro_ci_high"],
            "micro_delta": stats["micro"],
            "micro_ci_low": stats["micro_ci_low"],
            "micro_ci_high": stats["micro_ci_high"],
            "wins": wins,
            "losses": losses,
            "p_value": mcnemar_exact(wins, losses),
        }
    return result
