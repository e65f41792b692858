"""SQLiteCache passes cacheplug's contract suite, and keeps what only a shared file promises."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from cacheplug_example.sqlite import SQLiteCache

from cacheplug import ConfigurationError, from_url
from cacheplug.testing import CacheContract, CacheFactory


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["pickle", "json", "msgpack", "zpickle"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestSQLiteCacheContract(CacheContract):
    shared_store = True

    @pytest.fixture
    def cache_factory(
        self, tmp_path: Path, clock: FakeClock, serializer: str
    ) -> Iterator[CacheFactory]:
        caches: list[SQLiteCache] = []

        def make(**kwargs: Any) -> SQLiteCache:
            kwargs.setdefault("serializer", serializer)
            kwargs.setdefault("busy_timeout", 0.01)  # a locked write fails in 10 ms, not 5 s
            cache = SQLiteCache(tmp_path / "cache.db", clock=clock, **kwargs)
            caches.append(cache)
            return cache

        yield make
        for cache in caches:
            cache.close()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance

    @pytest.fixture
    def write_outage(self, tmp_path: Path) -> Callable[[], AbstractContextManager[None]]:
        # WAL readers never block: another writer holding the lock fails exactly the writes
        @contextlib.contextmanager
        def locked_by_another_writer() -> Iterator[None]:
            other = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                other.execute("ROLLBACK")
                other.close()

        return locked_by_another_writer


def test_entries_survive_reopening_the_file(tmp_path: Path) -> None:
    with SQLiteCache(tmp_path / "cache.db") as first:
        first.set("key", {"kept": True}, timeout=0)
    with SQLiteCache(tmp_path / "cache.db") as second:
        assert second.get("key") == {"kept": True}


def test_counter_keeps_its_expiry(tmp_path: Path, clock: FakeClock) -> None:
    cache = SQLiteCache(tmp_path / "cache.db", clock=clock)
    cache.set("n", 1, timeout=10)
    clock.advance(8)
    assert cache.inc("n") == 2
    clock.advance(3)
    assert cache.get("n") is None


def test_closed_database_answers_like_an_outage(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.db")
    cache.set("key", "v")
    cache.close()
    assert cache.get("key") is None
    assert cache.set("key", "w") is False
    assert cache.inc("n") is None
    assert cache.stats()["errors"] == 3


def test_url_selects_file_serializer_and_options(tmp_path: Path) -> None:
    path = tmp_path / "url.db"
    cache = from_url(f"sqlite://{path}?serializer=zpickle&busy_timeout=0.5&key_prefix=app:")
    assert isinstance(cache, SQLiteCache)
    assert cache.path == str(path)
    assert type(cache.serializer).__name__ == "ZlibPickleSerializer"
    cache.set("key", [1, 2])
    assert SQLiteCache(path).get("app:key") is None  # other serializer reads it as a miss
    assert SQLiteCache(path, serializer="zpickle").get("app:key") == [1, 2]


def test_memory_url_is_private_to_the_instance() -> None:
    first, second = from_url("sqlite://"), from_url("sqlite://")
    first.set("key", "v")
    assert (first.get("key"), second.get("key")) == ("v", None)


def test_url_with_a_host_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="takes a file path, not a host"):
        from_url("sqlite://cache.db")
