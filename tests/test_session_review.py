"""A second read of session 17's changes: what they left or introduced, held against real parts.

A plugin backend here is backed by sqlite3 (a real engine, failing for real once its connection
is closed) and counts its engine failures with ``self._errors += 1``, which docs/plugins.md
lists as a counter a backend may move itself, beside ``self._backend_error``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from servers import RedisServer

from cacheplug import RedisCache, SimpleCache
from cacheplug.core.arguments import check_key
from cacheplug.core.base import BaseCache
from cacheplug.core.timeouts import Timeout


class CountingSQLiteCache(BaseCache):
    """A user's backend counting its own engine failures in ``_errors`` (no expiry)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute("CREATE TABLE cache (key TEXT PRIMARY KEY, value BLOB)")

    def get(self, key: str) -> Any:
        check_key(key)
        try:
            row = self.db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            self._errors += 1  # an outage: the contract's None, counted as an error
            return None
        if row is None:
            self._misses += 1
            return None
        self._hits += 1
        return self._decode_or_miss(key, row[0])

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        payload = self._encode(value, key)
        try:
            self.db.execute("REPLACE INTO cache VALUES (?, ?)", (key, payload))
        except sqlite3.Error:
            self._errors += 1
            return False
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return not self.has(key) and self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        check_key(key)
        try:
            gone = self.db.execute("DELETE FROM cache WHERE key = ?", (key,)).rowcount == 1
        except sqlite3.Error:
            self._errors += 1
            return False
        self._deletes += gone
        return gone

    def has(self, key: str) -> bool:
        check_key(key)
        try:
            query = "SELECT 1 FROM cache WHERE key = ?"
            return self.db.execute(query, (key,)).fetchone() is not None
        except sqlite3.Error:
            self._errors += 1
            return False

    def clear(self) -> bool:
        try:
            self.db.execute("DELETE FROM cache")
        except sqlite3.Error:
            self._errors += 1
            return False
        return True


@pytest.fixture
def failing_plugin() -> Iterator[CountingSQLiteCache]:
    cache = CountingSQLiteCache()
    cache.db.close()  # every statement now raises sqlite3.ProgrammingError
    yield cache


# -- a plugin counting its own errors ---------------------------------------------------------


def test_get_or_set_on_a_plugin_counting_its_own_outage(
    failing_plugin: CountingSQLiteCache,
) -> None:
    assert failing_plugin.get_or_set("k", lambda: 1) == 1
    stats = failing_plugin.stats()
    assert stats["misses"] >= 0, stats
    assert (stats["hits"], stats["misses"]) == (0, 0)  # a failed lookup counts an error only


def test_memoize_on_a_plugin_counting_its_own_outage(
    failing_plugin: CountingSQLiteCache,
) -> None:
    @failing_plugin.memoize()
    def double(x: int) -> int:
        return 2 * x

    assert [double(1), double(1), double(2)] == [2, 2, 4]
    assert failing_plugin.stats()["misses"] == 0


def test_the_plugin_counts_as_documented_while_it_works() -> None:
    cache = CountingSQLiteCache()
    assert cache.get_or_set("k", lambda: 1) == 1
    assert cache.get_or_set("k", lambda: 2) == 1
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"], stats["sets"]) == (1, 1, 0, 1)


# -- async recursion ---------------------------------------------------------------------------


def test_async_call_awaiting_itself_through_a_child_task_runs_again() -> None:
    cache = SimpleCache()
    calls = []

    @cache.memoize()
    async def retry(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:  # a retry by recursion, run as its own task
            (value,) = await asyncio.gather(retry(n))
            return value + 1
        return n

    async def bounded() -> int | str:
        try:
            return await asyncio.wait_for(retry(1), 3)  # hangs without the fix
        except TimeoutError:
            return "waited on itself"

    assert asyncio.run(bounded()) == 2
    assert calls == [1, 1]


def test_async_call_awaiting_itself_in_its_own_task_runs_again() -> None:
    cache = SimpleCache()
    calls = []

    @cache.memoize()
    async def retry(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:
            return await retry(n) + 1
        return n

    assert asyncio.run(asyncio.wait_for(retry(1), 3)) == 2
    assert calls == [1, 1]
    assert cache.get(retry.cache_key(1)) == 2


def test_waiting_tasks_still_share_one_call_when_not_nested() -> None:
    cache = SimpleCache()
    calls = []

    @cache.memoize()
    async def slow(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0.01)
        return n

    async def many() -> list[int]:
        return list(await asyncio.gather(*(slow(5) for _ in range(8))))

    assert asyncio.run(asyncio.wait_for(many(), 5)) == [5] * 8
    assert calls == [5]


# -- RedisCache digit payloads (held) ----------------------------------------------------------


class Text:
    """A text serializer: str in, its UTF-8 out."""

    def dumps(self, value: Any) -> bytes:
        return str(value).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


@pytest.mark.parametrize("text", ["12", "12\n", "12\n\n", "-7", "-", "1.5", "\n", "0\n1"])
def test_redis_text_payloads_that_look_like_counters_round_trip(
    redis_server: RedisServer, text: str
) -> None:
    prefix = f"s17:{uuid.uuid4().hex}:"
    cache = RedisCache(host=redis_server.host, port=redis_server.port, key_prefix=prefix)
    cache.serializer = Text()
    try:
        assert cache.set("k", text)
        assert cache.get("k") == text
        assert cache.get_many("k") == [text]
        if text.rstrip("\n").lstrip("-").isdigit():
            with pytest.raises(TypeError):
                cache.inc("k")
            assert cache.get("k") == text
    finally:
        cache.clear()
        cache.close()
