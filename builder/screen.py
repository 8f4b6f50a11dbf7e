"""Decontamination while the build runs: rows are checked against the reference benchmarks as soon as curation could
keep them, in a background thread, so the check adds almost nothing after the last call.

A row's matches depend on its own text only (`builder.decontamination.find_matches`), so checking rows in batches as
they are judged finds exactly what one check of every candidate at the end would. `Screen.matches` returns them in
the order asked, checking there and then any row that was never submitted (a resumed build's rows, for instance).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from builder.decontamination import DecontaminationConfig, Match, find_matches
from builder.reference import Reference, row_text

logger = logging.getLogger(__name__)

BATCH = 32  # rows per background check: large enough for batched embedding, small enough to leave a short tail


class Screen:
    """Background decontamination of the rows a build submits; `matches` collects the results."""

    def __init__(
        self, reference: Reference, config: DecontaminationConfig, embedder: Any = None, *, batch: int = BATCH
    ) -> None:
        self.reference, self.config, self.embedder, self.batch = reference, config, embedder, batch
        self._found: dict[str, list[Match]] = {}  # by the checked text (identical texts match identically)
        self._pending: list[dict[str, Any]] = []
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        # One worker: batches are checked one after another, never competing with each other for the CPU.
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="decontamination")

    @property
    def active(self) -> bool:
        return self.config.enabled and bool(self.reference.items)

    def submit(self, row: dict[str, Any]) -> None:
        """Queue `row` for checking; a full batch starts in the background. Call from one thread (the event loop)."""
        if not self.active:
            return
        self._pending.append(row)
        if len(self._pending) >= self.batch:
            self._start()

    def _start(self) -> None:
        texts = list(dict.fromkeys(row_text(row) for row in self._pending))
        self._pending = []
        if self._executor is None:  # closed: check here
            self._check(texts)
        else:
            self._futures.append(self._executor.submit(self._check, texts))

    def _check(self, texts: list[str]) -> None:
        rows = [{"question": text} for text in texts]  # row_text of this row is the text itself
        found = find_matches(rows, self.reference, self.config, self.embedder)
        with self._lock:
            self._found.update(zip(texts, found, strict=True))

    def matches(self, rows: Sequence[dict[str, Any]]) -> list[list[Match]]:
        """Each row's matches, in order: waits for the background batches, then checks what was never submitted.
        Works after `close` too."""
        if not self.active:
            return [[] for _ in rows]
        if self._pending:
            self._start()
        for future in self._futures:
            future.result()  # re-raises a failed batch's error here, in the build
        self._futures = []
        texts = [row_text(row) for row in rows]
        missing = [text for text in dict.fromkeys(texts) if text not in self._found]
        if missing:
            self._check(missing)
        return [self._found[text] for text in texts]

    def close(self) -> None:
        """Stop the worker once the batches it has are checked (their results stay available to `matches`)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
