"""Training compute: the NanoFlux adapter's training run against the full-benchmark baseline's.

Measured: each adapter's `training_summary.json` (written by `nanoflux train`; its `compute` block) gives its training
tokens (tokens the trainer processed, padding excluded), optimizer steps and training seconds (summed over resumed
segments) on its devices; the ratios baseline / NanoFlux of each are reported. The cost of generating the NanoFlux
data (prompt and completion tokens per role, from the build's `summary.json`) is reported beside them. An estimate
from token counts of the two training sets (one epoch, chat template applied), without training runs, is kept as
`estimate` and labelled so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import BuildFolder
from nanoflux.benchmarks import BenchmarkConfig, load_rows
from nanoflux.recipe import fail, is_repo_id
from nanoflux.rows import EvalError, Example, answer_target, normalise

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"


@dataclass
class ComputeConfig:
    """The compute comparison: measured from the two adapters' training runs, plus optional build cost and estimate."""

    nanoflux_summary: str | None = None
    """`training_summary.json` of the NanoFlux adapter: the file, its adapter folder or Hub repo (null: `adapter`)."""
    baseline_summary: str | None = None
    """`training_summary.json` of the full-benchmark baseline adapter (null: `baseline_adapter`)."""
    build_summary: str | None = None
    """The build's `summary.json`, or its output folder: data-generation tokens per role, reported beside
    (optional)."""
    nanoflux_data: str | None = None
    """Estimate only: the NanoFlux dataset (Hub id or local file/folder with a `messages` column) whose tokens to
    count."""
    nanoflux_subset: str | None = None
    nanoflux_split: str = "train"
    nanoflux_revision: str | None = None
    baseline: BenchmarkConfig | None = None
    """Estimate only: the full-benchmark training data, e.g. {format: medqa, split: train}; a `messages` column is used
    as is, otherwise each row becomes (prompt -> explanation + `Final answer: <gold>`)."""

    def validate(self, path: str, *, adapter: str | None = None, baseline_adapter: str | None = None) -> None:
        estimate = self.nanoflux_data is not None or self.baseline is not None
        if estimate:
            if not (self.nanoflux_data or "").strip():
                fail(
                    f"{path}.nanoflux_data",
                    self.nanoflux_data,
                    "missing",
                    "name the NanoFlux dataset (Hub id or local path) for the token-count estimate",
                )
            if self.baseline is None:
                fail(
                    f"{path}.baseline",
                    None,
                    "missing",
                    "name the full benchmark training set, e.g. {format: medqa, split: train}",
                )
            self.baseline.validate(f"{path}.baseline")
        measured = (self.nanoflux_summary or adapter) and (self.baseline_summary or baseline_adapter)
        if not measured and not estimate:
            fail(
                path,
                {"nanoflux_summary": self.nanoflux_summary, "baseline_summary": self.baseline_summary},
                "nothing to compare",
                "evaluate an adapter and a baseline_adapter (their training_summary.json are read), set"
                " nanoflux_summary and baseline_summary, or set nanoflux_data + baseline for a token-count estimate",
            )


# --- measured --------------------------------------------------------------------------------------------


def read_summary(ref: str, field_name: str, file_name: str = SUMMARY_FILE) -> tuple[dict[str, Any], str]:
    """(the parsed summary, where it was read): a file, a folder holding `file_name`, or a Hub repo's `file_name`."""
    local = Path(ref)
    if local.is_dir():
        local = local / file_name
    if local.is_file():
        source = str(local)
    elif Path(ref).exists() or not is_repo_id(ref) or ref.startswith((".", "/")):
        raise EvalError(
            f"{field_name}: no {file_name} at {ref!r}. Fix: point it at the file, or at the folder `nanoflux"
            f" {'train' if file_name == SUMMARY_FILE else 'build'}` wrote"
        )
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError

        try:
            local, source = Path(hf_hub_download(ref, file_name)), f"{ref}/{file_name}"
        except (OSError, HFValidationError, EntryNotFoundError) as err:
            raise EvalError(
                f"{field_name}: cannot read {file_name} of {ref!r} ({type(err).__name__}). Fix: point {field_name} at"
                " a local copy, check HF_TOKEN, or set compute: null"
            ) from None
    try:
        return json.loads(local.read_text()), source
    except ValueError:
        raise EvalError(
            f"{field_name}: {source} is not JSON. Fix: point it at what `nanoflux train` / `nanoflux build` wrote"
        ) from None


def training_run(summary: dict[str, Any], source: str) -> dict[str, Any]:
    """The compute facts of one training run, from its `training_summary.json`: its `compute` block (training seconds
    summed over resumed segments, devices, device name), else the older top-level fields."""
    block = summary.get("compute") or {}
    hp = summary.get("hyperparameters") or {}
    per_step = (hp.get("per_device_train_batch_size") or 0) * (hp.get("gradient_accumulation_steps") or 0)
    devices = block.get("devices") or (
        max(1, round(hp["effective_batch_size"] / per_step)) if per_step and hp.get("effective_batch_size") else 1
    )
    seconds = block.get("train_seconds", summary.get("wall_time_s"))
    device_seconds = block.get("device_seconds") or (
        round(seconds * devices, 1) if isinstance(seconds, (int, float)) else None
    )
    return {
        "source": source,
        "dataset": (summary.get("dataset") or {}).get("pinned"),
        "rows": block.get("examples", (summary.get("dataset") or {}).get("rows")),
        "train_tokens": block.get("train_tokens", summary.get("train_tokens")),
        "steps": block.get("optimizer_steps", summary.get("steps")),
        "epochs": block.get("epochs_trained", summary.get("epochs")),
        "wall_time_s": seconds,
        "devices": devices,
        "device_seconds": device_seconds,
        "hardware": block.get("device_name") or summary.get("gpu") or summary.get("device"),
        "segments": block.get("segments"),
        "resumed_from": summary.get("resumed_from"),
        "all_segments_timed": bool(block),  # the compute block sums the seconds of every resumed segment
    }


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def measured_compute(nanoflux: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Both runs, the ratios baseline / NanoFlux of training tokens, optimizer steps and device seconds, and
    caveats."""
    ratios = {key: _ratio(baseline[key], nanoflux[key]) for key in ("train_tokens", "steps", "device_seconds")}
    notes = []
    if nanoflux["hardware"] != baseline["hardware"]:
        notes.append(
            f"the runs used different hardware ({nanoflux['hardware']} vs {baseline['hardware']}): the device-seconds"
            " ratio mixes speeds"
        )
    for name, run in (("NanoFlux", nanoflux), ("baseline", baseline)):
        if run["resumed_from"] and not run["all_segments_timed"]:
            notes.append(
                f"the {name} run resumed from {run['resumed_from']}: its wall time covers the last segment only"
            )
    return {"nanoflux": nanoflux, "baseline": baseline, "ratios": ratios, "notes": notes}


def generation_cost(summary: dict[str, Any], source: str) -> dict[str, Any]:
    """Data-generation tokens per role (prompt, completion), from a build's `summary.json` `tokens` block."""
    tokens = summary.get("tokens")
    if not isinstance(tokens, dict):
        raise EvalError(
            f"compute.build_summary: {source} has no `tokens` block. Fix: point it at the summary.json of `nanoflux"
            " build`"
        )
    total = sum(int(t.get(kind) or 0) for t in tokens.values() for kind in ("prompt", "completion"))
    return {
        "source": source,
        "tokens": tokens,
        "total_tokens": total,
        "kept": summary.get("kept"),
        "calls_sent": summary.get("calls_sent"),
        "wall_time_s": summary.get("wall_time_s"),
    }


# --- estimate --------------------------------------------------------------------------------------------


def count_training_tokens(conversations: Iterable[list[dict[str, str]]], tokenizer: Any) -> int:
    """Tokens an SFT epoch over `conversations` processes: each one through the chat template, then tokenized."""
    total = 0
    for messages in conversations:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return total


def benchmark_conversations(examples: Sequence[Example]) -> list[list[dict[str, str]]]:
    """A benchmark's training rows as SFT conversations: prompt → (explanation, then) `Final answer: <gold>`."""

    return [
        [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": answer_target(e.explanation, e.gold)}]
        for e in examples
    ]


def estimate_compute(compute: ComputeConfig, tokenizer: Any, *, reasoning: bool = True) -> dict[str, Any]:
    """An estimate without training runs: tokens of one epoch (chat template applied) over each training set."""
    nanoflux = load_rows(
        compute.nanoflux_data,
        subset=compute.nanoflux_subset,
        split=compute.nanoflux_split,
        revision=compute.nanoflux_revision,
    )
    if "messages" not in nanoflux.column_names:
        raise EvalError(
            f"compute.nanoflux_data: {compute.nanoflux_data} has no `messages` column (has: {nanoflux.column_names})."
            " Fix: point it at a NanoFlux dataset"
        )
    nanoflux_tokens = count_training_tokens(nanoflux["messages"], tokenizer)
    bench = compute.baseline
    rows = load_rows(bench.path, subset=bench.subset, split=bench.split, revision=bench.revision, header=bench.header)
    if bench.limit is not None and bench.limit < len(rows):
        rows = rows.select(range(bench.limit))
    conversations = (
        rows["messages"]
        if "messages" in rows.column_names
        else benchmark_conversations(normalise(rows, bench, reasoning=reasoning))
    )
    baseline_tokens = count_training_tokens(conversations, tokenizer)
    return {
        "label": "estimate: token counts of one epoch over each training set, not a measured training run",
        "nanoflux": {
            "data": compute.nanoflux_data,
            "split": compute.nanoflux_split,
            "revision": compute.nanoflux_revision,
            "rows": len(nanoflux),
            "tokens": nanoflux_tokens,
        },
        "baseline": {
            "data": bench.path,
            "subset": bench.subset,
            "split": bench.split,
            "rows": len(conversations),
            "tokens": baseline_tokens,
        },
        "ratio": _ratio(baseline_tokens, nanoflux_tokens),
        "unit": "training tokens per epoch (chat template applied, tokenizer of the base model)",
    }


def compute_accounting(
    compute: ComputeConfig,
    tokenizer: Any = None,
    *,
    reasoning: bool = True,
    adapter: str | None = None,
    baseline_adapter: str | None = None,
) -> dict[str, Any]:
    """The `compute` section of results.json: `measured` (from the two training summaries), `generation` (the build's
    token cost) and `estimate` (token counts with the base model's `tokenizer`; skipped without one), each null when
    not configured."""
    result: dict[str, Any] = {"measured": None, "generation": None, "estimate": None}
    nanoflux_ref, baseline_ref = compute.nanoflux_summary or adapter, compute.baseline_summary or baseline_adapter
    if nanoflux_ref and baseline_ref:
        nanoflux = training_run(*read_summary(nanoflux_ref, "compute.nanoflux_summary"))
        baseline = training_run(*read_summary(baseline_ref, "compute.baseline_summary"))
        result["measured"] = measured_compute(nanoflux, baseline)
        ratios = result["measured"]["ratios"]
        logger.info(
            "Compute (baseline / NanoFlux, measured): training tokens %s, steps %s, device seconds %s",
            *(f"{ratios[k]:.1f}x" if ratios[k] else "n/a" for k in ("train_tokens", "steps", "device_seconds")),
        )
    if compute.build_summary:
        result["generation"] = generation_cost(
            *read_summary(compute.build_summary, "compute.build_summary", BuildFolder.SUMMARY)
        )
    if compute.nanoflux_data and compute.baseline is not None and tokenizer is not None:
        result["estimate"] = estimate_compute(compute, tokenizer, reasoning=reasoning)
        estimate = result["estimate"]
        logger.info(
            "Compute (estimate): NanoFlux %d rows / %d tokens, baseline %d rows / %d tokens: %.1fx",
            estimate["nanoflux"]["rows"],
            estimate["nanoflux"]["tokens"],
            estimate["baseline"]["rows"],
            estimate["baseline"]["tokens"],
            estimate["ratio"] or math.nan,
        )
    return result
