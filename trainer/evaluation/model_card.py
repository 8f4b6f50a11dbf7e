"""The adapter's model card after an evaluation: its scores as `model-index` metadata (`EvalResult`s naming each
benchmark by its Hub id and revision, or by name for a local copy, never a local path) and the card's `## Evaluation`
section. Everything here reads the results dict `trainer.evaluation.run.main` returns."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from nanoflux.rows import EvalError
from trainer.evaluation.report import paired_table, results_table

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt")


def is_hub_id(path: str | None) -> bool:
    """`path` names a Hub repo (`org/name`), not a local file or folder (which a card must never show)."""
    return (
        bool(path)
        and bool(_HUB_ID.match(path))
        and not path.lower().endswith(_DATA_SUFFIXES)
        and not Path(path).exists()
    )


def benchmark_dataset(bench: dict[str, Any]) -> dict[str, Any]:
    """A benchmark as `model-index` names it: its Hub id and revision, or, for a local copy, the benchmark's name
    (its path on the evaluating machine means nothing elsewhere)."""
    if is_hub_id(bench["path"]):
        return {"dataset_type": bench["path"], "dataset_name": bench["title"], "dataset_revision": bench["revision"]}
    return {
        "dataset_type": bench["name"],
        "dataset_name": f"{bench['title']} (a local copy)",
        "dataset_revision": None,
    }


def _eval_results(results: dict[str, Any], variant: str) -> list[Any]:
    from huggingface_hub import EvalResult

    evals = []
    for bench in results["benchmarks"]:
        r = results["results"][bench["name"]].get(variant)
        if r is None:
            continue
        dataset = dict(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_config=bench["subset"],
            dataset_split=bench["split"],
            **benchmark_dataset(bench),
        )
        evals.append(
            EvalResult(**dataset, metric_type="accuracy", metric_name="Accuracy", metric_value=round(r["accuracy"], 4))
        )
        for key, pair in (results.get("paired") or {}).get(bench["name"], {}).items():
            if pair["variant"] != variant:
                continue
            evals.append(
                EvalResult(
                    **dataset,
                    metric_type="accuracy_delta",
                    metric_name=f"Accuracy difference vs {pair['reference']} (paired)",
                    metric_value=round(pair["delta"], 4),
                    metric_config=key,
                    metric_args={
                        "ci_low": round(pair["ci_low"], 4),
                        "ci_high": round(pair["ci_high"], 4),
                        "ci_level": 0.95,
                        "mcnemar_p": pair["p_value"],
                        "n": pair["n"],
                        "reference": pair["reference"],
                    },
                )
            )
    if not evals:
        raise EvalError(
            f"the results have no {variant!r} variant (have: {results['variants']}). Fix: evaluate with an adapter"
        )
    return evals


def model_index(results: dict[str, Any], adapter_repo: str, *, variant: str = "adapter") -> list[dict[str, Any]]:
    """The Hub `model-index` metadata for `adapter_repo`: one entry per benchmark (task, dataset {name, type, config,
    split, revision}, metrics: accuracy, and the paired accuracy differences with their CI and McNemar p in `args`)."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    return eval_results_to_model_index(adapter_repo, _eval_results(results, variant))


def write_model_index(
    card_path: str | Path, results: dict[str, Any], *, adapter_repo: str | None = None, variant: str = "adapter"
) -> Path:
    """Put the `variant` scores in a model card README.md in place: `model-index` metadata, and the results and paired
    tables in its `## Evaluation` section (appended when there is none). Dev-partition results are not written."""
    from huggingface_hub import ModelCard

    card_path = Path(card_path)
    if results.get("partition", "test") != "test":
        logger.warning(
            "Not writing %s-partition scores to %s: a card reports test scores (evaluate with --partition test)",
            results.get("partition"),
            card_path,
        )
        return card_path
    card = ModelCard.load(card_path)
    # The card's name (the adapter's repo id, or the placeholder the training card chose), never a local folder.
    adapter = results.get("adapter")
    name = adapter_repo or card.data.model_name or (adapter if is_hub_id(adapter) else "nanoflux-lora-adapter")
    card.data.model_name = name
    card.data.eval_results = _eval_results(results, variant)
    subset = {
        **results,
        "variants": [variant],
        "results": {k: {variant: v[variant]} for k, v in results["results"].items() if variant in v},
    }
    paired = paired_table({**results, "aggregates": results.get("aggregates")})
    section = (
        f"Greedy decoding, chat template, max {results['generation']['max_new_tokens']} new tokens; accuracy with a"
        " bootstrap 95% CI; unparseable outputs count as wrong. Base model alone and other variants: `results.json`"
        f" of the evaluation.\n\n{results_table(subset)}\n"
        + (
            "Paired comparisons on the same questions (Δ with a paired bootstrap 95% CI, McNemar's exact"
            f" test):\n\n{paired}\n"
            if paired
            else ""
        )
    )
    text = card.text
    pattern = re.compile(r"(^## Evaluation[ \t]*\n)(.*?)(?=^## |\Z)", re.M | re.S)
    card.text = (
        pattern.sub(lambda m: m.group(1) + "\n" + section, text, count=1)
        if pattern.search(text)
        else text.rstrip() + "\n\n## Evaluation\n\n" + section
    )
    card.save(card_path)
    return card_path
