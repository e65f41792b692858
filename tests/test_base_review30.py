"""Review 30 of the shared contract and the in-memory backends: defects found, kept fixed."""

from __future__ import annotations

import asyncio
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
def test_an_async_waiter_never_sees_the_first_callers_changes(
    kind: str, clock: FakeClock
) -> None:
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
