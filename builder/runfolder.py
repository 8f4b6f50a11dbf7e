"""The build's output folder: one writer at a time, state files written whole, damage reported with its fix.

- `hold` / `locked`: an OS file lock (`fcntl.flock` on `run.lock` in the folder) for the whole run. A second build or
  publish into the same folder fails at once, naming the holder's pid, host, command and start time. The kernel drops
  the lock when its process ends, even on `kill -9`, so a stale `run.lock` file never blocks anyone (it is kept: the
  file is the lock's identity). Local file systems only: flock over NFS may not exclude another host.
- `read_json` / `write_json`: state files (`run.json`, seals) written atomically; a damaged one raises
  `DamagedStateFile` with its path and the fix, never a traceback.
- `diagnose` / `doctor`: `nanoflux doctor <dir> [--repair]`: damaged journal lines (records lost, which calls will be
  sent again) and state files; `--repair` rewrites the journals keeping every intact record.
- `begin_run` / `end_run` / `run_history`: one record per run of the build in `runs.json` (when it started, its wall
  time, the calls it sent and their tokens), so a resumed build's totals add its runs up instead of reporting the last
  one. A run that never finished (killed) is accounted from the calls it journaled.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from builder import journal as journals
from builder.journal import write_atomic

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
JOURNALS = ("calls.jsonl", "tools.jsonl", "examples.jsonl")
RUNS_FILE = "runs.json"
RUN_SHAPE: dict[str, type] = {"fingerprint": str, "recipe": dict}


class RunFolderError(Exception):
    """A problem with an output folder that the message fully explains (shown as one line, no traceback)."""


class FolderBusy(RunFolderError):
    """Another process holds the folder's lock."""


class DamagedStateFile(RunFolderError):
    """A state file that cannot be read back."""

    def __init__(self, path: Path, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path} is damaged ({problem}). Fix: {fix}")


# --- one writer per folder -------------------------------------------------------------------------------


@dataclass
class RunLock:
    """An exclusive flock on `<folder>/run.lock`, held until `release` (or the process ends)."""

    folder: Path
    purpose: str
    fd: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(
                f"output_dir {self.folder} is in use by {describe_holder(holder)}: one writer per output folder, so this "
                f"{self.purpose} did not start. Fix: wait for it to finish (or stop it), or use another output_dir."
            ) from None
        self.fd = fd
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(fd, 0)  # written in place: replacing the file would give it a new inode, and a second lock
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _holder(fd: int) -> dict[str, Any]:
    """Who holds the lock, as its holder wrote it (re-read once: a holder that has just taken it may be mid-write)."""
    for attempt in range(2):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            if isinstance(info, dict) and info.get("pid") and _alive(info["pid"]):
                return info
        except ValueError:
            info = {}
        if attempt == 0:
            time.sleep(0.1)
    return info if isinstance(info, dict) else {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def describe_holder(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "another process (it has not written its pid yet)"
    text = f"a running nanoflux {info.get('purpose', 'process')} (pid {info['pid']} on {info.get('host', '?')}, started {info.get('started_at', '?')}"
    return text + (f", `{info['command']}`)" if info.get("command") else ")")


_HELD: dict[Path, RunLock] = {}


def hold(folder: str | Path, purpose: str = "build") -> RunLock:
    """Lock `folder` for this process until `release(folder)` or exit; another process gets FolderBusy at once.
    If this process already holds it (an earlier run that did not release it), that lock is taken over."""
    key = Path(folder).resolve()
    if key in _HELD:
        held = _HELD[key]
        held.purpose = held.info["purpose"] = purpose
        return held
    lock = RunLock(Path(folder), purpose).acquire()
    _HELD[key] = lock
    return lock


def release(folder: str | Path) -> None:
    """Release this process's lock on `folder` (a no-op when it holds none)."""
    lock = _HELD.pop(Path(folder).resolve(), None)
    if lock is not None:
        lock.release()


@contextmanager
def locked(folder: str | Path, purpose: str) -> Iterator[RunLock]:
    """`with locked(output_dir, "publish"):` the folder is this process's until the block ends (re-entrant)."""
    key = Path(folder).resolve()
    if key in _HELD:
        yield _HELD[key]
        return
    lock = hold(folder, purpose)
    try:
        yield lock
    finally:
        release(folder)


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds `folder`'s lock right now (None: nobody). Never takes it for longer than the test."""
    path = Path(folder) / LOCK_FILE
    if not path.exists() or Path(folder).resolve() in _HELD:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --- state files -----------------------------------------------------------------------------------------


def doctor_fix(folder: Path) -> str:
    return f"run `nanoflux doctor {folder} --repair` (keeps every intact journal record), or re-run with --fresh to start over"


def read_json(path: Path, shape: dict[str, type] | None = None, fix: str | None = None) -> dict[str, Any]:
    """A JSON object state file, checked against `shape` (field -> type); DamagedStateFile when it is not one."""
    fix = fix or doctor_fix(path.parent)
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError as err:
        raise DamagedStateFile(path, f"not valid UTF-8 at byte {err.start}", fix) from None
    except ValueError as err:
        raise DamagedStateFile(path, f"not valid JSON: {err}", fix) from None
    if not isinstance(data, dict):
        raise DamagedStateFile(path, f"a JSON {type(data).__name__} where an object belongs", fix)
    for name, kind in (shape or {}).items():
        if not isinstance(data.get(name), kind):
            raise DamagedStateFile(path, f"`{name}` is {data.get(name)!r:.60}, not a {kind.__name__}", fix)
    return data


def write_json(path: Path, data: Any) -> None:
    """Write a JSON state file atomically (whole or not at all)."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def clear(folder: Path) -> None:
    """What `--fresh` removes besides the outputs: journal seals, set-aside damaged lines and state files."""
    for name in JOURNALS:
        path = folder / name
        for extra in (journals.seal_path(path), journals.damaged_path(path)):
            extra.unlink(missing_ok=True)
    (folder / "run.json.damaged").unlink(missing_ok=True)
    (folder / RUNS_FILE).unlink(missing_ok=True)  # a fresh build's time and tokens start from zero


# --- run records -----------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_runs(folder: Path) -> list[dict[str, Any]]:
    path = folder / RUNS_FILE
    if not path.exists():
        return []
    runs = read_json(path, {"runs": list}, fix=f"delete {path} (only the build's time and token totals are lost)")["runs"]
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("started_at"), str)]


def _calls(folder: Path) -> list[dict[str, Any]]:
    """The calls journal's intact records in file order (it is append-only: each run's calls follow the last run's)."""
    path = folder / "calls.jsonl"
    return [record for _, _, record in journals.scan(path).lines] if path.exists() else []


def begin_run(folder: str | Path) -> int:
    """Record that a run of the build starts now, and how many calls the journal holds; returns its index."""
    folder = Path(folder)
    runs = _read_runs(folder)
    runs.append({"started_at": _now(), "finished_at": None, "journal_records_before": len(_calls(folder))})
    write_json(folder / RUNS_FILE, {"runs": runs})
    return len(runs) - 1


def end_run(folder: str | Path, index: int, *, wall_time_s: float, calls_sent: int, tokens: dict[str, int]) -> list[dict[str, Any]]:
    """Record run `index` as finished: its wall time, the calls it sent and their tokens. Returns `run_history`."""
    folder = Path(folder)
    runs = _read_runs(folder)
    runs[index].update(finished_at=_now(), wall_time_s=round(wall_time_s, 2), calls_sent=calls_sent, tokens=dict(tokens), interrupted=False)
    write_json(folder / RUNS_FILE, {"runs": runs})
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
        history.append({
            **run,
            "interrupted": True,
            "wall_time_s": round((last - start).total_seconds(), 2),
            "calls_sent": len(mine),
            "tokens": {kind: sum(int(r.get(f"{kind}_tokens") or 0) for r in mine) for kind in ("prompt", "completion")},
        })  # fmt: skip
    return history


def run_totals(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The build's totals over its runs: wall time, calls sent and tokens added up."""
    return {
        "runs": len(history),
        "interrupted": sum(bool(run.get("interrupted")) for run in history),
        "wall_time_s": round(sum(run.get("wall_time_s") or 0.0 for run in history), 2),
        "calls_sent": sum(run.get("calls_sent") or 0 for run in history),
        "tokens": {kind: sum((run.get("tokens") or {}).get(kind, 0) for run in history) for kind in ("prompt", "completion")},
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
    run = folder / "run.json"
    if run.exists():
        try:
            read_json(run, RUN_SHAPE)
            findings.append(Finding(run, None))
        except DamagedStateFile as err:
            findings.append(Finding(run, err.problem, fix="--repair sets it aside; the next build writes it again (every journaled call is still checked against its request)"))
    summary = folder / "summary.json"
    if summary.exists():
        try:
            read_json(summary)
            findings.append(Finding(summary, None))
        except DamagedStateFile as err:
            findings.append(Finding(summary, err.problem, fix="re-run the same `nanoflux build`: it replays the journal and rewrites it"))
    config = folder / "config.yaml"
    if config.exists():
        try:
            if not isinstance(yaml.safe_load(config.read_bytes()), dict):
                raise ValueError("not a mapping")
            findings.append(Finding(config, None))
        except (ValueError, yaml.YAMLError) as err:
            findings.append(Finding(config, f"not a YAML recipe: {str(err).splitlines()[0]}", fix="the next `nanoflux build` writes it again"))
    for name in ("curated.jsonl", "pool.jsonl"):
        path = folder / name
        if path.exists():
            bad = [n for n, line in enumerate(path.read_bytes().splitlines(), 1) if line.strip() and not _json_object(line)]
            problem = f"{len(bad)} line(s) not a JSON object (line {', '.join(map(str, bad[:5]))})" if bad else None
            findings.append(Finding(path, problem, fix="re-run the same `nanoflux build`: it replays the journal and rewrites it"))
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
    lines = [f"      {d.describe()}" for d in found.damaged[:20]] + ([f"      ... {len(found.damaged) - 20} more"] if len(found.damaged) > 20 else [])
    keys = sorted({d.key for d in found.damaged if d.key})
    unknown = found.lost - len(keys)
    resend = f"sent again: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}" if keys else ""
    if unknown > 0:
        resend += f"{'; ' if resend else 'sent again: '}{unknown} record(s) whose key is not legible"
    detail = "\n".join([found.summary(details=False), *lines, *([f"      {resend}"] if found.lost else [])])
    fix = "--repair (or the next build) keeps every intact record and sets the damaged lines aside in " + journals.damaged_path(path).name
    return Finding(path, "damaged" if not found.legacy or found.damaged else "older format without checksums", detail, fix), found


def diagnose(folder: str | Path, repair: bool = False) -> list[Finding]:
    """Check every journal and state file in `folder`; with `repair`, fix what can be fixed (under the folder's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"output_dir {folder} does not exist. Fix: pass the output_dir of a build")
    if not repair:
        return [*(_check_journal(folder / name)[0] for name in JOURNALS if (folder / name).exists()), *_check_state(folder)]
    with locked(folder, "doctor --repair"):
        findings = []
        for name in JOURNALS:
            if (folder / name).exists():
                finding, found = _check_journal(folder / name)
                if finding.problem:
                    kept = journals.repair(found)
                    finding.repaired = f"rewritten with {kept} intact record(s)" + (f"; damaged lines in {journals.damaged_path(found.path).name}" if found.damaged else "")
                findings.append(finding)
        for finding in _check_state(folder):
            if finding.problem and finding.path.name == "run.json":
                os.replace(finding.path, folder / "run.json.damaged")
                finding.repaired = "set aside as run.json.damaged"
            findings.append(finding)
        return findings


def doctor(folder: str | Path, repair: bool = False) -> tuple[str, bool]:
    """`nanoflux doctor`: the report, and whether the folder is healthy (after the repair, with `repair`)."""
    folder = Path(folder)
    busy = holder(folder)
    if busy and repair:
        raise FolderBusy(f"output_dir {folder} is in use by {describe_holder(busy)}. Fix: repair it once that has finished")
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
        out.append("  no journal or state file: not a build folder?")
    elif remaining and not repair:
        out.append(f"{len(remaining)} problem(s). Fix: nanoflux doctor {folder} --repair (keeps every intact record)")
    elif remaining:
        out.append(f"{len(remaining)} problem(s) left: see each fix above")
    else:
        out.append("healthy" if not repair or not any(f.problem for f in findings) else "repaired: a resumed build sends the lost calls again")
    return "\n".join(out), not remaining
