"""A pickled RedisCache (for a ``spawn`` child, a process pool) carries its options and connects
on its own in the copy: on a server with a password, a database and TLS, over a unix socket, and
on a Redis Cluster; a client or pool passed in cannot travel."""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import servers
from servers import RedisCluster, RedisServer
from tls_files import make_certificates, openssl, tls_server_config

from cacheplug import RedisCache, from_url

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60  # seconds for a spawned child to start, import and answer: a bound, not a timing
PASSWORD = "pickled-pa55word"


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    """A server of this file's own, asking for a password."""
    with RedisServer(password=PASSWORD) as server:
        yield server


def tenant_prefix() -> str:
    """A callable key_prefix, as cachelib allows: pickled by reference."""
    return "tenant-7:"


def connection_settings(cache: RedisCache) -> list[Any]:
    """The settings the connections of ``cache``'s clients are made with."""
    keys = ("host", "port", "db", "password", "username", "path", "socket_timeout")
    keys += ("socket_connect_timeout", "client_name", "ssl_ca_certs", "ssl_cert_reqs")
    settings = []
    for client in (cache._client, cache._once_client):
        pool = client.connection_pool
        given = pool.connection_kwargs
        options = {key: given.get(key) for key in keys}
        retries = client.get_retry()._retries
        settings.append((pool.connection_class.__name__, pool.max_connections, options, retries))
    return settings


# -- one server -----------------------------------------------------------------------------------


def test_a_copy_keeps_every_option_and_connects_on_its_own(locked_server: RedisServer) -> None:
    cache = RedisCache(
        locked_server.host,
        locked_server.port,
        password=PASSWORD,
        db=3,
        default_timeout=120,
        key_prefix=tenant_prefix,
        serializer="json",
        secret="s3cret",
        retries=2,
        dead_timeout=4.5,
        max_connections=7,
        socket_timeout=2.5,
        socket_connect_timeout=0.75,
        client_name="pickled",
    )
    assert cache.set("shared", [1, 2]) and cache.get("shared") == [1, 2]
    assert cache.inc("n") == 1

    clone = pickle.loads(pickle.dumps(cache))

    assert repr(clone) == repr(cache)
    assert PASSWORD not in repr(clone) and PASSWORD not in str(clone)
    assert clone.stats() == dict.fromkeys(cache.stats(), 0)
    assert (clone.default_timeout, clone.dead_timeout, clone.key_prefix) == (120, 4.5, "tenant-7:")
    assert clone._key_prefix is tenant_prefix
    assert connection_settings(clone) == connection_settings(cache)
    # connections and pools of its own
    assert clone._client.connection_pool is not cache._client.connection_pool
    assert clone._once_client.connection_pool is not cache._once_client.connection_pool
    # the same names, signature key and serializer: each reads what the other writes
    assert clone.get("shared") == [1, 2]
    assert clone.set("back", {"a": 1}) and cache.get("back") == {"a": 1}
    assert clone.inc("n") == 2 and cache.inc("n") == 3
    raw = redis.Redis(port=locked_server.port, password=PASSWORD, db=3)
    assert sorted(raw.keys()) == [b"tenant-7:back", b"tenant-7:n", b"tenant-7:shared"]
    names = {client["name"] for client in raw.client_list()}
    assert "pickled" in names  # client_name came along
    raw.close()
    unsigned = RedisCache(locked_server.host, locked_server.port, password=PASSWORD, db=3)
    unsigned.key_prefix = "tenant-7:"
    unsigned.serializer = clone.serializer
    assert unsigned.get("back") is None  # still signed: the secret came along
    for each in (cache, clone, unsigned):
        each.clear()
        each.close()


def test_copies_by_the_copy_module_connect_on_their_own(redis_server: RedisServer) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix="copied:")
    for clone in (copy.copy(cache), copy.deepcopy(cache)):
        assert clone._client is not cache._client
        assert clone._client.connection_pool is not cache._client.connection_pool
        assert clone.set("k", "v") and cache.get("k") == "v"
        clone.close()
    cache.clear()
    cache.close()


def test_a_copy_of_a_cache_built_from_a_url_keeps_its_credentials(
    locked_server: RedisServer,
) -> None:
    cache = from_url(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/2?key_prefix=url:")
    clone = pickle.loads(pickle.dumps(cache))
    assert PASSWORD not in repr(clone)
    assert clone.set("k", 1) and cache.get("k") == 1
    cache.clear()


def test_a_copy_taken_during_an_outage_connects_again(fresh_redis_server: RedisServer) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="down:", dead_timeout=600)
    fresh_redis_server.kill()
    assert cache.get("k") is None and cache.stats()["errors"] == 1  # now a dead server
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.stats()["errors"] == 0
    fresh_redis_server.restart()  # on the same port
    assert clone.set("k", "back") and clone.get("k") == "back"  # not waiting out the dead time
    assert cache.get("k") is None  # the original still is


def test_a_copy_over_tls_verifies_the_server_as_the_original(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    port = servers._free_port()
    with RedisServer(config=tls_server_config(certs, port)):
        cache = from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}&key_prefix=t:")
        assert cache.set("k", {"tls": True})
        clone = pickle.loads(pickle.dumps(cache))
        assert connection_settings(clone) == connection_settings(cache)
        assert clone._client.connection_pool.connection_class.__name__ == "SSLConnection"
        assert clone.get("k") == {"tls": True}
        clone.close()
        cache.close()


def test_a_copy_keeps_client_certificates_and_hides_their_passphrase(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    locked = str(tmp_path / "locked.key")
    passphrase = "key-pa55phrase"
    openssl(
        "pkey", "-in", certs["key"], "-aes256", "-passout", f"pass:{passphrase}", "-out", locked
    )
    options = {"ssl": True, "ssl_ca_certs": certs["ca"], "ssl_certfile": certs["cert"]}
    for keyfile, password in ((certs["key"], None), (locked, passphrase)):
        cache = RedisCache(port=6390, ssl_keyfile=keyfile, ssl_password=password, **options)
        clone = pickle.loads(pickle.dumps(cache))
        ours, theirs = (
            {k: v for k, v in c._client.connection_pool.connection_kwargs.items() if "ssl" in k}
            for c in (cache, clone)
        )
        # the stand-in refusing to ask a terminal for a passphrase came along, as a given one
        given, copied = ours.pop("ssl_password"), theirs.pop("ssl_password")
        if isinstance(given, functools.partial):
            given, copied = (given.func, given.args), (copied.func, copied.args)
        assert given == copied
        assert ours == theirs and theirs["ssl_keyfile"] == keyfile
        assert passphrase not in repr(clone)


def test_a_copy_over_a_unix_socket_uses_the_socket(redis_server: RedisServer) -> None:
    cache = RedisCache(unix_socket_path=redis_server.unix_socket, db=1, key_prefix="unix:")
    clone = pickle.loads(pickle.dumps(cache))
    assert repr(clone) == repr(cache) and "unix:" in repr(clone)
    assert connection_settings(clone) == connection_settings(cache)
    assert clone.set("k", "over the socket") and cache.get("k") == "over the socket"
    cache.clear()


# -- what cannot travel ------------------------------------------------------------------------


def test_a_client_passed_in_cannot_travel(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    cache = RedisCache(client)
    with pytest.raises(TypeError, match=r"client passed in as host \(Redis\).*host=, port="):
        pickle.dumps(cache)
    assert cache.set("still", "works") and cache.get("still") == "works"
    pool = redis.ConnectionPool(port=redis_server.port)
    pooled = RedisCache(connection_pool=pool)
    with pytest.raises(TypeError, match=r"connection_pool=.*max_connections="):
        pickle.dumps(pooled)
    client.close()
    pool.disconnect()


def test_an_option_that_cannot_be_pickled_is_named() -> None:
    cache = RedisCache(key_prefix=lambda: "x:")
    # pickle's own error names the cause: AttributeError up to 3.13, PicklingError on 3.14
    with pytest.raises(
        TypeError,
        match=r"whose key_prefix \(function\) cannot be pickled \((AttributeError|PicklingError): ",
    ):
        pickle.dumps(cache)
    cache.key_prefix = "plain:"  # the copy needs only what it can carry
    assert pickle.loads(pickle.dumps(cache)).key_prefix == "plain:"

    def connect(connection: redis.Connection) -> None:
        connection.on_connect()

    custom = RedisCache(redis_connect_func=connect)
    with pytest.raises(TypeError, match=r"whose redis_connect_func \(function\) cannot be"):
        pickle.dumps(custom)


# -- spawned children ------------------------------------------------------------------------------


def _child_uses_its_copy(cache: RedisCache, results: Any) -> None:
    got = cache.get("from parent")
    stored = cache.set("from child", {"pid": os.getpid()})
    results.put((got, stored, cache.inc("visits"), cache.get_many("from parent", "nothing")))
    results.put((cache.stats(), repr(cache)))


def run_child(cache: RedisCache) -> tuple[Any, Any, int | None]:
    """What a spawned child given ``cache`` reports, and its pid."""
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_child_uses_its_copy, args=(cache, results))
    child.start()
    try:
        first, second = results.get(timeout=WAIT), results.get(timeout=WAIT)
    finally:
        child.join(timeout=WAIT)
    assert child.exitcode == 0
    return first, second, child.pid


@pytest.mark.parametrize("where", ["tcp", "unix", "password", "cluster"])
def test_a_spawned_child_reads_and_writes_through_its_copy(
    where: str,
    redis_server: RedisServer,
    redis_cluster: RedisCluster,
    locked_server: RedisServer,
) -> None:
    options: dict[str, Any] = {"key_prefix": f"spawn-{where}:", "secret": "s3cret"}
    if where == "cluster":
        cache = RedisCache(startup_nodes=redis_cluster.nodes, **options)
    elif where == "unix":
        cache = RedisCache(unix_socket_path=redis_server.unix_socket, db=2, **options)
    elif where == "password":
        cache = RedisCache(port=locked_server.port, password=PASSWORD, **options)
    else:
        cache = RedisCache(port=redis_server.port, serializer="msgpack", **options)
    assert cache.set("from parent", ["hello"])
    assert cache.inc("visits") == 1
    first, (stats, shown), pid = run_child(cache)
    assert first == (["hello"], True, 2, [["hello"], None])
    assert stats == {
        "hits": 2,
        "misses": 1,
        "sets": 2,
        "deletes": 0,
        "errors": 0,
        "evictions": 0,
    }
    assert shown == repr(cache) and PASSWORD not in shown
    assert cache.get("from child") == {"pid": pid}
    assert cache.inc("visits") == 3
    assert cache.stats()["errors"] == 0
    cache.clear()
    cache.close()


def test_a_cluster_copy_builds_its_own_cluster_client(redis_cluster: RedisCluster) -> None:
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix="{c}:", socket_timeout=3)
    assert cache.set("k", 1)  # the original's client is built now
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._client is clone._pending  # connects on first use, as a new cache does
    assert repr(clone) == repr(cache)
    assert clone.get("k") == 1 and clone.set("j", 2) and cache.get("j") == 2
    assert clone._client is not cache._client
    ours = {node.name: node.redis_connection.connection_pool for node in cache._client.get_nodes()}
    for node in clone._client.get_nodes():
        pool = node.redis_connection.connection_pool
        assert pool is not ours.get(node.name)
        assert pool.connection_kwargs["socket_timeout"] == 3
    cache.clear()
    cache.close()
    clone.close()


def test_a_pickle_naming_the_tls_passphrase_refusal_where_it_was_still_loads() -> None:
    # a cache pickled with ssl_keyfile and no password holds this function by its module path
    from cacheplug.backends import _redis_tls

    old_path = b"ccacheplug.backends._redis_clients\n_no_passphrase\n."
    assert pickle.loads(old_path) is _redis_tls._no_passphrase
