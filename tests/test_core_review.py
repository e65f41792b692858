"""Adversarial review of the core (BaseCache, SimpleCache, memoize): each test proves a defect
that was found and fixed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from cacheplug import SimpleCache


def test_async_waiters_get_private_copies_when_the_entry_is_gone() -> None:
    # The first caller's result went to every waiting task as one shared object when the cache
    # no longer held it (evicted from a small cache here; a failed write on an engine does the
    # same): a task appending to its list changed the other tasks' results.
    cache = SimpleCache(threshold=1)
    gate: asyncio.Event | None = None

    @cache.memoize()
    async def load(n: int) -> list[int]:
        assert gate is not None
        await gate.wait()
        return [n]

    async def first() -> list[int]:
        result = await load(1)
        cache.set("other", 1)  # before the waiters run: evicts the entry they would read
        return result

    async def main() -> list[list[int]]:
        nonlocal gate
        gate = asyncio.Event()
        tasks = [asyncio.create_task(first())]
        tasks += [asyncio.create_task(load(1)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(asyncio.wait_for(main(), 10))
    assert results == [[1]] * 4
    assert len({id(result) for result in results}) == 4
    results[1].append(2)
    assert results[2] == [1]
    assert results[0] == [1]


def test_async_waiters_get_private_copies_of_a_result_born_expired() -> None:
    cache = SimpleCache()
    calls: list[Any] = []

    @cache.memoize(timeout=-1)
    async def load(n: int) -> list[int]:
        calls.append(n)
        await asyncio.sleep(0)
        return [n]

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(load(1), load(1), load(1)))

    results = asyncio.run(asyncio.wait_for(main(), 10))
    assert results == [[1]] * 3 and len({id(r) for r in results}) == 3
    assert len(calls) == 1


class Uncopyable(list[int]):
    def __deepcopy__(self, memo: dict[int, Any]) -> Uncopyable:
        raise TypeError("no copies")


def test_an_async_waiter_calls_again_when_a_gone_result_cannot_be_copied() -> None:
    cache, calls = SimpleCache(), []

    @cache.memoize(timeout=-1)
    async def load(n: int) -> Uncopyable:
        calls.append(n)
        await asyncio.sleep(0)
        return Uncopyable([n])

    async def main() -> list[Uncopyable]:
        return list(await asyncio.gather(load(1), load(1)))

    results = asyncio.run(asyncio.wait_for(main(), 10))
    assert results == [[1], [1]] and results[0] is not results[1]
    assert len(calls) == 2


class Named:
    """Shows its name as it is, as many hand-written reprs do."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Named({self.name})"


def test_memoize_keys_arguments_and_closures_shown_with_lone_surrogates() -> None:
    # A name decoded with surrogateescape (a file name, os.environ, sys.argv) in a hand-written
    # repr raised UnicodeEncodeError from the call, and from the decoration when closed over.
    cache = SimpleCache()
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")

    @cache.memoize()
    def size(item: Named) -> int:
        return len(item.name)

    assert size(Named(undecodable)) == size(Named(undecodable)) == 4
    assert size.cache_key(Named(undecodable)) != size.cache_key(Named("caf\\udce9"))
    assert cache.stats()["hits"] == 1

    def make(owner: Named) -> Any:
        @cache.memoize()
        def owned(n: int) -> str:
            return f"{owner.name}{n}"

        return owned

    assert make(Named(undecodable))(1) == f"{undecodable}1"
    assert make(Named("x"))(1) == "x1"


def test_inc_under_a_default_timeout_reassigned_below_zero() -> None:
    # cachelib's users reassign default_timeout (-1: entries born expired); a new counter then
    # raised AssertionError (under python -O it was stored as never expiring). cachelib answers
    # the count and stores nothing, as set does.
    cache = SimpleCache()
    cache.set("kept", 5, timeout=0)
    cache.default_timeout = -1
    assert cache.inc("new") == 1
    assert cache.dec("other", 2) == -2
    assert (cache.has("new"), cache.get("other")) == (False, None)
    assert cache.inc("kept") == 6  # an existing counter keeps its own expiry
    assert cache.get("kept") == 6
    json_cache = SimpleCache(serializer="json")
    json_cache.default_timeout = -1
    assert json_cache.inc("new", 3) == 3
    assert not json_cache.has("new")


@dataclass
class Repo:
    db: str

    def lookup(self, n: int) -> str:
        return f"{self.db}:{n}"


class Anonymous:
    def __init__(self, n: int) -> None:
        self.n = n

    def add(self, m: int) -> int:
        return self.n + m

    def __call__(self, m: int) -> int:
        return self.n * m


def test_memoized_bound_methods_keep_their_instances_apart() -> None:
    # memoize(repo.lookup), as an object does in __init__, keyed the calls without the object
    # the method is bound to: Repo("b").lookup(1) was served Repo("a")'s result.
    cache = SimpleCache()
    a, b = cache.memoize()(Repo("a").lookup), cache.memoize()(Repo("b").lookup)
    assert (a(1), b(1)) == ("a:1", "b:1")
    assert a.cache_key(1) == cache.memoize()(Repo("a").lookup).cache_key(1)
    assert cache.memoize()(Repo.lookup)(Repo("c"), 1) == "c:1"  # plain function: as before
    # bound to an object shown by its address: refused, as such an argument is
    with pytest.raises(TypeError, match=r"bound to <.*Anonymous object at 0x"):
        cache.memoize()(Anonymous(1).add)


def test_a_memoized_callable_object_shown_by_address_is_refused() -> None:
    # Its key prefix held the object's address: no hit from another process, and a later
    # object at that address was served the first one's results.
    cache = SimpleCache()
    with pytest.raises(TypeError, match=r"Anonymous object at 0x.*__repr__"):
        cache.memoize()(Anonymous(2))
    double, triple = cache.memoize()(Scale(2)), cache.memoize()(Scale(3))
    assert (double(5), triple(5)) == (10, 15)
    assert double.cache_key(5) == cache.memoize()(Scale(2)).cache_key(5)


@dataclass
class Scale:
    k: int

    def __call__(self, m: int) -> int:
        return self.k * m
