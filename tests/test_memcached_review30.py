"""MemcachedCache where review 30 found it differing from cachelib's ``MemcachedCache`` or
from its own annotations."""

from __future__ import annotations

from typing import Any

import cachelib
import pytest
from servers import MemcachedServer
from test_memcached import address

from cacheplug import ConfigurationError, MemcachedCache


@pytest.mark.parametrize("check", [False, True])
def test_check_connection_is_kept_as_an_attribute_as_cachelib_keeps_it(
    memcached_server: MemcachedServer, check: bool
) -> None:
    servers = [address(memcached_server)]
    ours = MemcachedCache(servers, check_connection=check)
    theirs = cachelib.MemcachedCache(servers, check_connection=check)
    assert ours.check_connection is theirs.check_connection is check
    assert MemcachedCache(servers).check_connection is False


@pytest.mark.parametrize(
    "collect",
    [set, frozenset, lambda addresses: (a for a in addresses), lambda a: dict.fromkeys(a).keys()],
    ids=["set", "frozenset", "generator", "dict_keys"],
)
def test_servers_may_be_any_iterable_of_addresses_as_annotated(
    memcached_pair: list[MemcachedServer], collect: Any
) -> None:
    addresses = [address(server) for server in memcached_pair]
    cache = MemcachedCache(collect(addresses), key_prefix="iterable:")
    listed = MemcachedCache(addresses, key_prefix="iterable:")
    keys = [f"k{number}" for number in range(20)]
    assert cache.set_many(dict.fromkeys(keys, 7)) == keys
    assert listed.get_many(*keys) == [7] * len(keys)  # the same servers, the same placement
    assert sorted(server.name for server in cache._servers) == sorted(addresses)


def test_a_ready_client_is_still_refused() -> None:
    from pymemcache.client.base import Client

    with pytest.raises(ConfigurationError, match=r"cannot use a ready client"):
        MemcachedCache(Client(("127.0.0.1", 11211)))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"cannot use a ready client"):
        MemcachedCache(b"127.0.0.1:11211")  # type: ignore[arg-type]
