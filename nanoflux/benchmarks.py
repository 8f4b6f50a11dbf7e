"""Benchmarks: where their test and dev rows are, and loading them (`nanoflux/benchmarks.py`).

A benchmark entry (`BenchmarkConfig`) names a format (answer kind, Hub location, column mapping: `FORMATS`, in
nanoflux/benchmark_formats.py) and which rows to read. Its test partition is the configured split, narrowed by an
`ids_file` (PubMedQA: the 500 ids of PubMedQA's `test_ground_truth.json`) and never including its dev rows; its dev
partition (`dev:`) is a real validation split, the rows an `exclude_ids_file` leaves, or a seeded sample held out of a
split (`holdout_from`, `size`, `seed`).
When a dev sample is held out of the very split the entry reads (Genome-Bench has one split; a training entry such as
`{format: medqa, split: train}`), those rows are left out of that entry. `load_benchmark` returns the Examples (rows
are normalised in nanoflux/rows.py) with a `selection` record: the exact data, filters, sample and dropped rows.
The formats' names and the row types are re-exported here: `from nanoflux.benchmarks import ...` reaches them all.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoflux.benchmark_formats import FORMATS, MULTIMEDQA_MMLU, PACKAGE_DATA, Format
from nanoflux.questions import LETTERS
from nanoflux.recipe import check_range, fail, from_dict, load_recipe
from nanoflux.rows import EvalError, ExampleSet, normalise

logger = logging.getLogger(__name__)

PARTITIONS = ("test", "dev")
ALL_ROWS = "all"


# --- config ----------------------------------------------------------------------------------------------


@dataclass
class ColumnsConfig:
    """Where a benchmark's fields are; null takes the format's default (see `FORMATS`)."""

    id: str | None = None
    """Row id column (null: the row number in its split)."""
    question: str | None = None
    options: str | None = None
    """A column holding the options as a list, or as a mapping {A: text, B: text, ...}."""
    option_columns: list[str] | None = None
    """One column per option, in A, B, C... order (e.g. [opa, opb, opc, opd]). With neither `options` nor
    `option_columns`, the options are read from the question text (`a. ... b. ...` or `(A) ... (B) ...`)."""
    answer: str | None = None
    answer_type: str | None = None
    """Multiple choice: `letter` (A / b / "(C)" / "<answer>d.</answer>"), `index` or `auto` (ints are indices)."""
    answer_base: int | None = None
    """Index answers: 0 when the first option is 0 (HF MedMCQA `cop`, MMLU), 1 when it is 1 (MedMCQA's raw
    dev.json)."""
    context: str | None = None
    """A passage shown before the question (dotted paths reach into mappings: `context.contexts`)."""
    explanation: str | None = None
    """A worked answer, the training target of the baseline's rows (text before a `####` only)."""


@dataclass
class DevConfig:
    """Where a benchmark's dev rows are (for choosing settings, e.g. sweep cells); never rows of its test partition.

    Unset fields are the benchmark entry's own; `{}` means the benchmark has no dev split.
    """

    format: str | None = None
    """Another format for the dev rows (GSM-Hard's are GSM8K's), with that format's Hub id and columns."""
    path: str | None = None
    subset: str | None = None
    split: str | None = None
    """A real validation split of the data, e.g. validation."""
    revision: str | None = None
    holdout_from: str | None = None
    """Hold a seeded sample of `size` rows out of this split; when it is the split the entry reads, they leave its
    test."""
    size: int | None = None
    seed: int = 0
    ids_file: str | None = None
    exclude_ids_file: str | None = None
    columns: ColumnsConfig | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, 0) for f in dataclasses.fields(self))

    def names_rows(self) -> bool:
        """Whether it says where the dev rows are (not only how many, or which seed)."""
        return any(
            getattr(self, name)
            for name in ("format", "path", "subset", "split", "holdout_from", "ids_file", "exclude_ids_file")
        )


@dataclass
class BenchmarkConfig:
    """One benchmark: its format, where its data is, which rows, its columns and its dev split."""

    format: str = ""
    """gsm_hard, gsm8k, medqa, medmcqa, pubmedqa, mmlu, genome_bench, or the generic choice / number / yes_no_maybe."""
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
    header: bool = True
    """CSV files: false when the first line is a row, not column names (the original MMLU release); the columns are
    then named by position, "0", "1", ... (format mmlu maps them itself: question, A-D, answer letter)."""
    ids_file: str | None = None
    """Keep only the rows whose id is listed: a JSON list or mapping (its keys), or a text file with one id a line;
    `package:NAME` is a file shipped in nanoflux/data/; `all` keeps every row. PubMedQA: its 500 test ids."""
    exclude_ids_file: str | None = None
    """Drop the rows whose id is listed (same file forms as ids_file)."""
    sample_size: int | None = None
    """Read a seeded random sample of this many rows (kept in dataset order) instead of every row."""
    sample_seed: int = 0
    abs_tol: float | None = None
    """Numeric answers: right when abs(pred - gold) < abs_tol (default 1e-3, PAL's GSM-Hard rule)."""
    rel_tol: float | None = None
    """Numeric answers: also right within this relative tolerance (default 0: none)."""
    dev: DevConfig | None = None
    """The dev split (null: the format's default for its Hub dataset, see README; `{}`: none)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)

    @property
    def kind(self) -> str:
        return FORMATS[self.format].kind

    @property
    def title(self) -> str:
        title = FORMATS[self.format].title
        return f"{title} ({self.subset})" if self.format == "mmlu" and self.subset else title

    @property
    def multimedqa(self) -> bool:
        """Part of MultiMedQA: MedMCQA, PubMedQA, MedQA and the six MMLU medical subjects."""
        return FORMATS[self.format].multimedqa and (self.format != "mmlu" or self.subset in MULTIMEDQA_MMLU)

    def _reads_preset_data(self) -> bool:
        preset = FORMATS[self.format]
        return (
            bool(preset.path) and self.path == preset.path and (preset.subset is None or self.subset == preset.subset)
        )

    def validate(self, path: str) -> None:
        """Check the fields and fill in the format's defaults."""
        if self.format not in FORMATS:
            fail(f"{path}.format", self.format, "unknown format", f"use one of {', '.join(FORMATS)}")
        preset = FORMATS[self.format]
        self.path = self.path or preset.path
        self.subset = self.subset or preset.subset
        self.split = self.split or preset.split
        if not self.path:
            fail(
                f"{path}.path",
                self.path,
                f"format {self.format} has no default dataset",
                "set path to a Hub dataset id or a local file",
            )
        if self.format == "mmlu" and not self.subset:
            fail(
                f"{path}.subset",
                self.subset,
                "MMLU needs a subject",
                "set subset, e.g. clinical_knowledge or college_medicine",
            )
        if self.name is None:
            self.name = default_name({"format": self.format, "subset": self.subset})
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            fail(f"{path}.name", self.name, "not usable in file names", "use letters, digits, '.', '_' and '-'")
        if self.limit is not None:
            check_range(f"{path}.limit", self.limit, 1, 10_000_000)
        if self.sample_size is not None:
            check_range(f"{path}.sample_size", self.sample_size, 1, 10_000_000)
        if self._reads_preset_data():
            self.ids_file = self.ids_file or preset.ids_file
            if preset.dev is not None and (
                self.dev is None or (not self.dev.is_empty() and not self.dev.names_rows())
            ):
                # no dev block: the format's; one that only adjusts (size, seed, revision, columns): the format's,
                # adjusted
                given = (
                    {}
                    if self.dev is None
                    else {k: v for k, v in dataclasses.asdict(self.dev).items() if v not in (None, 0)}
                )
                self.dev = from_dict(DevConfig, {**preset.dev, **given})
        self.abs_tol = 1e-3 if self.abs_tol is None else self.abs_tol
        self.rel_tol = 0.0 if self.rel_tol is None else self.rel_tol
        check_range(f"{path}.abs_tol", self.abs_tol, 0, 1e12, low_open=True)
        check_range(f"{path}.rel_tol", self.rel_tol, 0, 1)
        self._fill_columns(path, preset)
        if self.ids_file not in (None, ALL_ROWS) and not self.columns.id:
            fail(
                f"{path}.ids_file",
                self.ids_file,
                "needs an id column",
                "set columns.id to the column that holds the listed ids",
            )
        if self.dev is not None and not self.dev.is_empty():
            dev_benchmark(self, path)

    def _fill_columns(self, path: str, preset: Format) -> None:
        defaults = preset.headerless if not self.header and preset.headerless else preset.columns
        own_options = self.columns.options is not None or self.columns.option_columns is not None
        for key, value in defaults.items():
            if getattr(self.columns, key) is None and not (own_options and key in ("options", "option_columns")):
                setattr(self.columns, key, value)
        columns = self.columns
        columns.question = columns.question or "question"
        columns.answer = columns.answer or "answer"
        columns.answer_type = columns.answer_type or "auto"
        columns.answer_base = 0 if columns.answer_base is None else columns.answer_base
        if columns.answer_type not in ("letter", "index", "auto"):
            fail(
                f"{path}.columns.answer_type", columns.answer_type, "unknown answer type", "use letter, index or auto"
            )
        if columns.answer_base not in (0, 1):
            fail(
                f"{path}.columns.answer_base",
                columns.answer_base,
                "not 0 or 1",
                "use 0 when the first option's index is 0 (HF MedMCQA cop), 1 when it is 1 (MedMCQA dev.json)",
            )
        if columns.options and columns.option_columns:
            fail(
                f"{path}.columns",
                {"options": columns.options, "option_columns": columns.option_columns},
                "options given twice",
                "set either options (one list/mapping column) or option_columns, not both",
            )
        if columns.option_columns is not None and not 2 <= len(columns.option_columns) <= len(LETTERS):
            fail(
                f"{path}.columns.option_columns",
                columns.option_columns,
                "needs 2 to 10 columns",
                "list one column per option, in A, B, C... order",
            )


def default_name(entry: dict[str, Any]) -> str:
    """A benchmark entry's name: its own, else the format (with the subject for MMLU), e.g. `mmlu-anatomy`."""
    fmt = str(entry.get("format", ""))
    return entry.get("name") or fmt.replace("_", "-") + (
        f"-{entry['subset']}" if fmt == "mmlu" and entry.get("subset") else ""
    )


def dev_benchmark(bench: BenchmarkConfig, path: str = "benchmarks[]") -> BenchmarkConfig:
    """The entry that reads `bench`'s dev rows (same name and columns unless the dev block names another format)."""
    dev = bench.dev
    if dev is None or dev.is_empty():
        raise EvalError(
            f"{path}.dev: {bench.name} has no dev split ({bench.path} is not the Hub dataset its format describes, "
            "or dev is {}). Fix: set dev, e.g. {split: validation} or {holdout_from: train, size: 200, seed: 0}"
        )
    if dev.split and dev.holdout_from:
        fail(
            f"{path}.dev",
            {"split": dev.split, "holdout_from": dev.holdout_from},
            "both a split and a held-out sample",
            "set split (a real dev split) or holdout_from + size, not both",
        )
    if dev.holdout_from and not dev.size:
        fail(f"{path}.dev.size", dev.size, "a held-out sample needs a size", "set dev.size, e.g. 200")
    if dev.size and not dev.holdout_from:
        fail(
            f"{path}.dev.holdout_from",
            dev.holdout_from,
            "a sample size needs the split to hold it out of",
            "set dev.holdout_from, e.g. train",
        )
    fmt = dev.format or bench.format
    if fmt not in FORMATS or FORMATS[fmt].kind != bench.kind:
        fail(
            f"{path}.dev.format",
            dev.format,
            f"not a {bench.kind} format",
            f"use a format whose answers are {bench.kind} too, e.g. {bench.format}",
        )
    same_format = fmt == bench.format
    own = same_format and dev.path in (None, bench.path)
    result = BenchmarkConfig(
        format=fmt,
        name=bench.name,
        path=bench.path if own else dev.path or FORMATS[fmt].path,
        subset=dev.subset or (bench.subset if same_format else FORMATS[fmt].subset),
        split=dev.holdout_from or dev.split or (bench.split if own else FORMATS[fmt].split),
        revision=dev.revision or (bench.revision if own else None),
        limit=bench.limit,
        header=bench.header if own else True,
        ids_file=dev.ids_file or ALL_ROWS,
        exclude_ids_file=dev.exclude_ids_file,
        sample_size=dev.size if dev.holdout_from else None,
        sample_seed=dev.seed,
        abs_tol=bench.abs_tol,
        rel_tol=bench.rel_tol,
        dev=DevConfig(),
        columns=dev.columns or (dataclasses.replace(bench.columns) if same_format else ColumnsConfig()),
    )
    result.validate(f"{path}.dev")
    if (
        _same_source(result, bench)
        and not result.sample_size
        and not result.exclude_ids_file
        and result.ids_file in (None, ALL_ROWS)
    ):
        fail(
            f"{path}.dev",
            dataclasses.asdict(dev),
            "the dev rows would be the test rows",
            "set split (a real dev split), holdout_from + size (a held-out sample), or exclude_ids_file",
        )
    return result


def partition_benchmark(bench: BenchmarkConfig, partition: str) -> BenchmarkConfig:
    """The entry that reads `bench`'s `partition` (test: itself; dev: `dev_benchmark`)."""
    if partition not in PARTITIONS:
        fail("partition", partition, "unknown partition", "use test or dev")
    return bench if partition == "test" else dev_benchmark(bench)


# --- data ------------------------------------------------------------------------------------------------


def load_rows(
    path: str, *, subset: str | None = None, split: str = "train", revision: str | None = None, header: bool = True
) -> Any:
    """A `datasets.Dataset`: a local file (json/jsonl/parquet/csv builder with `data_files`), a local folder, or a Hub
    id."""
    from datasets import Dataset, load_dataset

    local = Path(path)
    if not header:
        if not (local.is_file() and local.suffix.lower() == ".csv"):
            raise EvalError(
                f"{path}: header: false is for local CSV files. Fix: set header: true (the default), or download"
                " the CSV"
            )
        with local.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
        width = max((len(row) for row in rows), default=0)
        return Dataset.from_dict({str(i): [row[i] if i < len(row) else None for row in rows] for i in range(width)})
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
        logger.warning(
            "%s: could not resolve the revision of %s (%s); recording %r",
            bench.name,
            bench.path,
            type(err).__name__,
            bench.revision,
        )
        return bench.revision


def read_ids(ref: str, field_name: str) -> list[str]:
    """The ids in an ids file: a JSON list, a JSON mapping (its keys), or text with one id a line (# comments)."""
    file = PACKAGE_DATA / ref.removeprefix("package:") if ref.startswith("package:") else Path(ref)
    if not file.is_file():
        raise EvalError(
            f"{field_name}: no ids file at {ref!r}. Fix: point it at a JSON list/mapping or a text file of ids, or set"
            " it to null"
        )
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not isinstance(data, (list, dict)):
        raise EvalError(
            f"{field_name}: {ref} holds a JSON {type(data).__name__}. Fix: use a JSON list of ids or a mapping keyed"
            " by id"
        )
    return [str(key) for key in data]


def _same_source(a: BenchmarkConfig, b: BenchmarkConfig) -> bool:
    """Whether two entries read the same table (for a local file, the split name does not matter)."""
    same_split = a.split == b.split or Path(a.path).is_file()
    return (a.path, a.subset, a.revision, a.header) == (b.path, b.subset, b.revision, b.header) and same_split


def _row_ids(data: Any, bench: BenchmarkConfig) -> list[str]:
    return (
        [str(v) for v in data[bench.columns.id]]
        if bench.columns.id and bench.columns.id in data.column_names
        else [str(i) for i in range(len(data))]
    )


def select_rows(data: Any, bench: BenchmarkConfig) -> tuple[list[int], dict[str, Any]]:
    """Row indices of `data` that `bench` reads (id filters, then its seeded sample), and what was done, for the
    record."""
    ids = _row_ids(data, bench)
    indices = list(range(len(data)))
    record: dict[str, Any] = {"rows_in_split": len(data)}
    if bench.ids_file not in (None, ALL_ROWS):
        wanted = read_ids(bench.ids_file, f"{bench.name}.ids_file")
        keep = set(wanted)
        indices = [i for i in indices if ids[i] in keep]
        missing = len(keep - {ids[i] for i in indices})
        record.update(ids_file=bench.ids_file, ids_listed=len(keep), ids_missing=missing)
        if missing:
            logger.warning(
                "%s: %d of the %d ids in %s are not in %s [%s]",
                bench.name,
                missing,
                len(keep),
                bench.ids_file,
                bench.path,
                bench.split,
            )
    if bench.exclude_ids_file:
        drop = set(read_ids(bench.exclude_ids_file, f"{bench.name}.exclude_ids_file"))
        before = len(indices)
        indices = [i for i in indices if ids[i] not in drop]
        record.update(exclude_ids_file=bench.exclude_ids_file, excluded_by_ids=before - len(indices))
    if bench.sample_size is not None:
        if bench.sample_size >= len(indices):
            raise EvalError(
                f"{bench.name}: a held-out sample of {bench.sample_size} rows needs more than the {len(indices)} rows"
                f" of {bench.path} [{bench.split}]. Fix: lower dev.size"
            )
        import numpy as np

        chosen = np.random.default_rng(bench.sample_seed).permutation(len(indices))[: bench.sample_size]
        indices = [indices[i] for i in sorted(chosen.tolist())]
        record["sample"] = {
            "size": bench.sample_size,
            "seed": bench.sample_seed,
            "method": "numpy default_rng(seed).permutation, first size, in dataset order",
        }
    return indices, record


def load_benchmark(
    bench: BenchmarkConfig,
    *,
    reasoning: bool = True,
    limit: int | None = None,
    revision: str | None = None,
    partition: str = "test",
) -> ExampleSet:
    """The Examples of a benchmark's `partition`: its rows after the id filters and sample, without its held-out dev
    rows, the first `limit` of them. Rows without a gold answer are dropped and counted (`selection["dropped"]`)."""
    target = partition_benchmark(bench, partition)
    data = load_rows(
        target.path,
        subset=target.subset,
        split=target.split,
        revision=revision or target.revision,
        header=target.header,
    )
    indices, record = select_rows(data, target)
    dev = target.dev
    if dev is not None and not dev.is_empty() and dev.holdout_from:
        held = dev_benchmark(target)
        if _same_source(held, target):
            dev_rows = set(select_rows(data, held)[0])
            indices = [i for i in indices if i not in dev_rows]
            record["excluded_dev_rows"] = len(dev_rows)
            logger.info("%s: the %d rows held out as its dev split are left out", target.name, len(dev_rows))
    if not indices:
        raise EvalError(
            f"{target.name}: no row of {target.path} [{target.split}] is left after its filters ({record}). Fix: check"
            " ids_file / exclude_ids_file and columns.id"
        )
    limits = [n for n in (target.limit, limit) if n is not None]
    if limits and min(limits) < len(indices):
        indices = indices[: min(limits)]
        record["limit"] = min(limits)
    examples = normalise(data.select(indices), target, reasoning=reasoning, indices=indices)
    ids = [e.id for e in examples]
    examples.selection = {
        "partition": partition,
        "format": target.format,
        "path": target.path,
        "subset": target.subset,
        "split": target.split,
        **record,
        **examples.selection,
        "rows": len(examples),
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    logger.info(
        "%s [%s]: %d examples from %s%s [%s]",
        target.name,
        partition,
        len(examples),
        target.path,
        f" ({target.subset})" if target.subset else "",
        target.split,
    )
    return examples


def test_questions(bench: BenchmarkConfig, *, revision: str | None = None) -> dict[str, str]:
    """Every row of a benchmark's test partition (no limit) as {id: question}: to check no training set holds one."""
    examples = load_benchmark(dataclasses.replace(bench, limit=None), reasoning=False, revision=revision)
    return {e.id: e.question for e in examples}


test_questions.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def recipe_benchmarks(recipe: str | Path) -> list[BenchmarkConfig]:
    """The `benchmarks` of an evaluation recipe, validated (its other fields are the evaluation's business): what
    decontamination compares a build against, read without the evaluation stage."""
    entries = load_recipe(recipe).get("benchmarks")
    if not isinstance(entries, list) or not entries:
        fail("benchmarks", entries, f"{recipe} lists no benchmarks", "list at least one, e.g. [{format: medqa}]")
    benches = [from_dict(BenchmarkConfig, entry, prefix=f"benchmarks[{i}].") for i, entry in enumerate(entries)]
    for i, bench in enumerate(benches):
        bench.validate(f"benchmarks[{i}]")
    return benches
