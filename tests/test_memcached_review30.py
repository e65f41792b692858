"""MemcachedCache where review 30 found it differing from cachelib's ``MemcachedCache`` or
from its own annotations."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import cachelib
import pytest
from servers import MemcachedServer
from test_memcached import address
from test_memcached_faults import ReplyDroppingProxy

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


class FlaglessMetaGetRefusingRelay(ReplyDroppingProxy):
    """A TCP relay to a memcached server that answers an ``mg`` without flags as memcached
    releases before the fix of memcached/memcached#906 do (some 1.6 ones before 1.6.18):
    ``CLIENT_ERROR bad command line format``. The real server gives that answer, in order,
    to the request rewritten with a key too long for it."""

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        super()._relay(client, _Refusing(upstream))  # type: ignore[arg-type]


class _Refusing:
    """A socket to memcached whose flagless meta gets it refuses (see the relay above)."""

    _FLAGLESS = re.compile(rb"(?m)^mg \S+\r\n")
    _REFUSED = b"mg " + b"k" * 251 + b"\r\n"

    def __init__(self, upstream: socket.socket) -> None:
        self._upstream = upstream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upstream, name)

    def sendall(self, data: bytes) -> None:
        self._upstream.sendall(self._FLAGLESS.sub(self._REFUSED, data))

    def __enter__(self) -> _Refusing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._upstream.close()


@pytest.fixture
def refusing_relay(memcached_server: MemcachedServer) -> Iterator[FlaglessMetaGetRefusingRelay]:
    relay = FlaglessMetaGetRefusingRelay(memcached_server.address)
    yield relay
    relay.close()


@pytest.mark.parametrize("prefix", [None, "has:"])
def test_has_works_on_servers_that_refuse_a_meta_get_without_flags(
    refusing_relay: FlaglessMetaGetRefusingRelay, prefix: str | None
) -> None:
    cache = MemcachedCache([f"127.0.0.1:{refusing_relay.port}"], key_prefix=prefix)
    assert cache.set("there", "v") is True
    assert cache.set("counter", 5) is True
    assert (cache.has("there"), cache.has("counter"), cache.has("missing")) == (True, True, False)
    assert cache.inc("counter") == 6  # its meta get has a flag: it always worked
    assert cache.stats()["errors"] == 0
    cache.close()


@pytest.mark.parametrize("spec", ["/tmp/memcached\x00.sock", "unix:/tmp/m\x00"])
def test_a_socket_path_holding_a_nul_byte_is_refused(spec: str) -> None:
    # the kernel would connect to the path cut at the NUL: every call an outage
    with pytest.raises(ConfigurationError, match="invalid memcached server"):
        MemcachedCache([spec])


def test_a_copy_pickled_before_check_connection_was_kept_reads_it_as_false(
    memcached_server: MemcachedServer,
) -> None:
    import pickle

    cache = MemcachedCache([address(memcached_server)])
    del cache.__dict__["check_connection"]  # as a cache pickled by the previous release
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.check_connection is False
    assert copy.set("k", 1) is True and copy.get("k") == 1
