"""Options in seconds (socket timeouts, dead_timeout, lock_timeout) are checked when the cache is
built, by keyword and in a URL: a value the socket module or a clock would choke on later must
not reach the first call, where it would escape the outage handling as a ValueError or an
OverflowError from inside the driver."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from servers import MemcachedServer, RedisServer

from cacheplug import ConfigurationError, FileSystemCache, MemcachedCache, RedisCache, from_url

NOT_SECONDS = [math.nan, math.inf, -math.inf, -1, True, "1", 10**400]
# (option, values refused besides NOT_SECONDS, values accepted)
REDIS = [
    ("socket_timeout", [0, 0.0, 1e10], [0.001, 2, 1e9, None]),
    ("socket_connect_timeout", [0, 1e10], [0.5, 1e9, None]),
    ("dead_timeout", [None, -0.5], [0, 0.0, 3]),
]
MEMCACHED = [
    ("timeout", [0, 0.0005, 1e10, None], [0.001, 1, 1e9]),
    ("connect_timeout", [0, 1e10, None], [0.001, 2.5, 1e9]),
    ("dead_timeout", [None, -0.5], [0, 0.0, 3]),
]
FILESYSTEM = [("lock_timeout", [0, 0.0, -0.5], [0.001, 5, 1e12, None])]


TABLES = {"redis": REDIS, "memcached": MEMCACHED, "file": FILESYSTEM}
TIGHT = 0.05  # seconds: a socket timeout below it may run out on a loaded machine
#: What set, get, inc and delete answer, and what they answer in an outage.
RIGHT = (True, {"n": 1}, 2, True)
OUTAGE = (False, None, None, False)


def cases(refused: bool) -> list[Any]:
    """``(backend, option, value)`` of every value refused, or of every value taken."""
    return [
        pytest.param(backend, name, value, id=f"{backend}-{name}={value!r:.12}")
        for backend, table in TABLES.items()
        for name, bad, good in table
        for value in (NOT_SECONDS + bad if refused else good)
    ]


@pytest.fixture
def redis_cache(redis_server: RedisServer) -> Callable[..., RedisCache]:
    return lambda **options: RedisCache(port=redis_server.port, **options)


@pytest.fixture
def memcached_cache(memcached_server: MemcachedServer) -> Callable[..., MemcachedCache]:
    where = f"{memcached_server.host}:{memcached_server.port}"
    return lambda **options: MemcachedCache([where], **options)


@pytest.fixture
def file_cache(tmp_path: pathlib.Path) -> Callable[..., FileSystemCache]:
    return lambda **options: FileSystemCache(tmp_path / "store", **options)


@pytest.mark.parametrize(("backend", "name", "value"), cases(refused=True))
def test_bad_seconds_are_refused_when_the_cache_is_built(
    request: pytest.FixtureRequest, backend: str, name: str, value: Any
) -> None:
    make = request.getfixturevalue(f"{backend}_cache")
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a number of seconds") as info:
        make(**{name: value})
    assert str(info.value).endswith(f"got {value!r}")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("backend", "name", "value"), cases(refused=False))
def test_good_seconds_make_a_cache_whose_calls_work(
    request: pytest.FixtureRequest, backend: str, name: str, value: Any
) -> None:
    cache = request.getfixturevalue(f"{backend}_cache")(**{name: value})
    try:
        answers = (
            cache.set("seconds", {"n": 1}),
            cache.get("seconds"),
            cache.inc("counted", 2),
            cache.delete("seconds"),
        )
        if name != "lock_timeout" and value is not None and value < TIGHT:
            # a loaded machine can take longer than that for a round trip: then the calls
            # answer as in an outage, but never raise
            assert all(
                answer in (right, outage)
                for answer, right, outage in zip(answers, RIGHT, OUTAGE, strict=True)
            ), answers
        else:
            assert answers == RIGHT
            assert cache.stats()["errors"] == 0
    finally:
        cache.clear()
        cache.close()


def test_a_refused_reassignment_keeps_the_lock_timeout(file_cache: Callable[..., Any]) -> None:
    cache = file_cache(lock_timeout=2)
    with pytest.raises(ConfigurationError, match="or None to wait as long as"):
        cache.lock_timeout = math.nan
    assert cache.lock_timeout == 2.0


def test_the_message_says_what_none_means() -> None:
    with pytest.raises(ConfigurationError, match=r"> 0 and <= 1e\+09, or None to wait without"):
        RedisCache(socket_timeout=-1)


@pytest.mark.parametrize(
    "query",
    [
        "socket_timeout=-1",
        "socket_timeout=0",
        "socket_connect_timeout=-0.5",
        "socket_timeout=1e10",
        "dead_timeout=-1",
    ],
)
def test_redis_urls_refuse_bad_seconds(redis_server: RedisServer, query: str) -> None:
    name = query.partition("=")[0]
    with pytest.raises(ConfigurationError, match=rf"{name} must be a number of seconds"):
        from_url(f"redis://127.0.0.1:{redis_server.port}/0?{query}")


@pytest.mark.parametrize("query", ["timeout=0", "connect_timeout=1e10", "dead_timeout=-2"])
def test_memcached_urls_refuse_bad_seconds(memcached_server: MemcachedServer, query: str) -> None:
    name = query.partition("=")[0]
    with pytest.raises(ConfigurationError, match=rf"{name} must be a number of seconds"):
        from_url(f"memcached://127.0.0.1:{memcached_server.port}?{query}")


def test_file_urls_refuse_bad_seconds(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigurationError, match="lock_timeout must be a number of seconds > 0"):
        from_url(f"file://{tmp_path}?lock_timeout=-1")
