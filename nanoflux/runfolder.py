"""The run-folder contract every stage's output folder follows: one writer, atomic state, a run's identity.

- `hold` / `locked`: an OS file lock (`fcntl.flock` on `run.lock` in the folder) for the whole run. A second writer
  fails at once (`FolderBusy`), naming the holder's pid, host, command and start time. The kernel drops the lock when
  its process ends, even on `kill -9`, so a stale `run.lock` file never blocks anyone (it is kept: the file is the
  lock's identity). Local file systems only: flock over NFS may not exclude another host.
- `write_atomic`, `read_json` / `write_json`: state files written whole or not at all; a damaged one raises
  `DamagedStateFile` with its path and the fix, never a traceback.
- `claim`: create, resume or refuse a folder by the identity of the run in it (`run.json`: a fingerprint and what it
  was computed from); `fresh` discards the old run first. Build, evaluation and sweeps all resume this way.
- `utc_now`: the one timestamp format of every record NanoFlux writes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanoflux.errors import NanoFluxError
from nanoflux.recipe import changed_fields

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
RUN_FILE = "run.json"
RUN_SHAPE: dict[str, type] = {"fingerprint": str, "recipe": dict}


def utc_now() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunFolderError(NanoFluxError):
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
                f"output_dir {self.folder} is in use by {describe_holder(holder)}: one writer per output folder, so"
                f" this {self.purpose} did not start. Fix: wait for it to finish (or stop it), or use another"
                " output_dir."
            ) from None
        self.fd = fd
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
    text = (
        f"a running nanoflux {info.get('purpose', 'process')} (pid {info['pid']} on {info.get('host', '?')}, started"
        f" {info.get('started_at', '?')}"
    )
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


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync, then os.replace: a reader (or a resumed
    run) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, shape: dict[str, type] | None = None, fix: str | None = None) -> dict[str, Any]:
    """A JSON object state file, checked against `shape` (field -> type); DamagedStateFile when it is not one."""
    fix = fix or f"delete {path} and re-run with --fresh to start over"
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


def fingerprint(identity: dict[str, Any]) -> str:
    """sha256 of a run's identity (canonical JSON)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class DifferentRun(RunFolderError):
    """The folder holds a run of another identity: resuming it would mix two runs' results."""


def claim(
    folder: Path,
    identity: dict[str, Any],
    *,
    fresh: bool,
    discard: Callable[[], None],
    what: str = "a run",
    fix: str | None = None,
    damaged_fix: str | None = None,
) -> bool:
    """Make `folder` this run's: with `fresh`, `discard()` the old run first; else refuse a folder whose `run.json`
    holds another identity (`DifferentRun`, naming what changed, and `fix`). Writes this run's `run.json`; True when
    resuming. A damaged `run.json` raises DamagedStateFile with `damaged_fix`. The caller holds the folder's lock."""
    run_file = folder / RUN_FILE
    resuming = False
    if fresh:
        discard()
        run_file.unlink(missing_ok=True)
    elif run_file.exists():
        stop = fix or "re-run with --fresh to start over, or pass another --output_dir"
        previous = read_json(run_file, RUN_SHAPE, fix=damaged_fix or stop)
        if previous["fingerprint"] != fingerprint(identity):
            changed = changed_fields(previous["recipe"], identity)
            raise DifferentRun(
                f"output_dir {folder} holds {what} of a different recipe (changed: {', '.join(changed)}). Fix: {stop}."
            )
        resuming = True
    folder.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"fingerprint": fingerprint(identity), "recipe": identity})
    return resuming
