"""RedisCache's batches under large calls, short socket timeouts and values Redis refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import RedisCluster, RedisServer

from cacheplug import RedisCache

LONG_NAMES = 100_000
NAME_LENGTH = 1000  # 100 MB of names: one MGET of them takes Redis about 0.3 s to read
SHORT_TIMEOUT = 0.1


@pytest.fixture(params=["tcp", "unix", "unicode", "cluster"])
def short_timeout_cache(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_cluster: RedisCluster
) -> Iterator[tuple[RedisCache, str]]:
    """A cache whose socket timeout is shorter than one MGET of ``LONG_NAMES`` names, and the
    first character of its keys (non-ASCII keys take redis-py's packing)."""
    kind = request.param
    first = "é" if kind == "unicode" else "k"
    if kind == "cluster":
        cache = RedisCache(startup_nodes=redis_cluster.nodes, socket_timeout=SHORT_TIMEOUT)
    elif kind == "unix":
        cache = RedisCache(unix_socket_path=redis_server.unix_socket, socket_timeout=SHORT_TIMEOUT)
    else:
        cache = RedisCache(port=redis_server.port, socket_timeout=SHORT_TIMEOUT)
    cache.key_prefix = "{batch}:"  # one hash slot on a cluster: one node reads every name
    yield cache, first
    cache.clear()
    cache.close()


def test_get_many_of_more_names_than_one_timeout_reads_leaves_the_server_up(
    short_timeout_cache: tuple[RedisCache, str],
) -> None:
    cache, first = short_timeout_cache
    keys = [first + f"{i:0{NAME_LENGTH - 1}d}" for i in range(LONG_NAMES)]
    stored = {keys[0]: "first", keys[LONG_NAMES // 2]: 2, keys[-1]: b"last"}
    assert sorted(cache.set_many(stored)) == sorted(stored)
    values = cache.get_many(*keys)
    assert cache.stats()["errors"] == 0
    assert [(i, v) for i, v in enumerate(values) if v is not None] == [
        (0, "first"),
        (LONG_NAMES // 2, 2),
        (LONG_NAMES - 1, b"last"),
    ]
    assert cache.stats()["hits"] == 3
    assert cache.stats()["misses"] == LONG_NAMES - 3
    assert cache.get(keys[-1]) == b"last"  # not taken for a server that is down
