"""Evaluate a base model and its NanoFlux LoRA adapter on GSM-Hard, Genome-Bench and MultiMedQA (`trainer/evaluate.py`).

Usage:
    nanoflux eval --config configs/eval/local.yaml                      # packaged SmolLM2 on the fixtures, CPU, ~1-2 min
    nanoflux eval --config configs/eval/medical.yaml                    # Qwen3-4B + adapter on MultiMedQA, GPU
    nanoflux eval --config configs/eval/medical.yaml --limit 50 --benchmarks.medqa.split test

`main(config)` reads top to bottom: load every benchmark with `datasets.load_dataset` (a Hub id, or a local file or
folder) and normalise its rows into `Example(id, prompt, options, gold)`; check the adapters exist (before any model
is loaded); load the base model; count training tokens for the compute comparison if asked; then for each variant
(`base`, `adapter` = base + the NanoFlux LoRA, `baseline` = base + a LoRA fine-tuned on a full benchmark training set)
generate greedily in left-padded batches with the chat template, extract the answer (a number, an option letter, or
yes/no/maybe), and score accuracy with a bootstrap 95% confidence interval. Unparseable outputs count as wrong and
are reported separately. Writes `results.json`, `results.md`, `results.png` and `details/<benchmark>-<variant>.jsonl`
to `output_dir`. `write_model_index(card_path, results)` then puts the adapter's scores in its model card's
`model-index` metadata.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from builder.config import ConfigError, check_range, fail, from_dict, load_recipe, merge, parse_overrides, to_dict
from builder.embedded import DEFAULT_MODEL_ID, model_path
from builder.publish import package_versions

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
CI_LEVEL = 0.95
NUMBER_REL_TOL = 1e-4
NUMBER_ABS_TOL = 1e-6  # so that a target of 0 can be matched at all
VERSIONED_PACKAGES = ("nanoflux", "peft", "transformers", "torch", "datasets", "huggingface_hub")


class EvalError(RuntimeError):
    """The evaluation cannot go on (no such adapter, column or label); the message says why and what to do."""


# --- benchmark formats -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """A benchmark's answer kind, Hub location and column mapping (any of it can be overridden in the recipe)."""

    kind: str
    title: str
    path: str | None = None
    subset: str | None = None
    split: str = "test"
    columns: dict[str, Any] = field(default_factory=dict)


FORMATS: dict[str, Format] = {
    "gsm_hard": Format(
        "number", "GSM-Hard", "reasoning-machines/gsm-hard", split="train",
        columns={"question": "input", "answer": "target"},
    ),
    "medqa": Format(
        "choice", "MedQA (USMLE, 4 options)", "GBaker/MedQA-USMLE-4-options",
        columns={"question": "question", "options": "options", "answer": "answer_idx", "answer_type": "letter"},
    ),
    "medmcqa": Format(  # the test split's labels are not public: MultiMedQA reports the validation split
        "choice", "MedMCQA", "openlifescienceai/medmcqa", split="validation",
        columns={"id": "id", "question": "question", "option_columns": ["opa", "opb", "opc", "opd"], "answer": "cop",
                 "answer_type": "index", "explanation": "exp"},
    ),
    "pubmedqa": Format(  # pqa_labeled has only a train split (the 1,000 expert-labelled questions)
        "yes_no_maybe", "PubMedQA (PQA-L)", "qiaojin/PubMedQA", subset="pqa_labeled", split="train",
        columns={"id": "pubid", "question": "question", "context": "context.contexts", "answer": "final_decision",
                 "explanation": "long_answer"},
    ),
    "mmlu": Format(  # one subject per benchmark entry: set `subset`, e.g. clinical_knowledge
        "choice", "MMLU", "cais/mmlu",
        columns={"question": "question", "options": "choices", "answer": "answer", "answer_type": "index"},
    ),
    "genome_bench": Format(  # options a.-e. inline in `question`; `answer` = "<explanation>..</explanation> <answer>c</answer>"
        "choice", "Genome-Bench", "Mingyin0312/Genome-Bench",
        columns={"question": "question", "answer": "answer", "answer_type": "letter"},
    ),
    # Generic formats: name the columns yourself.
    "choice": Format("choice", "multiple choice"),
    "number": Format("number", "numeric answers"),
    "yes_no_maybe": Format("yes_no_maybe", "yes/no/maybe"),
}

INSTRUCTIONS = {
    ("number", True): "Solve the problem step by step. End with the final numeric answer on its own line, written as `Final answer: <number>`.",
    ("number", False): "Give only the final numeric answer, written as `Final answer: <number>`.",
    ("choice", True): "Think step by step, then end with the letter of the correct option on its own line, written as `Final answer: <letter>`.",
    ("choice", False): "Answer with the letter of the correct option only, written as `Final answer: <letter>`.",
    ("yes_no_maybe", True): "Think step by step, then end with yes, no or maybe on its own line, written as `Final answer: <yes, no or maybe>`.",
    ("yes_no_maybe", False): "Answer with yes, no or maybe only, written as `Final answer: <yes, no or maybe>`.",
}


# --- config ----------------------------------------------------------------------------------------------


@dataclass
class ColumnsConfig:
    """Where a benchmark's fields are; null takes the format's default (see `FORMATS`)."""

    id: str | None = None
    """Row id column (null: the row number)."""
    question: str | None = None
    options: str | None = None
    """A column holding the options as a list, or as a mapping {A: text, B: text, ...}."""
    option_columns: list[str] | None = None
    """One column per option, in A, B, C... order (e.g. [opa, opb, opc, opd]). With neither `options` nor
    `option_columns`, the options are read from the question text (`a. ... b. ...` or `(A) ... (B) ...`)."""
    answer: str | None = None
    answer_type: str | None = None
    """Multiple choice: `letter` (A / b / "(C)" / "<answer>d</answer>"), `index` (0-based) or `auto` (ints are indices)."""
    context: str | None = None
    """A passage shown before the question (dotted paths reach into mappings: `context.contexts`)."""
    explanation: str | None = None
    """A worked answer, used only as the training target when counting the baseline's training tokens."""


@dataclass
class BenchmarkConfig:
    """One benchmark: its format, where its data is, which rows, and its columns."""

    format: str = ""
    """gsm_hard, medqa, medmcqa, pubmedqa, mmlu, genome_bench, or the generic choice / number / yes_no_maybe."""
    name: str | None = None
    """Label in results and file names (default: the format, plus the subset)."""
    path: str | None = None
    """Hub dataset id, or a local file (.jsonl/.json/.parquet/.csv) or folder; null: the format's Hub id."""
    subset: str | None = None
    """Dataset config name (e.g. pqa_labeled, clinical_knowledge); null: the format's default."""
    split: str | None = None
    revision: str | None = None
    """Hub revision (tag, branch or commit); results record the commit it resolved to."""
    limit: int | None = None
    """Evaluate the first `limit` rows only (null: all)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)

    @property
    def kind(self) -> str:
        return FORMATS[self.format].kind

    @property
    def title(self) -> str:
        title = FORMATS[self.format].title
        return f"{title} ({self.subset})" if self.format == "mmlu" and self.subset else title

    def validate(self, path: str) -> None:
        """Check the fields and fill in the format's defaults."""
        if self.format not in FORMATS:
            fail(f"{path}.format", self.format, "unknown format", f"use one of {', '.join(FORMATS)}")
        preset = FORMATS[self.format]
        self.path = self.path or preset.path
        self.subset = self.subset or preset.subset
        self.split = self.split or preset.split
        if not self.path:
            fail(f"{path}.path", self.path, f"format {self.format} has no default dataset", "set path to a Hub dataset id or a local file")
        if self.format == "mmlu" and not self.subset:
            fail(f"{path}.subset", self.subset, "MMLU needs a subject", "set subset, e.g. clinical_knowledge or college_medicine")
        if self.name is None:
            self.name = _default_name({"format": self.format, "subset": self.subset})
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            fail(f"{path}.name", self.name, "not usable in file names", "use letters, digits, '.', '_' and '-'")
        if self.limit is not None:
            check_range(f"{path}.limit", self.limit, 1, 10_000_000)
        own_options = self.columns.options is not None or self.columns.option_columns is not None
        for key, value in preset.columns.items():
            if getattr(self.columns, key) is None and not (own_options and key in ("options", "option_columns")):
                setattr(self.columns, key, value)
        columns = self.columns
        columns.question = columns.question or "question"
        columns.answer = columns.answer or "answer"
        columns.answer_type = columns.answer_type or "auto"
        if columns.answer_type not in ("letter", "index", "auto"):
            fail(f"{path}.columns.answer_type", columns.answer_type, "unknown answer type", "use letter, index or auto")
        if columns.options and columns.option_columns:
            fail(f"{path}.columns", {"options": columns.options, "option_columns": columns.option_columns},
                 "options given twice", "set either options (one list/mapping column) or option_columns, not both")
        if columns.option_columns is not None and not 2 <= len(columns.option_columns) <= len(LETTERS):
            fail(f"{path}.columns.option_columns", columns.option_columns, "needs 2 to 10 columns", "list one column per option, in A, B, C... order")


@dataclass
class ComputeConfig:
    """Training-token accounting: a NanoFlux dataset against a full benchmark training split (the paper's baseline)."""

    nanoflux_data: str = ""
    """The NanoFlux dataset: a Hub dataset id, or a local file/folder; it needs a `messages` column."""
    nanoflux_subset: str | None = None
    nanoflux_split: str = "train"
    nanoflux_revision: str | None = None
    baseline: BenchmarkConfig | None = None
    """The full-benchmark training data, e.g. {format: medqa, split: train}; a `messages` column is used as is,
    otherwise each row becomes (prompt -> explanation + `Final answer: <gold>`)."""

    def validate(self, path: str) -> None:
        if not self.nanoflux_data.strip():
            fail(f"{path}.nanoflux_data", self.nanoflux_data, "missing", "name the NanoFlux dataset (Hub id or local path)")
        if self.baseline is None:
            fail(f"{path}.baseline", None, "missing", "name the full benchmark training set, e.g. {format: medqa, split: train}")
        self.baseline.validate(f"{path}.baseline")


@dataclass
class EvalConfig:
    """An evaluation: a base model, its adapters, the benchmarks and the generation settings."""

    model: str = DEFAULT_MODEL_ID
    """Base model: a Hub id or a local folder; the packaged SmolLM2-135M-Instruct needs no download."""
    adapter: str | None = None
    """The NanoFlux LoRA adapter: a local folder or a Hub repo id (null: evaluate the base model only)."""
    adapter_optional: bool = False
    """When the adapter cannot be found, warn and evaluate the base model only (instead of failing)."""
    baseline_adapter: str | None = None
    """A LoRA fine-tuned on a full benchmark training set (the paper's baseline), evaluated as variant `baseline`."""
    evaluate_base: bool = True
    """Evaluate the base model alone too (variant `base`); false when its scores are known (a sweep scores it once)."""
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    limit: int | None = None
    """Evaluate at most this many rows of every benchmark (a cap on each benchmark's own `limit`)."""
    max_new_tokens: int = 512
    batch_size: int = 8
    reasoning: bool = True
    """Ask for step-by-step reasoning before the final answer; false asks for the final answer only."""
    enable_thinking: bool | None = None
    """Passed to the chat template when set (Qwen3: false turns its thinking mode off)."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16 or float16."""
    seed: int = 0
    bootstrap_samples: int = 1000
    compute: ComputeConfig | None = None
    """Count training tokens of the NanoFlux data and of a full benchmark training set (the compute ratio)."""
    output_dir: str = "outputs/eval"

    def validate(self) -> None:
        if not self.model.strip():
            fail("model", self.model, "empty", f"give a Hub model id or a folder, e.g. {DEFAULT_MODEL_ID}")
        for name in ("adapter", "baseline_adapter"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                fail(name, value, "empty", "give a local adapter folder or a Hub repo id (org/name), or null")
        if not self.benchmarks:
            fail("benchmarks", self.benchmarks, "no benchmarks", "list at least one, e.g. [{format: medqa}]")
        for i, bench in enumerate(self.benchmarks):
            bench.validate(f"benchmarks[{i}]")
        names = [bench.name for bench in self.benchmarks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            fail("benchmarks", duplicates, "duplicate benchmark names", "give each entry its own `name`")
        if self.limit is not None:
            check_range("limit", self.limit, 1, 10_000_000)
        check_range("max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("bootstrap_samples", self.bootstrap_samples, 100, 1_000_000)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            fail("dtype", self.dtype, "unknown dtype", "use auto, float32, bfloat16 or float16")
        if not self.output_dir.strip():
            fail("output_dir", self.output_dir, "empty", "name a folder, e.g. outputs/eval")
        if self.compute is not None:
            self.compute.validate("compute")


def build_eval_config(recipe: str | Path | None, cli_args: list[str] | None = None) -> EvalConfig:
    """Recipe + `--field value` overrides → a validated EvalConfig (errors name the field, the value and the fix).

    A benchmark entry is overridden by its position or its name: `--benchmarks.0.limit 5`, `--benchmarks.medqa.split test`.
    """
    data = load_recipe(recipe)
    overrides = parse_overrides(cli_args or [])
    if isinstance(overrides.get("benchmarks"), dict) and isinstance(data.get("benchmarks"), list):
        data["benchmarks"] = _override_entries(data["benchmarks"], overrides.pop("benchmarks"))
    config = from_dict(EvalConfig, merge(data, overrides))
    config.validate()
    return config


def _override_entries(entries: list[Any], overrides: dict[str, Any]) -> list[Any]:
    entries = list(entries)
    for key, value in overrides.items():
        names = [_default_name(e) if isinstance(e, dict) else None for e in entries]
        index = int(key) if str(key).isdigit() else names.index(key) if key in names else None
        if index is None or index >= len(entries):
            raise ConfigError(f"benchmarks.{key}: no such benchmark entry (got {key!r}). Fix: use an index 0-{len(entries) - 1} or one of {names}")
        if not isinstance(value, dict):
            raise ConfigError(f"benchmarks.{key}: expected fields (got {value!r}). Fix: write --benchmarks.{key}.FIELD VALUE")
        entries[index] = merge(entries[index], value)
    return entries


def _default_name(entry: dict[str, Any]) -> str:
    """A benchmark entry's name: its own, else the format (with the subject for MMLU), e.g. `mmlu-anatomy`."""
    fmt = str(entry.get("format", ""))
    return entry.get("name") or fmt.replace("_", "-") + (f"-{entry['subset']}" if fmt == "mmlu" and entry.get("subset") else "")


# --- data ------------------------------------------------------------------------------------------------


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


def load_rows(path: str, *, subset: str | None = None, split: str = "train", revision: str | None = None) -> Any:
    """A `datasets.Dataset`: a local file (json/jsonl/parquet/csv builder with `data_files`), a local folder, or a Hub id."""
    from datasets import load_dataset

    local = Path(path)
    if local.is_file():
        builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
        builder = builders.get(local.suffix.lower())
        if builder is None:
            raise EvalError(f"{path}: unknown file type. Fix: use a .jsonl, .json, .parquet or .csv file")
        return load_dataset(builder, data_files={split: str(local)}, split=split)
    if local.is_dir():
        return load_dataset(str(local), name=subset, split=split)
    return load_dataset(path, name=subset, split=split, revision=revision)


def resolve_revision(bench: BenchmarkConfig) -> str | None:
    """The Hub commit `bench.revision` points to now (null for local data; the configured revision when offline)."""
    if Path(bench.path).exists():
        return None
    if bench.revision and re.fullmatch(r"[0-9a-f]{40}", bench.revision):
        return bench.revision
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled

    try:
        return HfApi().dataset_info(bench.path, revision=bench.revision).sha
    except (OSError, HFValidationError, OfflineModeIsEnabled) as err:
        logger.warning("%s: could not resolve the revision of %s (%s); recording %r", bench.name, bench.path, type(err).__name__, bench.revision)
        return bench.revision


def load_benchmark(bench: BenchmarkConfig, *, reasoning: bool = True, limit: int | None = None, revision: str | None = None) -> list[Example]:
    """The first `limit` rows of a benchmark, normalised to Examples. Rows without a usable gold answer are dropped."""
    data = load_rows(bench.path, subset=bench.subset, split=bench.split, revision=revision or bench.revision)
    limits = [n for n in (bench.limit, limit) if n is not None]
    if limits and min(limits) < len(data):
        data = data.select(range(min(limits)))
    examples = normalise(data, bench, reasoning=reasoning)
    logger.info("%s: %d examples from %s%s [%s]", bench.name, len(examples), bench.path, f" ({bench.subset})" if bench.subset else "", bench.split)
    return examples


def normalise(rows: Any, bench: BenchmarkConfig, *, reasoning: bool = True) -> list[Example]:
    """Rows in the benchmark's own schema → Examples (id, prompt, options, gold)."""
    columns = bench.columns
    needed = [columns.question, columns.answer, columns.id, columns.options, *(columns.option_columns or [])]
    needed += [columns.context.split(".")[0]] if columns.context else []
    available = list(rows.column_names)
    for name in filter(None, needed):
        if name not in available:
            raise EvalError(f"{bench.name}: column {name!r} is not in {bench.path} (has: {available}). Fix: map it with benchmarks[].columns")
    examples, dropped = [], []
    for index, row in enumerate(rows):
        row_id = str(row[columns.id]) if columns.id else str(index)
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
            gold = _gold_letter(row[columns.answer], len(options), columns.answer_type)
        elif bench.kind == "number":
            gold = _gold_number(row[columns.answer])
        else:
            gold = str(row[columns.answer]).strip().lower()
            gold = gold if gold in ("yes", "no", "maybe") else None
        if gold is None or (bench.kind == "choice" and len(options) < 2):
            dropped.append(row_id)
            continue
        context = _get(row, columns.context) if columns.context else None
        if isinstance(context, list):
            context = "\n".join(str(c) for c in context)
        explanation = _get(row, columns.explanation) if columns.explanation else None
        if explanation is None and isinstance(row[columns.answer], str):
            match = re.search(r"<explanation>\s*(.*?)\s*</explanation>", row[columns.answer], re.S)
            explanation = match.group(1) if match else None
        prompt = build_prompt(question, options, bench.kind, reasoning=reasoning, context=context)
        examples.append(Example(row_id, prompt, options, gold, str(explanation) if explanation else None))
    if dropped:
        logger.warning("%s: dropped %d row(s) without a usable answer or options (ids %s)", bench.name, len(dropped), ", ".join(dropped[:5]))
    if not examples:
        raise EvalError(f"{bench.name}: no row of {bench.path} [{bench.split}] has a usable answer. Fix: check the split (test splits may be unlabelled) and columns.answer / answer_type")
    return examples


def build_prompt(question: str, options: Sequence[str], kind: str, *, reasoning: bool = True, context: str | None = None) -> str:
    """The user message: (context), the question, (the lettered options), and how to answer."""
    parts = [f"Context:\n{context}", f"Question: {question}"] if context else [question]
    if options:
        parts.append("\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options)))
    parts.append(INSTRUCTIONS[kind, reasoning])
    return "\n\n".join(parts)


_INLINE_OPTION = re.compile(r"(?:(?<=\s)|^)\(?([A-Ja-j])[.)]\s+")
_CHOOSE = re.compile(r"\s*please choose one of the following options\s*:?\s*$", re.I)


def split_inline_options(text: str) -> tuple[str, list[str]]:
    """`"... Please choose one of the following options: a. x b. y c. z"` → (stem, [x, y, z]).

    Takes the longest run of labels a, b, c, ... (or (A), (B), ...) in order, the last one on a tie; (text, []) when
    there is no run of two or more.
    """
    matches = list(_INLINE_OPTION.finditer(text))
    best: list[re.Match[str]] = []
    for start, first in enumerate(matches):
        if first.group(1).lower() != "a":
            continue
        chain = [first]
        for match in matches[start + 1 :]:
            if len(chain) < len(LETTERS) and match.group(1).lower() == LETTERS[len(chain)].lower():
                chain.append(match)
        if len(chain) >= max(2, len(best)):
            best = chain
    if not best:
        return text, []
    bounds = [m.start() for m in best[1:]] + [len(text)]
    options = [text[m.end() : end].strip().strip("'\"").strip() for m, end in zip(best, bounds)]
    return _CHOOSE.sub("", text[: best[0].start()]).strip(), options


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _gold_letter(value: Any, n_options: int, answer_type: str) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if answer_type == "index" or (answer_type == "auto" and isinstance(value, int)):
        try:
            index = int(value)
        except (TypeError, ValueError):
            return None
        return LETTERS[index] if 0 <= index < n_options else None
    text = str(value).strip()
    match = re.search(r"<answer>\s*\(?([A-Ja-j])\)?\s*</answer>", text) or re.fullmatch(r"\(?([A-Ja-j])[).]?", text)
    letter = match.group(1).upper() if match else None
    return letter if letter and LETTERS.index(letter) < n_options else None


def _gold_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        number = extract_number(str(value)) if value is not None else None
    return number if number is not None and math.isfinite(number) else None


# --- answer extraction -----------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)
_NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\d])|(?<![\w.])[-−]?\.\d+")
_FINAL = r"\bfinal\s+answer\b"
_ANSWER = r"<answer>|\b(?:correct|right|best)\s+(?:answer|option|choice)\b|\bthe\s+answer\b|\banswer\b"
_AFTER = re.compile(  # what may stand between a marker and the letter: "is", ":", "**", "option", "(", ...
    r"(?:[\s*_:：=(\[-]|\bis\b|\b(?:would|should)\s+be\b|\boption\b|\bchoice\b|\bletter\b)*([A-Ja-j])(?![A-Za-z0-9])(.?)",
    re.I,
)


def _visible(text: str) -> str:
    """The answer part of an output: without a `<think>...</think>` block (an unclosed one hides everything after it)."""
    return _THINK.sub("", text).strip()


def extract_number(text: str) -> float | None:
    """The number after the last `Final answer:`, else after `####`, else in `\\boxed{}`, else the last number."""
    text = _visible(text).replace("$", "").replace("**", "")
    for marker in (_FINAL + r"\s*(?:is)?\s*[:：]?", r"####", r"\\boxed\{"):
        found = list(re.finditer(marker, text, re.I))
        if found:
            number = _NUMBER.search(text, found[-1].end())
            if number:
                return _to_float(number.group())
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def _to_float(token: str) -> float | None:
    try:
        return float(token.replace(",", "").replace("−", "-"))
    except ValueError:
        return None


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
    standalone = re.findall(r"\(([A-J])\)|(?<![\w(])([A-J])\)|\b[Oo]ption\s+([A-J])\b|^\s*([A-J])(?:[.:]|\s*$)", text, re.M)
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
    word = r"(?:[\s*_:：=(\[-]|\bis\b)*(yes|no|maybe)\b"
    for markers in (rf"<answer>|{_FINAL}", _ANSWER):
        for found in reversed(list(re.finditer(markers, text, re.I))):
            match = re.compile(word, re.I).match(text, found.end())
            if match:
                return match.group(1).lower()
    first = re.match(r"\W*(yes|no|maybe)\b", text, re.I)
    if first:
        return first.group(1).lower()
    used = {w.lower() for w in re.findall(r"\b(yes|no|maybe)\b", text, re.I)}
    return used.pop() if len(used) == 1 else None


def extract_answer(text: str, example: Example, kind: str) -> str | float | None:
    """The answer in a model output, in the form of `example.gold`; None when unparseable."""
    if kind == "number":
        return extract_number(text)
    if kind == "choice":
        return extract_choice(text, example.options)
    return extract_yes_no_maybe(text)


def is_correct(extracted: str | float | None, gold: str | float, kind: str) -> bool:
    """Unparseable (None) is wrong; numbers match within a relative tolerance of 1e-4."""
    if extracted is None:
        return False
    if kind == "number":
        return math.isclose(float(extracted), float(gold), rel_tol=NUMBER_REL_TOL, abs_tol=NUMBER_ABS_TOL)
    return extracted == gold


# --- scoring ---------------------------------------------------------------------------------------------


def bootstrap_ci(correct: Sequence[bool], *, samples: int = 1000, seed: int = 0, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the accuracy (deterministic for a seed)."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


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


# --- models and generation -------------------------------------------------------------------------------


def resolve_adapter(ref: str, *, field_name: str, optional: bool = False, base_model: str | None = None) -> str | None:
    """Check an adapter exists (a local folder, else a Hub repo with `adapter_config.json`) before any model loads.

    Returns `ref`, or None (with a warning) when it is missing and `optional`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    local = Path(ref)
    try:
        if local.is_dir():
            config_file = local / "adapter_config.json"
            if not config_file.is_file():
                raise EvalError(f"{field_name}: {ref} holds no adapter_config.json. Fix: point it at the folder `nanoflux train` wrote (its output_dir)")
        else:
            config_file = Path(hf_hub_download(ref, "adapter_config.json"))
    except (OSError, HFValidationError, EntryNotFoundError) as err:
        if optional:
            logger.warning("%s %r not found (no such folder, and not readable from the Hub: %s): evaluating the base model only", field_name, ref, type(err).__name__)
            return None
        raise EvalError(f"{field_name}: adapter {ref!r} not found (no such folder, and the Hub said {type(err).__name__}). Fix: train one first (nanoflux train), check the repo id and HF_TOKEN, or set {field_name}: null") from None
    trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if base_model and trained_on and trained_on != base_model:
        logger.warning("%s %s was trained on %s, but the base model is %s", field_name, ref, trained_on, base_model)
    return ref


def load_model(model: str, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for greedy batched generation: eval mode, on the GPU if there is one, left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32}.get(dtype) or getattr(torch, dtype)
    logger.info("Loading %s%s (%s, %s)", model, f" from {path}" if path != model else "", torch_dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    base.eval()
    return base, tokenizer


def activate(model: Any, variant: str, adapter: str | None) -> Any:
    """The model for `variant`: the plain base model, or base + that LoRA (loaded once, then switched to)."""
    if adapter is None:
        return model
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(adapter, adapter_name=variant)
        model.set_adapter(variant)
    else:
        model = PeftModel.from_pretrained(model, adapter, adapter_name=variant)
    logger.info("Variant %s: LoRA adapter %s", variant, adapter)
    model.eval()
    return model


def chat_prompts(tokenizer: Any, prompts: Sequence[str], enable_thinking: bool | None = None) -> list[str]:
    """Each prompt as one user turn through the tokenizer's chat template, ready for the assistant's answer."""
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, **kwargs)
        for p in prompts
    ]


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int, enable_thinking: bool | None = None, label: str = "") -> list[str]:
    """Greedy completions of `prompts`, in left-padded batches of similar length; returned in input order."""
    import torch
    from transformers import GenerationConfig

    texts = chat_prompts(tokenizer, prompts, enable_thinking)
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
    )
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            generated = model.generate(**inputs, generation_config=generation_config)
        for i, row in zip(batch, generated[:, inputs["input_ids"].shape[1] :]):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        logger.info("%s: %d/%d generated", label, min(start + batch_size, len(order)), len(order))
    return outputs


# --- compute accounting ----------------------------------------------------------------------------------


def count_training_tokens(conversations: Iterable[list[dict[str, str]]], tokenizer: Any) -> int:
    """Tokens an SFT epoch over `conversations` processes: each one through the chat template, then tokenized."""
    total = 0
    for messages in conversations:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return total


def benchmark_conversations(examples: Sequence[Example]) -> list[list[dict[str, str]]]:
    """A benchmark's training rows as SFT conversations: prompt → (explanation, then) `Final answer: <gold>`."""
    def target(example: Example) -> str:
        gold = f"{example.gold:g}" if isinstance(example.gold, float) else example.gold
        return (f"{example.explanation}\n\n" if example.explanation else "") + f"Final answer: {gold}"

    return [[{"role": "user", "content": e.prompt}, {"role": "assistant", "content": target(e)}] for e in examples]


def compute_accounting(compute: ComputeConfig, tokenizer: Any, *, reasoning: bool = True) -> dict[str, Any]:
    """Training tokens (one epoch, chat template applied) of the NanoFlux data and the full-benchmark baseline data."""
    nanoflux = load_rows(compute.nanoflux_data, subset=compute.nanoflux_subset, split=compute.nanoflux_split, revision=compute.nanoflux_revision)
    if "messages" not in nanoflux.column_names:
        raise EvalError(f"compute.nanoflux_data: {compute.nanoflux_data} has no `messages` column (has: {nanoflux.column_names}). Fix: point it at a NanoFlux dataset")
    nanoflux_tokens = count_training_tokens(nanoflux["messages"], tokenizer)
    bench = compute.baseline
    rows = load_rows(bench.path, subset=bench.subset, split=bench.split, revision=bench.revision)
    if bench.limit is not None and bench.limit < len(rows):
        rows = rows.select(range(bench.limit))
    conversations = rows["messages"] if "messages" in rows.column_names else benchmark_conversations(normalise(rows, bench, reasoning=reasoning))
    baseline_tokens = count_training_tokens(conversations, tokenizer)
    result = {
        "nanoflux": {"data": compute.nanoflux_data, "split": compute.nanoflux_split, "revision": compute.nanoflux_revision, "rows": len(nanoflux), "tokens": nanoflux_tokens},
        "baseline": {"data": bench.path, "subset": bench.subset, "split": bench.split, "rows": len(conversations), "tokens": baseline_tokens},
        "ratio": baseline_tokens / nanoflux_tokens if nanoflux_tokens else None,
        "unit": "training tokens per epoch (chat template applied, tokenizer of the base model)",
    }
    logger.info("Compute: NanoFlux %d rows / %d tokens, baseline %d rows / %d tokens: %.1fx", len(nanoflux), nanoflux_tokens, len(conversations), baseline_tokens, result["ratio"] or math.nan)
    return result


# --- the run ---------------------------------------------------------------------------------------------


def main(config: EvalConfig) -> dict[str, Any]:
    """`nanoflux eval`: evaluate every variant on every benchmark and write the results. Returns results.json's content."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    output_dir = Path(config.output_dir)
    (output_dir / "details").mkdir(parents=True, exist_ok=True)

    # Data and adapters first: a wrong dataset id, column or adapter fails before the model is loaded.
    revisions = {bench.name: resolve_revision(bench) for bench in config.benchmarks}
    data = {
        bench.name: load_benchmark(bench, reasoning=config.reasoning, limit=config.limit, revision=revisions[bench.name])
        for bench in config.benchmarks
    }
    variants: dict[str, str | None] = {"base": None} if config.evaluate_base else {}
    if config.adapter:
        adapter = resolve_adapter(config.adapter, field_name="adapter", optional=config.adapter_optional, base_model=config.model)
        if adapter:
            variants["adapter"] = adapter
    if config.baseline_adapter:
        variants["baseline"] = resolve_adapter(config.baseline_adapter, field_name="baseline_adapter", base_model=config.model)

    if not variants:
        raise EvalError("nothing to evaluate: evaluate_base is false and no adapter was found. Fix: name an adapter, or set evaluate_base true")
    model, tokenizer = load_model(config.model, config.dtype)
    compute = compute_accounting(config.compute, tokenizer, reasoning=config.reasoning) if config.compute else None

    scores: dict[str, dict[str, Any]] = {bench.name: {} for bench in config.benchmarks}
    for variant, adapter in variants.items():
        model = activate(model, variant, adapter)
        for bench in config.benchmarks:
            examples = data[bench.name]
            start = time.perf_counter()
            outputs = generate(
                model, tokenizer, [e.prompt for e in examples], max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size, enable_thinking=config.enable_thinking, label=f"{bench.name}/{variant}",
            )  # fmt: skip
            details = []
            for example, output in zip(examples, outputs):
                extracted = extract_answer(output, example, bench.kind)
                details.append({
                    "id": example.id, "prompt": example.prompt, "output": output, "extracted": extracted,
                    "gold": example.gold, "correct": is_correct(extracted, example.gold, bench.kind),
                })  # fmt: skip
            with open(output_dir / "details" / f"{bench.name}-{variant}.jsonl", "w") as f:
                f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in details)
            result = score([d["correct"] for d in details], sum(d["extracted"] is None for d in details), samples=config.bootstrap_samples, seed=config.seed)
            result["wall_time_s"] = round(time.perf_counter() - start, 1)
            scores[bench.name][variant] = result
            logger.info(
                "%s / %s: accuracy %.3f [%.3f, %.3f] on %d, %d unparseable",
                bench.name, variant, result["accuracy"], result["ci_low"], result["ci_high"], result["n"], result["unparseable"],
            )  # fmt: skip

    results = {
        "model": config.model,
        "adapter": variants.get("adapter"),
        "baseline_adapter": variants.get("baseline"),
        "variants": list(variants),
        "benchmarks": [
            {"name": b.name, "title": b.title, "format": b.format, "kind": b.kind, "path": b.path, "subset": b.subset,
             "split": b.split, "revision": revisions[b.name], "rows": len(data[b.name])}
            for b in config.benchmarks
        ],  # fmt: skip
        "results": scores,
        "generation": {
            "greedy": True, "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
            "reasoning": config.reasoning, "enable_thinking": config.enable_thinking, "chat_template": True,
            "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
        },  # fmt: skip
        "bootstrap": {"samples": config.bootstrap_samples, "seed": config.seed, "level": CI_LEVEL},
        "compute": compute,
        "config": to_dict(config),
        "packages": package_versions(VERSIONED_PACKAGES),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_results(results, output_dir)
    logger.info("Results in %s (%.0f s)", output_dir, results["wall_time_s"])
    return results


# --- outputs ---------------------------------------------------------------------------------------------


def write_results(results: dict[str, Any], output_dir: str | Path) -> None:
    """`results.json`, `results.md` and `results.png` in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (output_dir / "results.md").write_text(results_markdown(results))
    plot_results(results, output_dir / "results.png")


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """One markdown row per benchmark × variant: n, correct, accuracy and its 95% CI (%), unparseable outputs."""
    lines = ["| benchmark | variant | n | correct | accuracy (%) | 95% CI (%) | unparseable |", "|---|---|---|---|---|---|---|"]
    for bench in results["benchmarks"]:
        for variant, r in results["results"].get(bench["name"], {}).items():
            lines.append(
                f"| {bench['title']} | {variant} | {r['n']} | {r['correct']} | {_pct(r['accuracy'])} | "
                f"{_pct(r['ci_low'])} – {_pct(r['ci_high'])} | {r['unparseable']} ({_pct(r['unparseable_rate'])}%) |"
            )
    return "\n".join(lines) + "\n"


def results_markdown(results: dict[str, Any]) -> str:
    """`results.md`: what was evaluated, how, the table, and the compute comparison."""
    gen = results["generation"]
    lines = [
        "# NanoFlux evaluation",
        "",
        f"- Base model: `{results['model']}`",
        f"- Adapter: `{results['adapter']}`" if results.get("adapter") else "- Adapter: none (base model only)",
    ]
    if results.get("baseline_adapter"):
        lines.append(f"- Baseline adapter (full-benchmark fine-tuning): `{results['baseline_adapter']}`")
    lines += [
        f"- Generation: greedy, chat template, max {gen['max_new_tokens']} new tokens, batch {gen['batch_size']}, "
        f"{'step-by-step reasoning' if gen['reasoning'] else 'final answer only'}, {gen['dtype']} on {gen['device']}",
        f"- Accuracy with a percentile bootstrap {int(100 * results['bootstrap']['level'])}% CI "
        f"({results['bootstrap']['samples']} resamples, seed {results['bootstrap']['seed']}); unparseable outputs count as wrong",
        "",
        results_table(results),
    ]
    compute = results.get("compute")
    if compute:
        nf, bl = compute["nanoflux"], compute["baseline"]
        lines += [
            "## Training compute",
            "",
            "| data | rows | training tokens |",
            "|---|---|---|",
            f"| NanoFlux `{nf['data']}` | {nf['rows']} | {nf['tokens']} |",
            f"| full benchmark `{bl['data']}` [{bl['split']}] | {bl['rows']} | {bl['tokens']} |",
            "",
            f"Fine-tuning on the full benchmark processes {compute['ratio']:.1f}× the training tokens of NanoFlux per epoch "
            "(chat template applied, counted with the base model's tokenizer).",
            "",
        ]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """A grouped bar chart of accuracy per benchmark and variant, with the bootstrap CI as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks, variants = results["benchmarks"], results["variants"]
    figure = Figure(figsize=(max(6.0, 1.4 * len(benchmarks) + 2), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(variants)
    for j, variant in enumerate(variants):
        rows = [results["results"][b["name"]].get(variant) for b in benchmarks]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(benchmarks))]
        accuracy = [r["accuracy"] if r else 0.0 for r in rows]
        errors = [[max(0.0, r["accuracy"] - r["ci_low"]) if r else 0.0 for r in rows], [max(0.0, r["ci_high"] - r["accuracy"]) if r else 0.0 for r in rows]]
        axes.bar(xs, accuracy, width, yerr=errors, capsize=3, label=variant)
    axes.set_xticks(range(len(benchmarks)), [b["title"] for b in benchmarks], rotation=20, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (95% bootstrap CI)")
    axes.set_title(f"{results['model']}" + (f" + {results['adapter']}" if results.get("adapter") else ""))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# --- model card ------------------------------------------------------------------------------------------


def _eval_results(results: dict[str, Any], variant: str) -> list[Any]:
    from huggingface_hub import EvalResult

    evals = []
    for bench in results["benchmarks"]:
        r = results["results"][bench["name"]].get(variant)
        if r is None:
            continue
        evals.append(EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=bench["path"], dataset_name=bench["title"], dataset_config=bench["subset"],
            dataset_split=bench["split"], dataset_revision=bench["revision"],
            metric_type="accuracy", metric_name="Accuracy", metric_value=round(r["accuracy"], 4),
        ))  # fmt: skip
    if not evals:
        raise EvalError(f"the results have no {variant!r} variant (have: {results['variants']}). Fix: evaluate with an adapter")
    return evals


def model_index(results: dict[str, Any], adapter_repo: str, *, variant: str = "adapter") -> list[dict[str, Any]]:
    """The Hub `model-index` metadata for `adapter_repo`: one entry per benchmark (task, dataset {name, type, config,
    split, revision}, metrics [{type: accuracy, value}]), from the `variant` scores."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    return eval_results_to_model_index(adapter_repo, _eval_results(results, variant))


def write_model_index(card_path: str | Path, results: dict[str, Any], *, adapter_repo: str | None = None, variant: str = "adapter") -> Path:
    """Put the `variant` scores in a model card README.md in place: `model-index` metadata, and the results table
    in its `## Evaluation` section (appended when there is none)."""
    from huggingface_hub import ModelCard

    card_path = Path(card_path)
    card = ModelCard.load(card_path)
    name = adapter_repo or card.data.model_name or results.get("adapter") or card_path.parent.name
    card.data.model_name = name
    card.data.eval_results = _eval_results(results, variant)
    subset = {**results, "variants": [variant], "results": {k: {variant: v[variant]} for k, v in results["results"].items() if variant in v}}
    section = (
        f"Greedy decoding, chat template, max {results['generation']['max_new_tokens']} new tokens; accuracy with a "
        f"bootstrap 95% CI; unparseable outputs count as wrong. Base model alone and other variants: `results.json` of "
        f"the evaluation.\n\n{results_table(subset)}\n"
    )
    text = card.text
    pattern = re.compile(r"(^## Evaluation[ \t]*\n)(.*?)(?=^## |\Z)", re.M | re.S)
    card.text = pattern.sub(lambda m: m.group(1) + "\n" + section, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n## Evaluation\n\n" + section
    card.save(card_path)
    return card_path
