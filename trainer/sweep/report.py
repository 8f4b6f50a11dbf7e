"""A sweep's report: `results.parquet`, `results.md`, `selection.json` and one plot per swept dimension
(trainer.sweep.plots).

Cells are chosen on the dev partition (`trainer.sweep.select`); the report says so, states the selection and tie-break
rule, names every cell the selected one is not significantly different from (a tie never reads as a winner), says which
cells shared a training (the same set of rows), shows every cell's dev accuracy, and shows test accuracy for the
selected cells only (they alone, with the base model, were evaluated on the test rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.sweep.labels import (
    DIMENSION_TITLES,
    DIMENSIONS,
    delta_text,
    display,
    percent,
    score_text,
    short,
    swept_dimensions,
)
from trainer.sweep.plots import plot_dimension
from trainer.sweep.select import TIE_BREAK, adapter_of, finding, verdict

REPORT_FILES = ("results.parquet", "results.md", "selection.json")

SELECTION_NOTE = (
    "Selected on dev, reported on test: every cell was evaluated on each benchmark's dev rows (never its test rows)"
    " and the cells were chosen there; only the selected cells and the base model were then evaluated on the test"
    " rows, so test accuracy is reported for the selected cells only and took no part in the choice."
)


@dataclass
class Report:
    """Everything a report shows: the sweep, its cells (dev scores), the selection, and the selected cells' test
    scores."""

    config: Any
    pool: Any
    records: list[dict[str, Any]]
    benchmarks: list[tuple[str, str]]
    setup: dict[str, Any]
    selection: dict[str, Any]
    test: dict[str, dict[str, Any]]
    """{selected cell id: {benchmark: test score (n, accuracy, CI, base, vs_base)}}."""


def selection_rule() -> str:
    """How the cells were chosen and compared, in one paragraph (results.md and the card)."""
    return (
        "Selection rule: the highest dev accuracy (overall: the highest macro-mean dev accuracy over the benchmarks);"
        f" {TIE_BREAK}. The selected cell is then compared with every other trained cell on the same dev examples"
        " (paired bootstrap 95% CI of the accuracy difference and McNemar's exact test, as `nanoflux eval` compares"
        " variants); a cell whose CI includes 0 is **not significantly different** from it, and is named."
    )


def findings(report: Report) -> list[str]:
    """One bullet per benchmark and overall: what the dev data support about the selected cell."""
    lines = []
    for name, title in report.benchmarks:
        choice = report.selection["benchmarks"].get(name)
        if choice is not None:
            lines.append(f"- {finding(choice, f'**{title}**', choice['dev_accuracy'])}")
    overall = report.selection.get("overall")
    if overall:
        lines.append(f"- {finding(overall, '**Overall** (macro-mean)', overall['dev_macro_accuracy'])}")
    return lines


def shared_trainings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every training shared by several cells (the same set of rows): the cell that trained, and each cell that reused
    its adapter with whether its rows came in the same order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["status"] == "ok":
            groups.setdefault(adapter_of(record), []).append(record)
    shared = []
    for trained, group in groups.items():
        source = next((r for r in group if r["cell_id"] == trained), None)
        if source is not None and len(group) > 1:
            shared.append(
                {
                    "trained": trained,
                    "rows": source["dataset"]["rows"],
                    "shared_by": [
                        {
                            "cell": r["cell_id"],
                            "same_order": r["dataset"]["fingerprint"] == source["dataset"]["fingerprint"],
                        }
                        for r in group
                        if r is not source
                    ],
                }
            )
    return shared


def _shared_lines(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"- `{group['trained']}` trained on {group['rows']} row{'' if group['rows'] == 1 else 's'}; shared by "
        + ", ".join(
            f"`{cell['cell']}` ({'the same order' if cell['same_order'] else 'another order'})"
            for cell in group["shared_by"]
        )
        for group in shared_trainings(records)
    ]


def results_table(report: Report) -> list[dict[str, Any]]:
    """One row per cell, benchmark and partition: every cell on `dev`, the selected cells also on `test`. `selected`
    marks a benchmark's choice on dev, `selected_overall` the overall choice (highest macro-mean dev accuracy)."""
    chosen = {name: choice["cell"] for name, choice in report.selection["benchmarks"].items()}
    overall = (report.selection.get("overall") or {}).get("cell")
    table = []
    for record in report.records:
        training = record["training"] or {}
        partitions = [("dev", record["scores"])] + (
            [("test", report.test[record["cell_id"]])] if record["cell_id"] in report.test else []
        )
        for partition, scores in partitions:
            for name, title in report.benchmarks:
                score = scores.get(name) or {}
                base = score.get("base") or {}
                table.append(
                    {
                        "cell_id": record["cell_id"],
                        **{dim: record["settings"][dim] for dim in DIMENSIONS},
                        "require_valid": record["require_valid"],
                        "status": record["status"],
                        "rows": record["dataset"]["rows"],
                        "dataset_fingerprint": record["dataset"]["fingerprint"],
                        "row_set_fingerprint": record["dataset"].get("row_set"),
                        "training_key": record.get("training_key"),
                        "same_data_as": record["same_data_as"],
                        "train_steps": training.get("steps"),
                        "train_epochs": training.get("epochs"),
                        "train_tokens": training.get("train_tokens"),
                        "train_wall_time_s": training.get("wall_time_s"),
                        "train_loss_last": training.get("loss_last"),
                        "benchmark": name,
                        "benchmark_title": title,
                        "partition": partition,
                        "n": score.get("n"),
                        "accuracy": score.get("accuracy"),
                        "ci_low": score.get("ci_low"),
                        "ci_high": score.get("ci_high"),
                        "unparseable": score.get("unparseable"),
                        "base_accuracy": base.get("accuracy"),
                        "base_ci_low": base.get("ci_low"),
                        "base_ci_high": base.get("ci_high"),
                        "selected": chosen.get(name) == record["cell_id"],
                        "selected_overall": overall == record["cell_id"],
                    }
                )
    return table


def _schema() -> Any:
    import pyarrow as pa

    levels = pa.list_(pa.int32())
    floats = (
        "train_epochs",
        "train_wall_time_s",
        "train_loss_last",
        "accuracy",
        "ci_low",
        "ci_high",
        "base_accuracy",
        "base_ci_low",
        "base_ci_high",
    )
    types = {
        "cell_id": pa.string(),
        "quality_levels": levels,
        "complexity_levels": levels,
        "size": pa.int32(),
        "prefer_defender_failed": pa.bool_(),
        "require_valid": pa.bool_(),
        "status": pa.string(),
        "rows": pa.int32(),
        "dataset_fingerprint": pa.string(),
        "row_set_fingerprint": pa.string(),
        "training_key": pa.string(),
        "same_data_as": pa.string(),
        "train_steps": pa.int64(),
        "train_tokens": pa.int64(),
        "benchmark": pa.string(),
        "benchmark_title": pa.string(),
        "partition": pa.string(),
        "n": pa.int32(),
        "unparseable": pa.int32(),
        "selected": pa.bool_(),
        "selected_overall": pa.bool_(),
        **{name: pa.float64() for name in floats},
    }
    order = [
        "cell_id",
        *DIMENSIONS,
        "require_valid",
        "status",
        "rows",
        "dataset_fingerprint",
        "row_set_fingerprint",
        "training_key",
        "same_data_as",
        "train_steps",
        "train_epochs",
        "train_tokens",
        "train_wall_time_s",
        "train_loss_last",
        "benchmark",
        "benchmark_title",
        "partition",
        "n",
        "accuracy",
        "ci_low",
        "ci_high",
        "unparseable",
        "base_accuracy",
        "base_ci_low",
        "base_ci_high",
        "selected",
        "selected_overall",
    ]
    return pa.schema([(name, types[name]) for name in order])


def steps_line(setup: dict[str, Any], policy: str) -> str:
    """How much every cell trained, and what that means for comparing sizes."""
    train = setup["train"]["sft"]
    if policy == "fixed_steps":
        return (
            f"steps policy `fixed_steps`: {train['max_steps']} optimizer steps in every cell (a smaller cell repeats"
            " its rows more often), so cells of different sizes are compared at equal optimizer steps"
        )
    return (
        f"steps policy `fixed_epochs`: {train['num_train_epochs']} epochs in every cell, so a cell with more rows also"
        " takes more optimizer steps: dataset size is confounded with training steps (`steps_policy: fixed_steps`"
        " separates them)"
    )


def results_markdown(report: Report, *, public: bool = False) -> str:
    """`results.md`: what was swept on which pool, the cells selected on dev with their test scores, every cell's dev
    scores, and the plots. The `public` copy (uploaded to the dataset repo) names no local folder."""
    config, pool, records, selection = report.config, report.pool, report.records, report.selection
    source = f"a build's pool ({Path(pool.source).name})" if public and pool.build is not None else f"`{pool.source}`"
    cells_dir = "<sweep output_dir>/cells" if public else str(Path(config.output_dir) / "cells")
    swept = swept_dimensions(records)
    train, evaluation = report.setup["train"], report.setup["eval"]
    sft = train["sft"]
    fixed = [
        f"{short(dim)} {display(dim, records[0]['settings'][dim])}"
        for dim in DIMENSIONS
        if dim not in swept and records
    ]
    by_id = {r["cell_id"]: r for r in records}
    design = (
        "every combination of the grid"
        if config.design == "grid"
        else "one dimension at a time around the reference cell"
    )
    lines = [
        f"# NanoFlux ablation sweep: {config.name}",
        "",
        f"- Pool: {source} ({len(pool.rows)} rows; fingerprint `{pool.fingerprint[:16]}`)",
        f"- Design: {design},"
        f" {len(records)} cells; swept: {', '.join(DIMENSION_TITLES[d] for d in swept) or 'nothing'}"
        + (f"; fixed: {', '.join(fixed)}" if fixed else "")
        + f"; judge-validated only: {config.require_valid}",
        (
            "- Curation: the builder's own (`builder.curation.curate`), no new generation; a cell's dataset"
            " fingerprint is the sha256 of its rows' ids in order"
        ),
        (
            f"- Training: `{train['model']}`, LoRA r={train['lora']['r']}, lr {sft['learning_rate']}, batch"
            f" {sft['per_device_train_batch_size']}x{sft['gradient_accumulation_steps']}, seed {sft['seed']};"
            f" {steps_line(report.setup, config.steps_policy)}"
        ),
        (
            f"- Evaluation: `{evaluation['model']}` + each cell's adapter, greedy, max {evaluation['max_new_tokens']}"
            " new tokens; accuracy with a 95% bootstrap CI; the base model is scored once per partition"
        ),
        f"- **{SELECTION_NOTE}**",
        "",
        "## Selected cells (chosen on dev)",
        "",
        selection_rule(),
        "",
        (
            "| benchmark | selected cell | settings | rows | dev accuracy (%) [95% CI] | against the other cells on"
            " dev | test accuracy (%) [95% CI] | base model on test (%) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, title in report.benchmarks:
        choice = selection["benchmarks"].get(name)
        if choice is None:
            lines.append(f"| {title} | – | no cell has a dev score | – | – | – | – | – |")
            continue
        record, test = by_id[choice["cell"]], report.test.get(choice["cell"], {}).get(name)
        runner = (
            f" runner-up `{choice['runner_up']}`: {delta_text(choice['comparison'])}"
            if choice["runner_up"] and choice["comparison"]
            else ""
        )
        lines.append(
            f"| {title} | `{choice['cell']}` | {record['label']} | {record['dataset']['rows']} |"
            f" {score_text(record['scores'].get(name))} | {verdict(choice)}{';' if runner else ''}{runner} |"
            f" {score_text(test)} | {percent((test or {}).get('base', {}).get('accuracy'))} |"
        )
    lines += ["", "What the dev data support:", "", *findings(report)]
    overall = selection.get("overall")
    if overall:
        record, test = by_id[overall["cell"]], report.test.get(overall["cell"], {})
        lines += [
            "",
            f"**Overall** (highest macro-mean dev accuracy over the benchmarks): `{overall['cell']}`"
            f" ({record['label']}, {record['dataset']['rows']} rows), dev {percent(overall['dev_macro_accuracy'])}%;"
            f" {verdict(overall)}"
            + (
                f" (runner-up `{overall['runner_up']}`: {delta_text(overall['comparison'])})"
                if overall["comparison"]
                else ""
            )
            + ". Its test rows, against the base model on the same rows:",
            "",
            "| benchmark | test accuracy (%) [95% CI] | base model (%) [95% CI] | selected cell − base (paired) |",
            "|---|---|---|---|",
        ]
        for name, title in report.benchmarks:
            score = test.get(name)
            vs_base = (score or {}).get("vs_base")
            paired = f"{delta_text(vs_base)}, McNemar p = {vs_base['p_value']:.2g}" if vs_base else "–"
            lines.append(f"| {title} | {score_text(score)} | {score_text((score or {}).get('base'))} | {paired} |")
    header = "| cell | quality | complexity | size | ranking | rows | steps | epochs | train tokens | train s |"
    lines += [
        "",
        "## Every cell (dev partition)",
        "",
        "Dev accuracy (%) of base + the cell's adapter, [95% CI]; ✓ marks a benchmark's selected cell. Base model on"
        " dev: "
        + ", ".join(f"{title} {percent(_base_dev(records, name))}" for name, title in report.benchmarks)
        + ".",
        "",
    ]
    lines += [
        header + "".join(f" {title} |" for _, title in report.benchmarks),
        "|---" * (10 + len(report.benchmarks)) + "|",
    ]
    chosen = {name: choice["cell"] for name, choice in selection["benchmarks"].items()}
    for record in records:
        training, settings = record["training"] or {}, record["settings"]
        cells = [
            f"{'✓ ' if chosen.get(name) == record['cell_id'] else ''}{score_text(record['scores'].get(name))}"
            for name, _ in report.benchmarks
        ]
        epochs = f"{training['epochs']:.2f}" if isinstance(training.get("epochs"), (int, float)) else "–"
        note = f" (shares `{record['same_data_as']}`'s training)" if record["same_data_as"] else ""
        lines.append(
            f"| `{record['cell_id']}`{note} | {display('quality_levels', settings['quality_levels'])} |"
            f" {display('complexity_levels', settings['complexity_levels'])} | {settings['size']} |"
            f" {display('prefer_defender_failed', settings['prefer_defender_failed'])} | {record['dataset']['rows']} |"
            f" {training.get('steps', '–')} | {epochs} | {training.get('train_tokens', '–')} |"
            f" {training.get('wall_time_s', '–')} |" + "".join(f" {c} |" for c in cells)
        )
    lines += ["", "A size larger than the rows that fit a cell's bands gives fewer rows (see `rows`).", ""]
    shared = _shared_lines(records)
    lines += [
        "## Shared training",
        "",
        (
            "Training is keyed by the *set* of a cell's rows (plus the training recipe): cells with the same rows, in"
            " any order, train once and share that adapter and its scores (the trainer shuffles the rows with its"
            " seed, so their order is not what it trains on)."
        ),
        "",
        *(shared or ["No two cells had the same rows: every cell with rows trained on its own."]),
        "",
    ]
    if swept:
        lines += ["## Plots", ""] + [f"![dev accuracy vs {DIMENSION_TITLES[dim]}]({dim}.png)" for dim in swept] + [""]
    publish = overall["cell"] if overall else "<cell_id>"
    lines += [
        "## Publish the selected cell",
        "",
        (
            "Each cell folder is a finished build of the pool with that cell's curation. Release the cell selected on"
            " dev as the next dataset version:"
        ),
        "",
        "```bash",
        f"nanoflux publish {cells_dir}/{publish} --repo_id org/name",
        (
            f"nanoflux sweep --config <this sweep's recipe> --publish_cell {publish} --push_to_hub org/name   # also"
            " attaches this report"
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def _base_dev(records: list[dict[str, Any]], name: str) -> float | None:
    return next(
        ((r["scores"].get(name) or {}).get("base", {}).get("accuracy") for r in records if r["scores"].get(name)), None
    )


def write_report(report: Report) -> list[Path]:
    """results.parquet, results.md, selection.json (the choices on dev, every comparison, the tie-break rule and the
    shared trainings) and `<dimension>.png` per swept dimension in the sweep folder; returns the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output_dir = Path(report.config.output_dir)
    table = results_table(report)
    pq.write_table(pa.Table.from_pylist(table, schema=_schema()), output_dir / "results.parquet")
    (output_dir / "results.md").write_text(results_markdown(report))
    selection = {**report.selection, "shared_training": shared_trainings(report.records)}
    (output_dir / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    files = [output_dir / name for name in REPORT_FILES]
    for stale in output_dir.glob("*.png"):
        stale.unlink()
    for dim in swept_dimensions(report.records):
        path = output_dir / f"{dim}.png"
        plot_dimension(
            table,
            dim,
            report.benchmarks,
            path,
            f"{report.config.name}: dev accuracy vs {DIMENSION_TITLES[dim]} (selection on dev)",
        )
        files.append(path)
    return files
