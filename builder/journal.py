"""Durable build state: append-only JSON Lines journals in the output dir.

Every finished role call and tool run is appended (and fsynced) under a deterministic key as it completes,
so after a crash or `kill -9` a re-run replays the build from the journal: finished calls are answered from
disk, only missing or failed ones go out again, and the rows come out exactly as in an uninterrupted run.
A torn last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Journal:
    """An append-only JSONL file indexed by each record's `key` (a later record with the same key wins)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
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
        """Append `record` (which has a `key`) and make it durable before returning."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records[record["key"]] = record

    def close(self) -> None:
        self._file.close()
