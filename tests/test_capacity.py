"""AdaptiveLimit on a hand-driven clock: slow start, additive increase, cuts on overload / timeout / queueing,
at most one cut per round trip, the ceiling, Retry-After pauses, and fair admission."""

from __future__ import annotations

import asyncio

import pytest

from builder.capacity import AdaptiveLimit, shared_limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(ceiling: int = 1000, initial: int = 4) -> tuple[AdaptiveLimit, Clock]:
    clock = Clock()
    return AdaptiveLimit(ceiling=ceiling, initial=initial, clock=clock), clock


def round_trip(limit: AdaptiveLimit, clock: Clock, *, seconds: float = 1.0, tokens: int = 10, outcome: str = "ok", n: int | None = None) -> None:
    """`n` requests (default: the whole limit) sent together and answered `seconds` later."""

    async def go() -> None:
        slots = [await limit.acquire() for _ in range(limit.limit if n is None else n)]
        clock.now += seconds
        for slot in slots:
            limit.release(slot, outcome, tokens=tokens, key="judge")

    asyncio.run(go())


def test_slow_start_doubles_every_round_trip_until_the_ceiling():
    limit, clock = make(ceiling=40)
    seen = []
    for _ in range(5):
        round_trip(limit, clock)
        seen.append(limit.limit)
    assert seen == [8, 16, 32, 40, 40]


def test_an_overload_cuts_to_90_percent_of_what_the_server_took():
    async def overshoot(limit: AdaptiveLimit, clock: Clock, taken: int) -> None:
        slots = [await limit.acquire() for _ in range(100)]  # 100 sent; the server takes `taken`, refuses the rest
        clock.now += 0.01
        for slot in slots[taken:]:
            limit.release(slot, "overload")
        clock.now += 1
        for slot in slots[:taken]:
            limit.release(slot, "ok", tokens=10)

    limit, clock = make(initial=64)
    round_trip(limit, clock)  # 64 answered: slow start -> 128
    asyncio.run(overshoot(limit, clock, taken=60))
    assert limit.stats.decreases == 1 and limit.stats.overloads == 40  # one congestion event, one cut...
    assert 54 <= limit.limit <= 55  # ...to 90% of the 60 it took (the 60 answers then add +1/limit each)
    limit, clock = make(initial=100)
    asyncio.run(overshoot(limit, clock, taken=0))
    assert limit.limit == 1  # it took none


def test_after_a_cut_growth_is_additive():
    limit, clock = make(initial=40)
    round_trip(limit, clock, outcome="timeout", n=40)  # a timeout cuts what was in flight: 36
    assert limit.limit == 36
    for _ in range(3):
        round_trip(limit, clock)  # +1/limit per answer: about +1 per round trip
    assert 38 <= limit.limit <= 39


def test_a_signal_from_a_request_sent_before_the_cut_does_not_cut_again():
    async def go(limit: AdaptiveLimit, clock: Clock) -> None:
        early = [await limit.acquire() for _ in range(8)]
        clock.now += 1
        limit.release(early[0], "overload")  # 8 in flight, 1 refused: 90% of 7
        assert limit.limit == 6
        limit.release(early[1], "timeout")  # the same congestion, already answered
        assert limit.stats.decreases == 1 and limit.limit == 6
        limit.release(early[2], "overload")  # another refusal: no new cut, but the server took one fewer
        assert limit.stats.decreases == 1 and limit.limit == 5
        for slot in early[3:]:
            limit.release(slot, "error")
        late = await limit.acquire()  # sent after the cut
        clock.now += 1
        limit.release(late, "overload")
        assert limit.stats.decreases == 2

    limit, clock = make(initial=10)
    asyncio.run(go(limit, clock))


def test_latency_per_token_above_tolerance_cuts_and_below_it_grows():
    limit, clock = make(initial=16)
    round_trip(limit, clock, seconds=1.0, tokens=100)  # reference: 0.01 s/token
    grown = limit.limit
    round_trip(limit, clock, seconds=1.5, tokens=100)  # 1.5x: within tolerance 2
    assert limit.limit > grown and limit.stats.latency_cuts == 0
    grown = limit.limit
    round_trip(limit, clock, seconds=3.0, tokens=100)  # 3x: the server is queueing
    assert limit.stats.latency_cuts == 1 and limit.limit == int(grown * 0.9)
    # Answer lengths are compared within their band: a short answer's fixed costs are not queueing.
    before = limit.stats.latency_cuts
    round_trip(limit, clock, seconds=1.0, tokens=5)
    assert limit.stats.latency_cuts == before


def test_a_limit_not_in_use_does_not_grow():
    limit, clock = make(initial=32)
    for _ in range(5):
        round_trip(limit, clock, n=4)  # 4 of 32 in use
    assert limit.limit == 32


def test_the_ceiling_bounds_everything_and_a_smaller_one_lowers_it():
    limit, clock = make(ceiling=10, initial=50)
    assert limit.limit == 10
    limit.lower_ceiling(3)
    assert limit.limit == 3 and limit.ceiling == 3
    limit.lower_ceiling(8)  # a larger one leaves it
    assert limit.ceiling == 3


def test_retry_after_pauses_the_endpoint():
    limit, clock = make()
    assert limit.pause_remaining() == 0.0
    limit.pause(5.0)
    clock.now += 2.0
    assert limit.pause_remaining() == pytest.approx(3.0)
    limit.pause(1.0)  # a shorter pause does not shorten the current one
    assert limit.pause_remaining() == pytest.approx(3.0)


def test_waiters_are_admitted_in_order_and_a_cancelled_one_leaks_no_slot():
    async def go() -> None:
        limit, clock = make(initial=1)
        first = await limit.acquire()
        order: list[str] = []

        async def wait(name: str) -> None:
            started = await limit.acquire()
            order.append(name)
            limit.release(started, "error")

        a = asyncio.create_task(wait("a"))
        b = asyncio.create_task(wait("b"))
        c = asyncio.create_task(wait("c"))
        await asyncio.sleep(0)
        b.cancel()
        await asyncio.sleep(0)
        limit.release(first, "error")
        await asyncio.gather(a, c)
        assert b.cancelled() and order == ["a", "c"]
        assert limit.in_flight == 0

    asyncio.run(go())


def test_one_limit_per_endpoint_and_loop():
    async def go() -> tuple[AdaptiveLimit, AdaptiveLimit, AdaptiveLimit]:
        return shared_limit("http://a:1", 8), shared_limit("http://a:1", 4), shared_limit("http://b:1", 8)

    first, same, other = asyncio.run(go())
    assert first is same and first.ceiling == 4 and other is not first
    again, _, _ = asyncio.run(go())  # another loop: another limit
    assert again is not first
