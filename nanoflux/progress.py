"""Progress of a long stage: a tqdm bar on a terminal, periodic log lines everywhere else (CI, Jobs, a redirected
log), so a build that runs for an hour never looks dead."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


class Progress:
    """Counts finished units out of `total`; `update`, `set_description` and `close` as tqdm's."""

    def __init__(self, total: int, *, desc: str, unit: str = "call", interval: float = 30.0, stream: Any = None):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.done = 0
        self._logged_at = -1  # `done` when the last line was logged: close() does not repeat it
        self.started = self._last = time.monotonic()
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        if stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc, file=stream)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.interval:
            self._log()

    def line(self) -> str:
        """`round 2/4: 34/96 calls (35%), 1.2 calls/s, ETA 52 s`."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = f"ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 and self.done < self.total else "ETA -"
        share = 100 * self.done / self.total if self.total else 100.0
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s ({share:.0f}%), {rate:.2f} {self.unit}s/s, {eta}"

    def _log(self) -> None:
        self._last, self._logged_at = time.monotonic(), self.done
        logger.info("%s", self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done != self._logged_at:
            self._log()
