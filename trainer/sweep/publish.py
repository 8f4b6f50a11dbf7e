"""Publishing a sweep: with `publish_cell`, that cell's rows released as the dataset repo's next version (the same
release as `nanoflux publish`); then one commit adds the report under `ablations/<name>/` and the card's
`## Ablations: <name>` section (the cells selected on dev, their test scores, where the report is).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from pathlib import Path
from typing import Any

from nanoflux.hub import open_target
from trainer.sweep.config import SweepConfig, SweepError
from trainer.sweep.labels import DIMENSION_TITLES, percent, score_text, swept_dimensions
from trainer.sweep.report import SELECTION_NOTE, Report, findings, results_markdown, selection_rule, steps_line
from trainer.sweep.select import verdict

logger = logging.getLogger(__name__)


def check_dataset_repo(config: SweepConfig) -> None:
    """Pre-flight, before any compute: the dataset repo the report (and `publish_cell`) goes to is writable."""
    from builder import publish_preflight

    with open_target(config.hub_dir) as api:
        publish_preflight(api, config.push_to_hub, private=config.private)


def publish_report(report: Report, files: list[Path]) -> dict[str, Any]:
    """With `publish_cell`, release that cell as the next version (`builder.publish.publish`); then one commit adds the
    report under `ablations/<name>/` (results.md without local folders) and the card's `## Ablations: <name>` section.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    from builder import publish_version

    config = report.config
    repo = config.push_to_hub
    with open_target(config.hub_dir) as api:
        release = None
        if config.publish_cell:
            release = publish_version(
                Path(config.output_dir) / "cells" / config.publish_cell, repo, api=api, private=config.private
            )
            if release is None:
                logger.warning(
                    "Cell %s adds no row that is new to %s: no version was published", config.publish_cell, repo
                )
        try:
            head = api.repo_info(repo, repo_type="dataset").sha
            try:
                card = Path(api.hf_hub_download(repo, "README.md", repo_type="dataset", revision=head)).read_text()
            except EntryNotFoundError:
                card = f"# {repo}\n"
            public_md = results_markdown(report, public=True).encode()
            operations = [
                CommitOperationAdd(
                    f"ablations/{config.name}/{path.name}",
                    io.BytesIO(public_md if path.name == "results.md" else path.read_bytes()),
                )
                for path in files
            ]
            operations.append(
                CommitOperationAdd(
                    "README.md",
                    io.BytesIO(
                        with_section(card, f"## Ablations: {config.name}", card_section(report, release)).encode()
                    ),
                )
            )
            commit = api.create_commit(
                repo,
                repo_type="dataset",
                operations=operations,
                commit_message=f"NanoFlux ablations: {config.name} ({len(report.records)} cells)",
                parent_commit=head,  # a release meanwhile: fail rather than overwrite its card
            )
        except HfHubHTTPError as err:
            done = f"{release.version} was published; " if release else ""
            raise SweepError(
                f"attaching the report to {repo} failed ({str(err).splitlines()[0]}); {done}the report is in"
                f" {config.output_dir}. Fix: run the same command again without --publish_cell (every cell is"
                " finished, nothing is retrained)"
            ) from None
    logger.info("Report attached to %s under ablations/%s: commit %s", repo, config.name, commit.oid[:12])
    return {"release": dataclasses.asdict(release) if release else None, "report_commit": commit.oid}


def card_section(report: Report, release: Any) -> str:
    """The card's `## Ablations: <name>` section: the cells selected on dev, their test scores, and where the report
    is."""
    config, records = report.config, report.records
    by_id = {r["cell_id"]: r for r in records}
    folder = f"ablations/{config.name}"
    lines = [
        f"## Ablations: {config.name}",
        "",
        (
            f"{len(records)} curations of one candidate pool were each used to train a LoRA adapter"
            f" ({'every combination of the grid' if config.design == 'grid' else 'one dimension at a time'}; swept:"
            f" {', '.join(DIMENSION_TITLES[d] for d in swept_dimensions(records)) or 'nothing'};"
            f" {steps_line(report.setup, config.steps_policy)}). {SELECTION_NOTE} Accuracy of the base model +"
            " adapter, 95% bootstrap CI:"
        ),
        "",
        (
            "| benchmark | selected on dev | settings | rows | dev accuracy (%) | against the other cells on dev |"
            " test accuracy (%) | base model on test (%) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, title in report.benchmarks:
        choice = report.selection["benchmarks"].get(name)
        if choice is not None:
            record, test = by_id[choice["cell"]], report.test.get(choice["cell"], {}).get(name)
            lines.append(
                f"| {title} | `{choice['cell']}` | {record['label']} | {record['dataset']['rows']} |"
                f" {score_text(record['scores'].get(name))} | {verdict(choice)} | {score_text(test)} |"
                f" {percent((test or {}).get('base', {}).get('accuracy'))} |"
            )
    overall = report.selection.get("overall")
    if overall:
        lines += [
            "",
            (
                f"Overall selection (macro-mean dev accuracy): `{overall['cell']}`"
                f" ({by_id[overall['cell']]['label']}); {verdict(overall)}."
            ),
        ]
    lines += ["", selection_rule(), "", *findings(report), ""]
    if release is not None:
        lines += [
            (
                f"Version {release.version} holds the rows of cell `{config.publish_cell}`"
                f" ({by_id[config.publish_cell]['label']})."
            ),
            "",
        ]
    lines += [
        (
            f"Every cell's dev scores, the plots and the results table: [`{folder}/results.md`]({folder}/results.md),"
            f" `{folder}/results.parquet`."
        ),
        "",
    ]
    return "\n".join(lines)


def with_section(card: str, heading: str, section: str) -> str:
    """`card` with its `heading` section replaced by `section` (appended when there is none)."""
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(card):
        return pattern.sub(lambda _: section + "\n", card, count=1)
    return card.rstrip() + "\n\n" + section
