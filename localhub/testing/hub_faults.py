"""Fault injection for the Hub stand-in: `FaultyHub` answers chosen requests with an error, before or after
processing them, so tests can check what a client does when the Hub fails mid-publish."""

from __future__ import annotations

import logging
import re

from localhub.server import HubFault, LocalHub

logger = logging.getLogger(__name__)


class FaultyHub(LocalHub):
    """A `LocalHub` whose next requests can be made to fail: `hub.fail_next("POST", r"/commit/", status=500)`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._faults: list[HubFault] = []

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        times: int = 1,
        message: str = "Injected failure",
        after: bool = False,
    ) -> None:
        """Answer the next `times` requests matching `method` and `re.search(path_pattern, path)` with `status`.

        after=False: the request is not processed at all. after=True: it is processed (e.g. the commit lands),
        then the answer is replaced by the error, as when a response is lost.
        """
        with self._lock:
            self._faults.append(HubFault(method.upper(), re.compile(path_pattern), status, times, message, after))

    def _take_fault(self, method: str, path: str) -> HubFault | None:
        super()._take_fault(method, path)
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in (method, "*") and fault.pattern.search(path):
                    fault.remaining -= 1
                    return fault
        return None
