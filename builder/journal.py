"""Durable build state: append-only JSON Lines journals in the output dir.

Every finished role call and tool run is appended (and fsynced) under a deterministic key as it completes,
so after a crash or `kill -9` a re-run replays the build from the journal: finished calls are answered from
disk, only missing or failed ones go out again, and the rows come out exactly as in an uninterrupted run.
A torn last line (killed mid-write) is ignored. The build writes through `aput`, which runs the write and its fsync
in the journal's own threads, so the event loop keeps sending requests meanwhile; records written at the same
moment share one fsync (group commit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Journal:
    """An append-only JSONL file indexed by each record's `key` (a later record with the same key wins)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # lines flushed to the file so far
        self._synced = 0  # of those, how many an fsync has made durable
        self._executor: ThreadPoolExecutor | None = None
        if self.path.exists():
            self._load()
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        torn = 0
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    torn += 1
                    continue
                self.records[record["key"]] = record
        if torn:
            logger.warning("%s: ignored %d incomplete line(s) left by an interrupted run", self.path, torn)
        # Start the next append on a fresh line even if the last one was torn.
        with self.path.open("rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put(self, record: dict[str, Any]) -> None:
        """Append `record` (which has a `key`) and make it durable before returning. Thread-safe: when another
        thread's fsync started after this line was flushed, it already made the line durable and none is repeated."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self._written += 1
            ticket = self._written
        with self._sync_lock:
            if self._synced < ticket:
                with self._lock:
                    covered = self._written  # every line flushed so far goes to disk with this fsync
                os.fsync(self._file.fileno())
                self._synced = covered
        with self._lock:
            self.records[record["key"]] = record

    async def aput(self, record: dict[str, Any]) -> None:
        """`put` without blocking the event loop: the write and the fsync run in the journal's threads."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"journal-{self.path.stem}")
        await asyncio.get_running_loop().run_in_executor(self._executor, self.put, record)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._file.close()


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
