"""MemcachedCache against the contract and SimpleCache, where it raised or differed: a reassigned
``default_timeout``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import address, server_ttl

from cacheplug import MemcachedCache, SimpleCache
from cacheplug.backends._memcached_keys import memcached_key


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> MemcachedCache:
    made = MemcachedCache([address(memcached_server)])
    made.clear()
    return made


def test_a_reassigned_timedelta_default_timeout_counts_as_its_seconds(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    reference = SimpleCache()
    for made in (cache, reference):
        made.default_timeout = timedelta(minutes=2)  # type: ignore[assignment]
        assert made.default_timeout == 120
    assert cache.set("d", "v") is True
    assert cache.get("d") == "v"
    assert 110 <= server_ttl(memcached_server, memcached_key("d")) <= 120


@pytest.mark.parametrize("given", ["60", None, float("nan"), float("inf"), True, [1]])
def test_a_reassigned_default_timeout_that_is_no_seconds_raises_at_once(
    cache: MemcachedCache, given: Any
) -> None:
    for made in (cache, SimpleCache()):
        made.default_timeout = 45
        with pytest.raises(TypeError, match=r"default_timeout must be a finite number"):
            made.default_timeout = given
        assert made.default_timeout == 45  # the value stays as it was
        assert made.set("k", "v") is True
        assert made.get("k") == "v"
