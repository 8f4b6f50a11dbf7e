"""Capacity-seeking concurrency for one endpoint: an AIMD limit on the requests in flight.

Serving engines batch (TGI `max_concurrent_requests`, vLLM `max_num_seqs`, Inference Endpoints): a client that keeps a
fixed handful of requests in flight leaves them idle, one that sends everything at once gets 429s. `AdaptiveLimit`
looks for the capacity the way TCP congestion control and Netflix's `concurrency-limits` do:

- slow start: +1 per answered request (the limit doubles every round trip) until the first sign of congestion;
- then additive increase: +1/limit per answered request (+1 per round trip), only while the limit is in use;
- multiplicative decrease (x `backoff_ratio` of the requests the server took) on 429/503/504, timeouts, or a latency
  per completion token above `tolerance` x the lowest seen for that role and answer length, scaled by how much more
  this client had in flight than when that lowest was seen; at most once per round trip: a signal from a request sent
  before the last cut is already accounted for;
- `Retry-After` on a 429/503 pauses new requests to the endpoint (`pause`, `pause_remaining`).

Why the latency is scaled by the load: a batching server (vLLM, TGI) makes every step slower as its batch grows, so
latency per token rises with the client's own concurrency long before anything queues (an 8B model on an H100: ~3x
from 16 to 256 sequences), and an unscaled rule stops far below the capacity. Latency that grows no faster than the
requests in flight is the client's own load, which the server's 429s and the timeouts bound; latency beyond that
(the same load, slower answers) is congestion from elsewhere, and is cut.

The limit stays within [1, ceiling] (`max_concurrency`). Roles on one endpoint share one `AdaptiveLimit`
(`shared_limit`), so its bound applies to all of their requests together. Not thread-safe: one event loop uses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

INITIAL_LIMIT = 16  # requests in flight before anything is known (TCP's initial window is 10, Netflix's 20)


@dataclass
class LimitStats:
    """What the limit did; safe to log or save."""

    increases: int = 0
    decreases: int = 0  # cuts, at most one per round trip
    overloads: int = 0  # 429/503/504 answers seen
    timeouts: int = 0
    latency_cuts: int = 0  # cuts caused by latency per token
    peak_in_flight: int = 0
    peak_limit: int = 0


@dataclass(frozen=True)
class Slot:
    """One admitted request: when it went out, how many were in flight then (itself included), and the limit then."""

    started: float
    in_flight: int
    limit: int


class AdaptiveLimit:
    """An AIMD bound on the requests in flight to one endpoint (see the module docstring).

    Use `slot = await limit.acquire()` before a request and exactly one `release(slot, ...)` after it.
    """

    def __init__(
        self,
        *,
        ceiling: int,
        initial: int = INITIAL_LIMIT,
        backoff_ratio: float = 0.9,
        tolerance: float = 3.0,  # not 2: on a batching server a request's latency doubles when prefills join its steps
        clock: Callable[[], float] = time.monotonic,
    ):
        if ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}")
        if not 0.0 < backoff_ratio < 1.0 or tolerance <= 1.0:
            raise ValueError("backoff_ratio must be in (0, 1) and tolerance > 1")
        self.ceiling = ceiling
        self.backoff_ratio = backoff_ratio
        self.tolerance = tolerance
        self.stats = LimitStats()
        self._clock = clock
        self._limit = float(max(1, min(ceiling, initial)))
        self._slow_start = True
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_cut = float("-inf")
        self._cut_in_flight = 0  # requests in flight at the last cut, and how many of them the server refused since
        self._cut_refused = 0
        self._resume_at = float("-inf")
        # Lowest latency per completion token seen, per (role, answer-length band), and the requests in flight then.
        self._baselines: dict[tuple[str, int], tuple[float, int]] = {}

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return max(1, min(self.ceiling, int(self._limit)))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def lower_ceiling(self, ceiling: int) -> None:
        """Apply a smaller `max_concurrency` (a role sharing this endpoint asked for less)."""
        self.ceiling = max(1, min(self.ceiling, ceiling))
        self._limit = min(self._limit, float(self.ceiling))

    # -- admission ---------------------------------------------------------------------------------

    async def acquire(self) -> Slot:
        """Wait for room under the limit; returns the slot to hand back to `release`."""
        if self._in_flight < self.limit and not self._waiters:
            self._take()
            return self._slot()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled before it ran: give it back
                self._in_flight -= 1
                self._wake()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        return self._slot()

    def release(self, slot: Slot, outcome: str, *, tokens: int = 0, key: str = "") -> None:
        """Hand back a slot. `outcome`: `ok` (answered; `tokens` completion tokens, `key` the role), `overload`
        (429/503/504), `timeout`, or `error` (anything else: no signal about capacity)."""
        in_flight = self._in_flight  # FlightSize when the signal came, this request included
        self._in_flight -= 1
        now = self._clock()
        if outcome == "overload":
            self.stats.overloads += 1
            self._cut(slot.started, now, in_flight, refused=True)
        elif outcome == "timeout":
            self.stats.timeouts += 1
            self._cut(slot.started, now, in_flight)
        elif outcome == "ok":
            if self._queueing(slot.started, now, tokens, key, max(slot.in_flight, in_flight)):
                if self._cut(slot.started, now, in_flight):
                    self.stats.latency_cuts += 1
            elif max(slot.in_flight, in_flight) * 2 >= slot.limit:  # only grow a limit in use (half of it, at least)
                self._limit = min(float(self.ceiling), self._limit + (1.0 if self._slow_start else 1.0 / self._limit))
                self.stats.increases += 1
                self.stats.peak_limit = max(self.stats.peak_limit, self.limit)
        self._wake()

    # -- Retry-After -------------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Send nothing new to the endpoint for `seconds` (its Retry-After)."""
        self._resume_at = max(self._resume_at, self._clock() + max(0.0, seconds))

    def pause_remaining(self) -> float:
        return max(0.0, self._resume_at - self._clock())

    # -- internals ---------------------------------------------------------------------------------

    def _slot(self) -> Slot:
        return Slot(self._clock(), self._in_flight, self.limit)

    def _take(self) -> None:
        self._in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while queued
                continue
            self._take()
            waiter.set_result(None)

    def _cut(self, started: float, now: float, in_flight: int, *, refused: bool = False) -> bool:
        """Multiplicative decrease of what the server took: the requests in flight when the signal came (RFC 5681's
        FlightSize, not the limit: after slow start's doubling the limit can be twice that), less those it refused.
        A signal from a request sent before the last cut belongs to the congestion that cut answered: it does not cut
        again, but a refusal among them still lowers the estimate of what the server took."""
        if started < self._last_cut:
            if refused and self._cut_refused < self._cut_in_flight - 1:
                self._cut_refused += 1
                self._limit = max(
                    1.0, min(self._limit, (self._cut_in_flight - self._cut_refused) * self.backoff_ratio)
                )
            return False
        before = self.limit
        self._cut_in_flight, self._cut_refused = in_flight, int(refused)
        self._limit = max(1.0, min(self._limit, float(in_flight - self._cut_refused)) * self.backoff_ratio)
        self._slow_start = False
        self._last_cut = now
        self.stats.decreases += 1
        logger.debug("concurrency limit %d -> %d", before, self.limit)
        return True

    def _queueing(self, started: float, now: float, tokens: int, key: str, load: int) -> bool:
        """Whether this answer's latency per token, sent with `load` requests in flight, says the server is congested
        beyond what that load explains; updates the reference."""
        if tokens <= 0:
            return False
        sample = (now - started) / tokens
        band = (key, tokens.bit_length())  # answers of similar length: fixed costs weigh alike
        reference, reference_load = self._baselines.get(band, (None, 0))
        if reference is None or sample <= reference:
            self._baselines[band] = (sample, max(1, load))
            return False
        # Drift up slowly (about 5% of the gap per round trip), so that a server that got slower for good is
        # eventually taken as it is rather than cut down to one request.
        self._baselines[band] = (reference + (sample - reference) * 0.05 / max(1.0, self._limit), reference_load)
        return sample > self.tolerance * reference * max(1.0, load / reference_load)


# One limit per endpoint and event loop: roles on one endpoint share it, whichever client they use.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AdaptiveLimit]] = weakref.WeakKeyDictionary()


def shared_limit(endpoint: str, ceiling: int) -> AdaptiveLimit:
    """The running loop's limit for `endpoint` (a public URL or model id), created on first use; a smaller `ceiling`
    than the existing one lowers it."""
    limits = _SHARED.setdefault(asyncio.get_running_loop(), {})
    limit = limits.get(endpoint)
    if limit is None:
        limit = limits[endpoint] = AdaptiveLimit(ceiling=ceiling)
    else:
        limit.lower_ceiling(ceiling)
    return limit
