"""memoize on ``async def`` functions, and get_or_set refusing coroutines, in memory and on disk."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import FakeClock

from cacheplug import BaseCache, FileSystemCache, SimpleCache

T = TypeVar("T")


@pytest.fixture(params=["simple", "file"])
def cache(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> BaseCache:
    if request.param == "simple":
        return SimpleCache(clock=clock)
    return FileSystemCache(tmp_path, clock=clock)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function on a new event loop, failing instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), 10)

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Gated:
    """An async function counting its calls and finishing when its gate opens."""

    def __init__(self, result: Callable[[int], Any] = lambda n: [n, n * n]) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.result = result

    async def __call__(self, n: int) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.result(n)


async def crowd(
    cache: BaseCache, gated: Gated, call: Callable[[], Coroutine[Any, Any, Any]], count: int
) -> list[Any]:
    """Results (or exceptions) of ``count`` tasks that all miss before the gate opens."""
    gated.gate = asyncio.Event()
    tasks = [asyncio.create_task(call()) for _ in range(count)]
    await until(lambda: cache.stats()["misses"] == count)
    gated.gate.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def memoize_gated(cache: BaseCache, gated: Gated, **options: Any) -> Any:
    async def compute(n: int) -> Any:
        return await gated(n)

    return cache.memoize(**options)(compute)


def test_async_function_result_is_cached(cache: BaseCache) -> None:
    # memoize cached the coroutine object: SerializationError and a "never awaited" warning.
    gated = Gated()
    compute = memoize_gated(cache, gated)

    async def main() -> list[Any]:
        return [await compute(3), await compute(3), await compute(4)]

    assert run(main) == [[3, 9], [3, 9], [4, 16]]
    assert gated.calls == 2
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (1, 2)
    assert cache.get(compute.cache_key(3)) == [3, 9]


def test_async_wrapper_is_a_coroutine_function(cache: BaseCache) -> None:
    compute = memoize_gated(cache, Gated())
    assert inspect.iscoroutinefunction(compute)
    assert inspect.signature(compute) == inspect.signature(compute.uncached)
    assert compute.__name__ == "compute"
    coroutine = compute(1)
    assert inspect.iscoroutine(coroutine)
    coroutine.close()


def test_tasks_missing_one_key_await_one_call(cache: BaseCache) -> None:
    gated = Gated()
    compute = memoize_gated(cache, gated)

    results = run(lambda: crowd(cache, gated, lambda: compute(5), 10))
    assert results == [[5, 25]] * 10
    assert gated.calls == 1
    assert len({id(result) for result in results}) == 10  # each task gets its own copy
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["sets"]) == (9, 1, 1)


def test_an_exception_reaches_every_waiter_and_caches_nothing(cache: BaseCache) -> None:
    def fail(n: int) -> Any:
        raise ValueError(f"no result for {n}")

    gated = Gated(fail)
    compute = memoize_gated(cache, gated)

    errors = run(lambda: crowd(cache, gated, lambda: compute(7), 5))
    assert [str(error) for error in errors] == ["no result for 7"] * 5
    assert all(type(error) is ValueError for error in errors)
    assert gated.calls == 1
    assert cache.has(compute.cache_key(7)) is False
    gated.result = lambda n: n
    assert run(lambda: compute(7)) == 7  # the failure left no flight behind
    assert gated.calls == 2


def test_a_cancelled_first_caller_hands_the_call_to_a_waiter(cache: BaseCache) -> None:
    gated = Gated()
    compute = memoize_gated(cache, gated)

    async def main() -> list[Any]:
        gated.gate = asyncio.Event()
        first = asyncio.create_task(compute(2))
        await until(lambda: gated.calls == 1)
        waiters = [asyncio.create_task(compute(2)) for _ in range(4)]
        await until(lambda: cache.stats()["misses"] == 5)
        first.cancel()
        await until(lambda: gated.calls == 2)  # one waiter called in its place
        gated.gate.set()
        results = list(await asyncio.gather(*waiters))
        assert first.cancelled()
        return results

    assert run(main) == [[2, 4]] * 4
    assert gated.calls == 2
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (3, 2)  # each of the 5 calls counts one lookup


def test_a_cancelled_lone_caller_leaves_no_stuck_key(cache: BaseCache) -> None:
    gated = Gated()
    compute = memoize_gated(cache, gated)

    async def main() -> Any:
        gated.gate = asyncio.Event()
        first = asyncio.create_task(compute(9))
        await until(lambda: gated.calls == 1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        gated.gate = None
        return await compute(9)

    assert run(main) == [9, 81]
    assert gated.calls == 2


def test_a_cancelled_waiter_leaves_the_call_and_the_others_alone(cache: BaseCache) -> None:
    gated = Gated()
    compute = memoize_gated(cache, gated)

    async def main() -> list[Any]:
        gated.gate = asyncio.Event()
        tasks = [asyncio.create_task(compute(3)) for _ in range(3)]
        await until(lambda: cache.stats()["misses"] == 3)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        gated.gate.set()
        return [await tasks[0], await tasks[2]]

    assert run(main) == [[3, 9], [3, 9]]
    assert gated.calls == 1


def test_a_none_result_reaches_waiters_and_is_not_cached(cache: BaseCache) -> None:
    gated = Gated(lambda n: None)
    compute = memoize_gated(cache, gated)

    assert run(lambda: crowd(cache, gated, lambda: compute(1), 3)) == [None] * 3
    assert gated.calls == 1
    assert run(lambda: compute(1)) is None
    assert gated.calls == 2


def test_timeout_and_invalidate(cache: BaseCache, clock: FakeClock) -> None:
    gated = Gated()
    compute = memoize_gated(cache, gated, timeout=60)
    assert run(lambda: compute(2)) == [2, 4]
    clock.advance(59)
    assert run(lambda: compute(2)) == [2, 4]
    assert gated.calls == 1
    clock.advance(2)
    assert run(lambda: compute(2)) == [2, 4]
    assert gated.calls == 2
    assert compute.invalidate(2) is True
    assert compute.invalidate(2) is False
    assert run(lambda: compute(2)) == [2, 4]
    assert gated.calls == 3


@dataclass
class Account:
    number: int

    async def balance(self, currency: str) -> str:
        return f"{self.number} {currency}"


def test_async_methods_keep_their_instances_apart(cache: BaseCache) -> None:
    calls: list[int] = []

    class Bank(Account):
        @cache.memoize()
        async def balance(self, currency: str) -> str:
            calls.append(self.number)
            return f"{self.number} {currency}"

    one, two = Bank(1), Bank(2)
    assert inspect.iscoroutinefunction(one.balance)

    async def main() -> list[str]:
        return [await one.balance("EUR"), await two.balance("EUR"), await one.balance("EUR")]

    assert run(main) == ["1 EUR", "2 EUR", "1 EUR"]
    assert calls == [1, 2]
    assert one.balance.invalidate("EUR") is True
    assert run(lambda: one.balance.uncached("EUR")) == "1 EUR"


def test_each_event_loop_makes_its_own_call(cache: BaseCache) -> None:
    # a task must never await a future of another thread's loop
    gated = Gated()
    compute = memoize_gated(cache, gated)
    started, release = threading.Event(), threading.Event()
    results: list[Any] = []

    async def in_thread() -> Any:
        gate = gated.gate = asyncio.Event()
        task = asyncio.create_task(compute(4))
        await until(lambda: gated.calls == 1)
        gated.gate = None
        started.set()
        await asyncio.to_thread(release.wait, 10)
        gate.set()
        return await task

    other = threading.Thread(target=lambda: results.append(run(in_thread)))
    other.start()
    assert started.wait(10)
    assert run(lambda: compute(4)) == [4, 16]  # called here, not waiting on the other loop
    assert gated.calls == 2
    release.set()
    other.join(10)
    assert results == [[4, 16]]


def test_generator_functions_are_refused_at_decoration(cache: BaseCache) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def async_numbers() -> AsyncIterator[int]:
        yield 1

    for function in (numbers, async_numbers):
        with pytest.raises(TypeError, match=r"generator function.*iterated only once"):
            cache.memoize()(function)


def test_get_or_set_refuses_a_coroutine_and_stores_nothing(cache: BaseCache) -> None:
    # the coroutine reached the serializer: SerializationError, plus "never awaited" warnings
    async def make() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match=r"get_or_set\('k'\) got a coroutine.*await it"):
            cache.get_or_set("k", make)
        gc.collect()
    assert [str(warning.message) for warning in caught] == []
    assert cache.has("k") is False
    assert cache.stats()["sets"] == 0


def test_sync_memoize_of_a_function_returning_a_coroutine_is_refused(cache: BaseCache) -> None:
    async def make() -> int:
        return 1

    @cache.memoize()
    def indirect() -> Awaitable[int]:
        return make()

    with pytest.raises(TypeError, match="got a coroutine"):
        indirect()
    assert cache.has(indirect.cache_key()) is False


def test_a_shared_exception_keeps_the_traceback_of_its_call(cache: BaseCache) -> None:
    # each waiter re-raises the one exception object: its traceback must not pile up the
    # frames of every task that raised it before (asyncio's futures reset it the same way)
    def fail(n: int) -> Any:
        raise ValueError(f"no result for {n}")

    gated = Gated(fail)
    compute = memoize_gated(cache, gated)
    errors: list[BaseException] = []

    async def call() -> int:
        try:
            await compute(1)
        except ValueError as error:
            errors.append(error)
            return len(traceback.extract_tb(error.__traceback__))
        raise AssertionError("no error")

    depths = run(lambda: crowd(cache, gated, call, 20))
    assert len({id(error) for error in errors}) == 1
    assert len(set(depths)) <= 2, depths  # the first call's and the waiters'
    assert gated.calls == 1
