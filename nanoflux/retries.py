"""When to try a request again and how long to wait: the retry policy, full-jitter exponential backoff, and the
server's `Retry-After` (a lower bound, never beyond the policy's maximum)."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests; every 5xx is retried as well (unless a validation error).
RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass
class RetryPolicy:
    """How hard to try one request: total attempts, full-jitter backoff bounds, per-attempt timeout."""

    max_attempts: int = 6
    backoff_base: float = 0.5  # seconds
    backoff_max: float = 30.0
    timeout: float = 120.0  # per attempt, seconds


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; a naive result means the zone was missing
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt number `attempt` (0-based).

    `Retry-After` is a lower bound (the server knows best when it will have room), but never beyond
    `backoff_max`, so a hostile or confused header cannot park a worker for hours.
    """
    delay = rng.uniform(0.0, min(policy.backoff_max, policy.backoff_base * 2**attempt))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, policy.backoff_max)
