"""How MemcachedCache reads its ``servers``: python-memcached's forms, which cachelib users
write, and the spellings that could never reach a server."""

from __future__ import annotations

import collections

import cachelib
import pytest
from servers import MemcachedServer

from cacheplug import ConfigurationError, MemcachedCache


def test_a_weighted_server_as_cachelib_takes_it_works(memcached_server: MemcachedServer) -> None:
    """python-memcached (cachelib's client) takes ``("host:port", weight)``; it used to be
    read as host "host:port" on port ``weight``: every call an outage, forever."""
    spec = (f"127.0.0.1:{memcached_server.port}", 1)
    theirs = cachelib.MemcachedCache([spec], key_prefix="specs:")
    assert theirs.set("k", [1, 2]) is True
    assert theirs.get("k") == [1, 2]
    with MemcachedCache([spec], key_prefix="specs:") as ours:
        assert ours.set("k", [1, 2]) is True
        assert ours.get("k") == [1, 2]
        assert ours.stats()["errors"] == 0
        ours.clear()


def test_weights_share_the_keys_and_weight_one_moves_none(
    memcached_pair: list[MemcachedServer],
) -> None:
    a, b = (f"127.0.0.1:{server.port}" for server in memcached_pair)
    keys = [f"user:{i}" for i in range(4000)]

    def placement(servers: list[object]) -> list[str]:
        with MemcachedCache(servers) as cache:  # type: ignore[arg-type]
            return [cache._server(key, None).name for key in keys]

    plain = placement([a, b])
    assert placement([(a, 1), (b, 1)]) == plain
    weighted = placement([(a, 3), (b, 1)])
    share = collections.Counter(weighted)[a] / len(keys)
    assert 0.68 < share < 0.82, share  # 3 of 4, about
    # a key moves only onto the heavier server
    assert all(after == a for before, after in zip(plain, weighted, strict=True) if before != after)
    # listed twice, a server weighs twice
    assert placement([a, f" {a} ", b]) == placement([(a, 2), (b, 1)])
    with MemcachedCache([(a, 3), (b, 1)], key_prefix="specs:") as cache:
        values = {key: key.upper() for key in keys[:200]}
        assert cache.set_many(values) == list(values)
        assert cache.get_many(*values) == list(values.values())
        cache.clear()


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("inet:cache.local:11300", ("cache.local", 11300)),
        ("inet6:[::1]:11300", ("::1", 11300)),
        (("[::1]", 11300), ("::1", 11300)),
        (("unix:/run/memcached.sock", 2), "/run/memcached.sock"),
        (("[::1]:11300", 1), ("::1", 11300)),
    ],
)
def test_python_memcached_spellings_name_their_server(spec: object, address: object) -> None:
    with MemcachedCache([spec]) as cache:  # type: ignore[list-item]
        assert [server.address for server in cache._servers] == [address]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (("cache:11211", 0), "weight of 'cache:11211' must be an int from 1 to 100, got 0"),
        (("cache:11211", 1000), "from 1 to 100, got 1000"),
        ("127.0.0.1 :11211", "invalid memcached server '127.0.0.1 :11211'"),
        (("127.0.0.1 ", 11211), "invalid memcached server"),
        (("ca che", 11211), "invalid memcached server"),
        (("[cache]", 11211), "invalid memcached server"),
        ("cache/a:11211", "invalid memcached server"),
    ],
)
def test_server_spellings_no_resolver_could_look_up_are_refused(spec: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(").replace("[", r"\[")):
        MemcachedCache([spec])  # type: ignore[list-item]
