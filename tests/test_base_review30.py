"""Review 30 of the shared contract and the in-memory backends: defects found, kept fixed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FakeClock

from cacheplug import BaseCache, NullCache, SimpleCache

# -- async memoize: a waiter gets the result as it was returned, not as its caller changed it --


async def _leader_changes_its_result(cache: BaseCache) -> tuple[list[Any], list[Any], int]:
    """One task calls, a second waits for that call; the first caller changes the list it got
    (and writes another key) before the waiter runs again."""
    gate = asyncio.Event()
    calls = 0

    @cache.memoize()
    async def rows(n: int) -> list[Any]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return [n]

    async def first() -> list[Any]:
        got = await rows(1)
        got.append("changed by the first caller")
        cache.set("other", 1)  # with threshold=1, evicts the kept result
        return got

    leader = asyncio.create_task(first())
    await asyncio.sleep(0)  # the leader is in the call
    waiter = asyncio.create_task(rows(1))
    await asyncio.sleep(0)  # the waiter found its flight
    gate.set()
    return await leader, await waiter, calls


@pytest.mark.parametrize("kind", ["null", "evicted"])
def test_an_async_waiter_never_sees_the_first_callers_changes(kind: str, clock: FakeClock) -> None:
    cache: BaseCache = NullCache() if kind == "null" else SimpleCache(threshold=1, clock=clock)
    mine, theirs, calls = asyncio.run(_leader_changes_its_result(cache))
    assert mine == [1, "changed by the first caller"]
    assert theirs == [1]
    # not kept: handed a copy made as the call ended; kept then evicted: the waiter calls
    assert calls == (1 if kind == "null" else 2)


# -- default_timeout assigned on a class after it was made ------------------------------------


def test_default_timeout_assigned_on_a_made_class_keeps_the_instance_checked(
    clock: FakeClock,
) -> None:
    class Made(SimpleCache):
        pass

    Made.default_timeout = 60  # as `SimpleCache.default_timeout = 60` would
    cache = Made(clock=clock)
    assert cache.default_timeout == 300  # the constructor's default, as in cachelib
    with pytest.raises(TypeError, match="default_timeout must be"):
        cache.default_timeout = "5"  # type: ignore[assignment]
    cache.default_timeout = 5
    assert "default_timeout" not in vars(cache)
    cache.set("k", "v")
    clock.advance(6)
    assert cache.get("k") is None  # set's hot path saw the reassigned 5 seconds
    assert Made.default_timeout == 60  # on the class: as written


def test_a_bad_default_timeout_assigned_on_a_made_class_raises_at_the_next_cache() -> None:
    class Made(NullCache):
        pass

    Made.default_timeout = "60"  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"Made\.default_timeout must be .* got str '60'"):
        Made()


# -- single flight when the write keeps nothing (a timeout below 0) ---------------------------


def _wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; bounded, so a defect fails instead of hanging."""
    pause, deadline = threading.Event(), time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        pause.wait(0.001)


@pytest.mark.parametrize("how", ["default_timeout reassigned", "timeout argument"])
@pytest.mark.parametrize("make", [SimpleCache, NullCache])
def test_threads_waiting_for_a_result_born_expired_are_handed_it(
    make: Callable[[], BaseCache], how: str
) -> None:
    cache = make()
    timeout = None
    if how == "default_timeout reassigned":
        cache.default_timeout = -1  # cachelib's users stop caching so
    else:
        timeout = -1
    threads, calls, results = 6, [], []

    def factory() -> list[int]:
        if not calls:  # the first call ends once every thread waits in its flight
            _wait_until(lambda: cache._flights["key"][1] == threads)
        calls.append(1)
        return [1]

    def work() -> None:
        results.append(cache.get_or_set("key", factory, timeout))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [[1]] * threads
    assert len({id(result) for result in results}) == threads  # each a copy of its own
    assert len(calls) == 1, "the waiters missed one after another and each called again"


async def _tasks_wait_for_a_result_born_expired(cache: BaseCache) -> tuple[list[Any], int]:
    gate = asyncio.Event()
    calls = 0

    @cache.memoize(timeout=-1)
    async def rows(n: int) -> list[int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return [n]

    tasks = [asyncio.create_task(rows(1)) for _ in range(4)]
    await asyncio.sleep(0)  # each task in the call or waiting for it
    gate.set()
    return list(await asyncio.gather(*tasks)), calls


def test_async_tasks_waiting_for_a_result_born_expired_are_handed_it(clock: FakeClock) -> None:
    results, calls = asyncio.run(_tasks_wait_for_a_result_born_expired(SimpleCache(clock=clock)))
    assert results == [[1]] * 4
    assert calls == 1
