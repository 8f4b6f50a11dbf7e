"""The build's output folder, on top of the kernel's run-folder contract (`nanoflux.runfolder`: one writer, atomic
state files, the run's identity):

- `diagnose` / `doctor`: `nanoflux doctor <dir> [--repair]`: damaged journal lines (records lost, which calls will be
  sent again) and state files; `--repair` rewrites the journals keeping every intact record.
- `begin_run` / `end_run` / `run_history`: one record per run of the build in `runs.json` (when it started, its wall
  time, the calls it sent and their tokens), so a resumed build's totals add its runs up instead of reporting the last
  one. A run that never finished (killed) is accounted from the calls it journaled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from builder.build_folder import BuildFolder
from nanoflux import journal as journals
from nanoflux.runfolder import (
    RUN_SHAPE,
    DamagedStateFile,
    FolderBusy,
    RunFolderError,
    describe_holder,
    holder,
    locked,
    read_json,
    utc_now,
    write_json,
)

logger = logging.getLogger(__name__)

# An evaluation's folder (`nanoflux eval`, endpoint engine) journals its answers the same way: doctor checks it too.
EVAL_JOURNALS = ("answers.jsonl",)


# --- state files -----------------------------------------------------------------------------------------


def doctor_fix(folder: Path) -> str:
    return (
        f"run `nanoflux doctor {folder} --repair` (keeps every intact journal record), or re-run with --fresh to start"
        " over"
    )


def clear(folder: Path) -> None:
    """What `--fresh` removes besides the outputs: journal seals, set-aside damaged lines and state files."""
    for name in BuildFolder.JOURNALS:
        path = folder / name
        for extra in (journals.seal_path(path), journals.damaged_path(path)):
            extra.unlink(missing_ok=True)
    (folder / f"{BuildFolder.RUN}.damaged").unlink(missing_ok=True)
    (folder / BuildFolder.RUNS).unlink(missing_ok=True)  # a fresh build's time and tokens start from zero


# --- run records -----------------------------------------------------------------------------------------


def _read_runs(folder: Path) -> list[dict[str, Any]]:
    path = folder / BuildFolder.RUNS
    if not path.exists():
        return []
    runs = read_json(path, {"runs": list}, fix=f"delete {path} (only the build's time and token totals are lost)")[
        "runs"
    ]
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("started_at"), str)]


def _calls(folder: Path) -> list[dict[str, Any]]:
    """The calls journal's intact records in file order (it is append-only: each run's calls follow the last run's)."""
    path = folder / BuildFolder.CALLS
    return [record for _, _, record in journals.scan(path).lines] if path.exists() else []


def begin_run(folder: str | Path) -> int:
    """Record that a run of the build starts now, and how many calls the journal holds; returns its index."""
    folder = Path(folder)
    runs = _read_runs(folder)
    runs.append({"started_at": utc_now(), "finished_at": None, "journal_records_before": len(_calls(folder))})
    write_json(folder / BuildFolder.RUNS, {"runs": runs})
    return len(runs) - 1


def end_run(
    folder: str | Path, index: int, *, wall_time_s: float, calls_sent: int, tokens: dict[str, int]
) -> list[dict[str, Any]]:
    """Record run `index` as finished: its wall time, the calls it sent and their tokens. Returns `run_history`."""
    folder = Path(folder)
    runs = _read_runs(folder)
    runs[index].update(
        finished_at=utc_now(),
        wall_time_s=round(wall_time_s, 2),
        calls_sent=calls_sent,
        tokens=dict(tokens),
        interrupted=False,
    )
    write_json(folder / BuildFolder.RUNS, {"runs": runs})
    return run_history(folder)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def run_history(folder: str | Path) -> list[dict[str, Any]]:
    """Every run of the build, oldest first. A run without `finished_at` was killed (or crashed): its calls and tokens
    are the journal records it appended (between its start's count and the next run's), its wall time runs from its
    start to the last of them; it is marked `interrupted`."""
    folder = Path(folder)
    runs = _read_runs(folder)
    records = _calls(folder) if any(r.get("finished_at") is None for r in runs) else []
    history = []
    for i, run in enumerate(runs):
        if run.get("finished_at") is not None:
            history.append(run)
            continue
        start = _when(run["started_at"])
        end = runs[i + 1].get("journal_records_before") if i + 1 < len(runs) else None
        mine = records[run.get("journal_records_before", 0) : end]
        last = max((_when(r["finished_at"]) for r in mine if r.get("finished_at")), default=start)
        history.append(
            {
                **run,
                "interrupted": True,
                "wall_time_s": round((last - start).total_seconds(), 2),
                "calls_sent": len(mine),
                "tokens": {
                    kind: sum(int(r.get(f"{kind}_tokens") or 0) for r in mine) for kind in ("prompt", "completion")
                },
            }
        )
    return history


def run_totals(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The build's totals over its runs: wall time, calls sent and tokens added up."""
    return {
        "runs": len(history),
        "interrupted": sum(bool(run.get("interrupted")) for run in history),
        "wall_time_s": round(sum(run.get("wall_time_s") or 0.0 for run in history), 2),
        "calls_sent": sum(run.get("calls_sent") or 0 for run in history),
        "tokens": {
            kind: sum((run.get("tokens") or {}).get(kind, 0) for run in history) for kind in ("prompt", "completion")
        },
    }


# --- doctor ----------------------------------------------------------------------------------------------


@dataclass
class Finding:
    path: Path
    problem: str | None  # None: healthy
    detail: str = ""
    fix: str = ""
    repaired: str = ""


def _check_state(folder: Path) -> list[Finding]:
    findings = []
    build = BuildFolder(folder)
    run = build.file(BuildFolder.RUN)
    if run.exists():
        try:
            read_json(run, RUN_SHAPE, fix=doctor_fix(folder))
            findings.append(Finding(run, None))
        except DamagedStateFile as err:
            findings.append(
                Finding(
                    run,
                    err.problem,
                    fix=(
                        "--repair sets it aside; the next build writes it again (every journaled call is still checked"
                        " against its request)"
                    ),
                )
            )
    summary = build.file(BuildFolder.SUMMARY)
    if summary.exists():
        try:
            read_json(summary, fix=doctor_fix(folder))
            findings.append(Finding(summary, None))
        except DamagedStateFile as err:
            findings.append(
                Finding(
                    summary,
                    err.problem,
                    fix="re-run the same `nanoflux build`: it replays the journal and rewrites it",
                )
            )
    config = build.file(BuildFolder.CONFIG)
    if config.exists():
        try:
            if not isinstance(yaml.safe_load(config.read_bytes()), dict):
                raise ValueError("not a mapping")
            findings.append(Finding(config, None))
        except (ValueError, yaml.YAMLError) as err:
            findings.append(
                Finding(
                    config,
                    f"not a YAML recipe: {str(err).splitlines()[0]}",
                    fix="the next `nanoflux build` writes it again",
                )
            )
    for name in (BuildFolder.CURATED, BuildFolder.POOL):
        path = build.file(name)
        if path.exists():
            bad = [
                n
                for n, line in enumerate(path.read_bytes().splitlines(), 1)
                if line.strip() and not _json_object(line)
            ]
            problem = f"{len(bad)} line(s) not a JSON object (line {', '.join(map(str, bad[:5]))})" if bad else None
            findings.append(
                Finding(path, problem, fix="re-run the same `nanoflux build`: it replays the journal and rewrites it")
            )
    return findings


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _check_journal(path: Path) -> tuple[Finding, journals.Scan]:
    found = journals.scan(path)
    if not found.needs_repair:
        return Finding(path, None, detail=f"{len(found.lines)} record(s)"), found
    lines = [f"      {d.describe()}" for d in found.damaged[:20]] + (
        [f"      ... {len(found.damaged) - 20} more"] if len(found.damaged) > 20 else []
    )
    keys = sorted({d.key for d in found.damaged if d.key})
    unknown = found.lost - len(keys)
    again = "asked again" if path.name in EVAL_JOURNALS else "sent again"
    resend = f"{again}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}" if keys else ""
    if unknown > 0:
        resend += f"{'; ' if resend else again + ': '}{unknown} record(s) whose key is not legible"
    detail = "\n".join([found.summary(details=False), *lines, *([f"      {resend}"] if found.lost else [])])
    fix = (
        "--repair (or the next build) keeps every intact record and sets the damaged lines aside in "
        + journals.damaged_path(path).name
    )
    return (
        Finding(
            path, "damaged" if not found.legacy or found.damaged else "older format without checksums", detail, fix
        ),
        found,
    )


def diagnose(folder: str | Path, repair: bool = False) -> list[Finding]:
    """Check every journal and state file in `folder`; with `repair`, fix what can be fixed (under the folder's
    lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(
            f"output_dir {folder} does not exist. Fix: pass the output_dir of a build or an evaluation"
        )
    if not repair:
        return [
            *(
                _check_journal(folder / name)[0]
                for name in BuildFolder.JOURNALS + EVAL_JOURNALS
                if (folder / name).exists()
            ),
            *_check_state(folder),
        ]
    with locked(folder, "doctor --repair"):
        findings = []
        for name in BuildFolder.JOURNALS + EVAL_JOURNALS:
            if (folder / name).exists():
                finding, found = _check_journal(folder / name)
                if finding.problem:
                    kept = journals.repair(found)
                    finding.repaired = f"rewritten with {kept} intact record(s)" + (
                        f"; damaged lines in {journals.damaged_path(found.path).name}" if found.damaged else ""
                    )
                findings.append(finding)
        for finding in _check_state(folder):
            if finding.problem and finding.path.name == BuildFolder.RUN:
                os.replace(finding.path, folder / f"{BuildFolder.RUN}.damaged")
                finding.repaired = "set aside as run.json.damaged"
            findings.append(finding)
        return findings


def doctor(folder: str | Path, repair: bool = False) -> tuple[str, bool]:
    """`nanoflux doctor`: the report, and whether the folder is healthy (after the repair, with `repair`)."""
    folder = Path(folder)
    busy = holder(folder)
    if busy and repair:
        raise FolderBusy(
            f"output_dir {folder} is in use by {describe_holder(busy)}. Fix: repair it once that has finished"
        )
    findings = diagnose(folder, repair)
    out = [f"{folder}:"]
    if busy:
        out.append(f"  note: in use by {describe_holder(busy)}; a torn last line may be a write in progress")
    for finding in findings:
        if finding.problem is None:
            out.append(f"  {finding.path.name}: ok" + (f" ({finding.detail})" if finding.detail else ""))
            continue
        out.append(f"  {finding.path.name}: {finding.problem}")
        if finding.detail:
            out.append("    " + finding.detail)
        out.append(f"    {'repaired: ' + finding.repaired if finding.repaired else 'fix: ' + finding.fix}")
    remaining = [f for f in findings if f.problem and not f.repaired]
    if not findings:
        out.append("  no journal or state file: not a build or evaluation folder?")
    elif remaining and not repair:
        out.append(f"{len(remaining)} problem(s). Fix: nanoflux doctor {folder} --repair (keeps every intact record)")
    elif remaining:
        out.append(f"{len(remaining)} problem(s) left: see each fix above")
    else:
        out.append(
            "healthy"
            if not repair or not any(f.problem for f in findings)
            else "repaired: a resumed build (or evaluation) sends the lost calls again"
        )
    return "\n".join(out), not remaining


def doctor_command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux doctor OUTPUT_DIR [--repair]`: the report; exit 1 when something is damaged."""
    report, healthy = doctor(args.output_dir, repair=args.repair)
    print(report)
    if not healthy:
        sys.exit(1)
