"""Hostile keys on every backend: unicode, very long, control characters, spaces, empty.

Every key either works (set, get, has, delete round-trip, and never collides with another key)
or is refused with a TypeError naming the problem. Nothing else may happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheplug import BaseCache, SimpleCache, from_url

BACKENDS = ["simple", "file", "redis", "redis-cluster", "memcached"]

hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=300
)
hostile_keys = (
    hostile_text
    | st.text(alphabet=" \t\r\n\x00\x7f", min_size=1, max_size=10)
    | st.integers(0, 2000).map(lambda n: "k" * n)
)


@pytest.fixture(scope="module", params=BACKENDS)
def any_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BaseCache]:
    name = request.param
    if name == "simple":
        cache: BaseCache = SimpleCache(threshold=100_000)
    elif name == "file":
        directory: Path = tmp_path_factory.mktemp("hostile")
        cache = from_url(f"file://{directory}?threshold=100000")
    elif name == "redis":
        server: Any = request.getfixturevalue("redis_server")
        cache = from_url(server.url, key_prefix="hostile:")
    elif name == "redis-cluster":
        cluster: Any = request.getfixturevalue("redis_cluster")
        cache = from_url(cluster.url, key_prefix="hostile:")
    else:
        memcached: Any = request.getfixturevalue("memcached_server")
        cache = from_url(memcached.url, key_prefix="hostile:")
    yield cache
    cache.clear()
    cache.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(keys=st.lists(hostile_keys, min_size=1, max_size=4, unique=True))
def test_hostile_keys_work_or_are_refused_clearly(any_cache: BaseCache, keys: list[str]) -> None:
    stored = {}
    for n, key in enumerate(keys):
        try:
            ok = any_cache.set(key, {"n": n, "key": key})
        except TypeError as err:
            assert "key" in str(err)
            continue
        assert ok is True
        stored[key] = n
    for key, n in stored.items():
        assert any_cache.get(key) == {"n": n, "key": key}
        assert any_cache.has(key) is True
    for key in stored:
        assert any_cache.delete(key) is True
        assert any_cache.get(key) is None


@pytest.mark.parametrize("key", [b"bytes", 1, None, ("tuple",)], ids=repr)
def test_non_str_keys_are_refused_everywhere(any_cache: BaseCache, key: Any) -> None:
    with pytest.raises(TypeError, match="key must be str"):
        any_cache.set(key, 1)
    with pytest.raises(TypeError, match="key must be str"):
        any_cache.get(key)
