"""AdaptiveLimit on a hand-driven clock: slow start, additive increase, cuts on overload / timeout / queueing,
at most one cut per round trip, the ceiling, Retry-After pauses, and fair admission."""

from __future__ import annotations

import asyncio

import pytest

from nanoflux.capacity import AdaptiveLimit, shared_limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(ceiling: int = 1000, initial: int = 4) -> tuple[AdaptiveLimit, Clock]:
    clock = Clock()
    return AdaptiveLimit(ceiling=ceiling, initial=initial, clock=clock), clock


def round_trip(
    limit: AdaptiveLimit,
    clock: Clock,
    *,
    seconds: float = 1.0,
    tokens: int = 10,
    outcome: str = "ok",
    n: int | None = None,
) -> None:
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


def test_latency_rising_with_the_load_grows_and_rising_at_the_same_load_cuts():
    limit, clock = make(initial=16)
    round_trip(limit, clock, seconds=1.0, tokens=100)  # reference: 0.01 s/token with up to 16 in flight
    # A batching server: each doubling of the requests in flight makes every step slower (here 2x per doubling, the
    # worst a linear step-time model can do). That is the client's own load, not congestion: the limit keeps growing.
    for seconds in (2.0, 4.0, 8.0):
        before = limit.limit
        round_trip(limit, clock, seconds=seconds, tokens=100)
        assert limit.limit > before
    assert limit.stats.latency_cuts == 0 and limit.stats.decreases == 0
    # The same load and answers 3.5x slower than the reference for that load: the server is congested: cut.
    limit, clock = make(initial=16)
    round_trip(limit, clock, seconds=1.0, tokens=100, n=16)
    round_trip(limit, clock, seconds=3.5, tokens=100, n=16)
    assert limit.stats.latency_cuts == 1 and limit.limit == int(16 * 0.9)
    # Answer lengths are compared within their band: a short answer's fixed costs are not congestion.
    before = limit.stats.latency_cuts
    round_trip(limit, clock, seconds=1.0, tokens=5, n=8)
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


# --- against the simulated continuous-batching server (benchmarks/batching_server.py) -----------------------------


def drive(
    slots: int, *, seconds: float, queue_limit: int | None = None, ceiling: int = 256
) -> tuple[AdaptiveLimit, list[int], object]:
    """Keep `ceiling` + 50 callers sending requests through one AdaptiveLimit to an in-process batching server with
    `slots` (an 8B-on-H100 cost model, 40x faster) for `seconds`; returns the limit, its value sampled every 20 ms
    over the second half, and the server's stats. A 429 is handed back as `overload` and retried after 10 ms."""
    from benchmarks.batching_server import BatchingEngine, Overloaded, ServerModel

    async def go():
        engine = BatchingEngine(ServerModel(slots=slots, queue_limit=queue_limit, speed=40.0))
        engine.start()
        limit = AdaptiveLimit(ceiling=ceiling)
        loop = asyncio.get_running_loop()
        stop, samples, n = loop.time() + seconds, [], [0]
        shapes = [("attacker", 240, 600), ("defender", 125, 700), ("solver", 125, 700), ("judge", 95, 1200)]

        async def caller() -> None:
            while loop.time() < stop:
                n[0] += 1
                role, tokens, prompt = shapes[n[0] % 4]
                tokens += n[0] % 50 - 25
                slot = await limit.acquire()
                try:
                    engine.admit()
                except Overloaded:
                    limit.release(slot, "overload")
                    await asyncio.sleep(0.01)
                    continue
                await engine.generate(prompt, tokens)
                limit.release(slot, "ok", tokens=tokens, key=role)

        async def sample() -> None:
            while loop.time() < stop:
                if loop.time() > stop - seconds / 2:
                    samples.append(limit.limit)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(caller() for _ in range(ceiling + 50)), sample())
        await engine.stop()
        return limit, samples, engine.stats

    return asyncio.run(go())


@pytest.mark.parametrize("slots", [8, 64, 256])
def test_the_limit_converges_within_10_percent_of_the_server_slots(slots):
    limit, samples, stats = drive(slots, seconds=6.0)
    mean = sum(samples) / len(samples)
    assert abs(mean - slots) <= 0.1 * slots, (
        f"limit {mean:.1f} (range {min(samples)}-{max(samples)}) for {slots} slots; {limit.stats}"
    )
    assert stats.max_running == slots  # the server's batch ran full
    assert limit.stats.latency_cuts <= 2, "a batching server's step time rising with the batch is not congestion"


def test_the_limit_backs_off_on_429s_and_stays_near_what_the_server_takes():
    limit, samples, stats = drive(32, seconds=4.0, queue_limit=2)  # the server takes 32 running + 2 waiting
    assert stats.rejected > 0 and limit.stats.overloads == stats.rejected
    assert limit.stats.decreases >= 1 and limit.stats.peak_limit < 256  # it did not run to the ceiling
    assert max(samples) <= 34 + 2 and min(samples) >= 0.9 * 0.9 * 34 - 1, f"limit {min(samples)}-{max(samples)}"
