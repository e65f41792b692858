"""RedisCache review 31: clients a subclass assigns (as Flask-Caching's ``RedisSentinelCache``
does) take the place of those the cache built, which close their connections, and win over a
thread putting back a client it held from before; cachelib's ``_get_prefix`` for subclasses."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from flask_caching.backends.rediscache import RedisCache as FlaskCachingRedisCache
from redis.credentials import CredentialProvider
from servers import RedisCluster, RedisServer
from waiting import paused_process, wait_until

from cacheplug import ConfigurationError, RedisCache

WAIT = 10.0  # seconds a step may take on a loaded machine before the test fails


def client_names(server: RedisServer) -> list[str]:
    """The names of the clients connected to ``server``, ours (named) only."""
    listed = bytes(server.command("CLIENT", "LIST")).decode()  # type: ignore[arg-type]
    names = [
        field[5:] for line in listed.splitlines() for field in line.split() if field[:5] == "name="
    ]
    return sorted(name for name in names if name)


def test_a_built_cluster_client_replaced_by_an_assigned_one_closes_its_connections(
    redis_cluster: RedisCluster, redis_server: RedisServer
) -> None:
    # The cluster client the cache built stayed connected as long as the cache lived: it is
    # held apart from the cache, to close it when the cache is dropped. (A single server's
    # clients are closed by redis-py once nothing holds them, see the next test.)
    cache = RedisCache(
        startup_nodes=redis_cluster.nodes, key_prefix="r31a:", client_name="r31-cluster-built"
    )
    assert cache.set("k", 1) is True

    def connected() -> int:
        return sum(client_names(node).count("r31-cluster-built") for node in redis_cluster.servers)

    assert connected() >= 1
    mine = redis.Redis(port=redis_server.port)
    cache._write_client = mine
    assert cache.set("k", 2) is True and mine.get("r31a:k") == b"2"
    wait_until(lambda: connected() == 0, WAIT)
    mine.close()


def test_a_call_in_flight_at_the_replacement_keeps_its_connection_until_it_gives_it_back(
    redis_server: RedisServer,
) -> None:
    # The call holds the client the cache built: its connections stayed open as long as it did.
    cache = RedisCache(port=redis_server.port, key_prefix="r31b:", client_name="r31-back")
    built = cache._write_client
    held = built.connection_pool.get_connection()  # taken by a call still running
    mine = redis.Redis(port=redis_server.port)
    cache._write_client = mine
    held.send_command("PING")  # not cut under the call
    assert held.read_response() in (b"PONG", "PONG")
    built.connection_pool.release(held)
    wait_until(lambda: "r31-back" not in client_names(redis_server), WAIT)
    assert built.get("r31b:gone") is None  # a late call on the old client still works
    wait_until(lambda: "r31-back" not in client_names(redis_server), WAIT)
    mine.close()


def test_clients_the_cache_was_given_stay_open_when_another_is_assigned(
    redis_server: RedisServer,
) -> None:
    given = redis.Redis(port=redis_server.port, client_name="r31-given")
    pool = redis.ConnectionPool(port=redis_server.port, client_name="r31-pool")
    on_pool = RedisCache(connection_pool=pool, key_prefix="r31c:")
    cache = RedisCache(given, key_prefix="r31c:")
    assert cache.set("k", 1) is True and on_pool.get("k") == 1
    other = redis.Redis(port=redis_server.port)
    cache._write_client = other
    on_pool._write_client = other
    for kept in (given.connection_pool, pool):
        assert [c._sock is not None for c in kept._available_connections] == [True]
    assert given.get("r31c:k") == b"1"
    # assigned its own client again: it keeps working on it
    again = RedisCache(port=redis_server.port, key_prefix="r31c:")
    again._write_client = again._write_client
    assert again.get("k") == 1 and again.set("k", 2) is True and again.inc("k") == 3
    for client in (given, other):
        client.close()
    pool.disconnect()


class _PingHeld(redis.Redis):
    """A client whose next ``ping`` (the probe of a server back from its dead time) waits
    until the test lets it go: the point where a thread holds the old client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinging = threading.Event()
        self.go = threading.Event()

    def ping(self, **kwargs: Any) -> Any:
        self.pinging.set()
        self.go.wait(WAIT)
        return super().ping(**kwargs)


@pytest.mark.parametrize("attribute", ["_write_client", "_read_client"])
def test_a_client_assigned_while_the_old_one_stands_aside_is_not_undone(
    attribute: str, fresh_redis_server: RedisServer, redis_server: RedisServer
) -> None:
    # A thread that read the stand-in before the assignment probed the old server once its
    # dead time was over and put the old client back over the one just assigned.
    old = _PingHeld(port=fresh_redis_server.port, socket_timeout=0.3)
    cache = RedisCache(port=redis_server.port, key_prefix="r31d:", dead_timeout=0.05)
    setattr(cache, attribute, old)
    assert fresh_redis_server.pid is not None
    with paused_process(fresh_redis_server.pid):
        assert cache.get("k") is None  # the old server times out: its client stands aside
    held = threading.Thread(
        target=lambda: wait_until(lambda: cache.get("k") or old.pinging.is_set())
    )
    held.start()
    assert old.pinging.wait(WAIT)
    new = redis.Redis(port=redis_server.port)
    setattr(cache, attribute, new)
    old.go.set()
    held.join(WAIT)
    assert not held.is_alive()
    assert getattr(cache, attribute) is new
    assert cache.set("k", "new") is True
    assert cache.get("k") == "new"
    assert redis.Redis(port=fresh_redis_server.port).get("r31d:k") is None
    new.close()


class _HeldLogin(CredentialProvider):
    """Asked as each connection logs in: the first waits until the test lets it go."""

    def __init__(self) -> None:
        self.connecting = threading.Event()
        self.go = threading.Event()

    def get_credentials(self) -> tuple[str, str]:
        self.connecting.set()
        self.go.wait(WAIT)
        return ("default", "any")  # the default user takes any password


@pytest.mark.parametrize("aside", [False, True], ids=["up", "standing-aside"])
def test_a_cluster_client_connecting_while_another_is_assigned_does_not_take_its_place(
    aside: bool,
    redis_cluster: RedisCluster,
    redis_server: RedisServer,
    fresh_redis_server: RedisServer,
) -> None:
    # The first call's thread built the cluster client and set it over the one assigned.
    # standing-aside: the assigned client's server failed meanwhile; asked for its pools, its
    # stand-in raised ServerDown into the first call, which failed as an outage.
    login = _HeldLogin()
    cache = RedisCache(
        startup_nodes=redis_cluster.nodes,
        key_prefix="r31e:",
        credential_provider=login,
        client_name="r31-cluster",
        dead_timeout=60,
    )
    first = threading.Thread(target=lambda: cache.get("k"))
    first.start()
    assert login.connecting.wait(WAIT)
    server = fresh_redis_server if aside else redis_server
    mine = redis.Redis(port=server.port, socket_timeout=0.3)
    cache._write_client = mine
    if aside:
        assert server.pid is not None
        with paused_process(server.pid):
            assert cache.set("k", 0) is False  # its client stands aside
    errors = cache.stats()["errors"]
    login.go.set()
    first.join(WAIT)
    assert not first.is_alive()
    assert cache.stats()["errors"] == errors  # the first call ran on the cluster client
    assert cache._write_client is mine
    if not aside:
        assert cache.set("k", 1) is True and mine.get("r31e:k") == b"1"
    wait_until(
        lambda: all("r31-cluster" not in client_names(node) for node in redis_cluster.servers),
        WAIT,
    )
    mine.close()


def test_flask_cachings_unlink_reaches_the_prefixed_keys(redis_server: RedisServer) -> None:
    # Flask-Caching's RedisCache.unlink prefixes its keys with cachelib's private _get_prefix.
    class Unlinking(RedisCache):
        unlink = FlaskCachingRedisCache.unlink

    for prefix in ("r31f:", lambda: "r31f:"):
        cache = Unlinking(port=redis_server.port, key_prefix=prefix)
        assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        assert cache._get_prefix() == "r31f:"
        assert cache.unlink("a", "b") == 2
        assert cache.get_many("a", "b") == [None, None]


@pytest.mark.parametrize("keyword", ["connection_class", "connection_pool_class", "timeout"])
def test_a_cluster_refuses_the_keywords_its_nodes_cannot_take(
    keyword: str, redis_cluster: RedisCluster
) -> None:
    # redis-py's RedisCluster hands them to each node's redis.Redis, which takes none of them:
    # the cache was built, and every call failed as an outage.
    values = {"connection_class": redis.Connection, "connection_pool_class": redis.ConnectionPool}
    with pytest.raises(ConfigurationError, match=f"unknown keyword '{keyword}'"):
        RedisCache(startup_nodes=redis_cluster.nodes, **{keyword: values.get(keyword, 5)})
    fitting = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix="r31h:", client_name="ok")
    assert fitting.set("k", 1) is True
    fitting.close()
