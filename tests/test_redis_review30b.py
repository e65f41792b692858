"""RedisCache review 30b: subclasses written for cachelib that assign ``_write_client`` and
``_read_client`` (as Flask-Caching's ``RedisSentinelCache`` does) get a cache on those
clients."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.credentials import UsernamePasswordCredentialProvider
from redis.retry import Retry
from servers import RedisCluster, RedisServer
from test_redis_review import _messages

from cacheplug import ConfigurationError, RedisCache


class ReplicaReadingCache(RedisCache):
    """Flask-Caching's ``RedisSentinelCache`` shape: the parent built on the primary's client,
    then the replica's client assigned for the reads."""

    def __init__(self, write_client: Any, read_client: Any, **kwargs: Any) -> None:
        super().__init__(host=write_client, **kwargs)
        self._read_client = read_client


class MovedCache(RedisCache):
    """A cachelib-style subclass that builds its parent on a name, then gives its own client."""

    def __init__(self, port: int, client: Any) -> None:
        super().__init__("localhost", port, key_prefix="moved:")
        self._write_client = self._read_client = client


@pytest.fixture
def reader() -> Any:
    with RedisServer() as server:
        yield server


def test_a_subclass_assigning_a_read_client_reads_there_and_writes_on_the_other(
    redis_server: RedisServer, reader: RedisServer
) -> None:
    # cacheplug's _read_client was a read-only property: such a subclass failed with
    # AttributeError at construction.
    primary = redis.Redis(port=redis_server.port)
    replica = redis.Redis(port=reader.port)
    cache = ReplicaReadingCache(primary, replica, key_prefix="r30b:")
    assert cache._write_client is primary and cache._read_client is replica
    assert cache.set("k", {"v": 1}) is True
    assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
    assert cache.inc("n") == 1
    assert primary.exists("r30b:k", "r30b:a", "r30b:n") == 3
    assert cache.get("k") is None and cache.has("k") is False  # not yet on the "replica"
    assert cache.get_many("k", "a") == [None, None]
    for name in ("r30b:k", "r30b:a"):
        replica.set(name, primary.get(name))  # type: ignore[arg-type]
    assert cache.get("k") == {"v": 1} and cache.has("k") is True
    assert cache.get_many("k", "a", "b") == [{"v": 1}, 1, None]
    keys = [f"m{i}" for i in range(1500)]  # past one MGET: sent in pieces, on the replica
    assert cache.get_many(*keys) == [None] * len(keys)
    assert cache.delete("k") is True and primary.exists("r30b:k") == 0
    cache._read_client = primary  # the write client again: reads follow it
    assert cache.get("b") == 2
    cache.close()
    assert replica.ping() is True


def test_a_subclass_assigning_its_own_client_uses_it_for_everything(
    redis_server: RedisServer, reader: RedisServer
) -> None:
    other = redis.Redis(port=reader.port)
    cache = MovedCache(redis_server.port, other)
    assert cache.set("k", "v") is True and cache.get("k") == "v"
    assert cache.inc("n", 5) == 5 and cache.add("k", "w") is False
    assert other.get("moved:n") == b"5"
    assert redis.Redis(port=redis_server.port).exists("moved:k", "moved:n") == 0
    assert cache.clear() is True and other.exists("moved:k") == 0
    assert "client Redis" in repr(cache)
    with pytest.raises(TypeError, match="assigned to its _write_client or _read_client"):
        pickle.dumps(cache)  # its connections stay in this process, as with host=client
    cache.close()
    assert other.ping() is True  # a client of the user's stays open


def test_a_dead_read_client_fails_only_the_reads(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    replica_server = RedisServer().start()
    cache = ReplicaReadingCache(
        redis.Redis(port=redis_server.port),
        # redis-py's own retries would only slow the test
        redis.Redis(port=replica_server.port, retry=Retry(NoBackoff(), 0)),
        key_prefix="r30b-dead:",
        dead_timeout=60,
    )
    replica_server.kill()
    replica_server.stop()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.get("k") is None
        assert "ConnectionError" in _messages(cache, caplog)[0]
        assert cache.get_many("k", "j") == [None, None]
        assert "ServerDown" in _messages(cache, caplog)[0]  # stood aside: not asked again
        assert cache.has("k") is False
        assert "ServerDown" in _messages(cache, caplog)[0]
    assert cache.stats()["errors"] == 3
    assert cache.set("k", 1) is True  # the primary's client was not put aside
    assert cache.inc("k") == 2


def test_a_read_client_of_a_forked_child_works(
    redis_server: RedisServer, reader: RedisServer
) -> None:
    cache = ReplicaReadingCache(
        redis.Redis(port=redis_server.port), redis.Redis(port=reader.port), key_prefix="r30b-f:"
    )
    redis.Redis(port=reader.port).set("r30b-f:k", b"7")
    assert cache.get("k") == 7  # the replica's pool has a connection of the parent's
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's exit status says)
        os._exit(0 if cache.get("k") == 7 and cache.set("j", 1) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_what_cannot_be_assigned_is_refused_with_what_to_do(
    redis_server: RedisServer, redis_cluster: RedisCluster
) -> None:
    cache = RedisCache(port=redis_server.port)
    with pytest.raises(TypeError, match=r"_read_client takes a redis-py client, got str"):
        cache._read_client = "localhost"
    with pytest.raises(TypeError, match=r"_write_client takes a redis-py client, got NoneType"):
        cache._write_client = None
    with pytest.raises(ConfigurationError, match="decode_responses"):
        cache._read_client = redis.Redis(port=redis_server.port, decode_responses=True)
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in redis_cluster.nodes]
    clustered = redis.RedisCluster(startup_nodes=nodes)
    with pytest.raises(TypeError, match="read_from_replicas=True"):
        cache._read_client = clustered
    on_cluster = RedisCache(clustered, key_prefix="{r30b}:")
    with pytest.raises(TypeError, match="assign one RedisCluster to both"):
        on_cluster._read_client = redis.Redis(port=redis_server.port)
    on_cluster._write_client = on_cluster._read_client = clustered  # the same: fine
    assert on_cluster.set("k", 1) is True and on_cluster.get("k") == 1
    assert cache.set("k", 2) is True and cache.get("k") == 2  # unchanged by the refusals
    clustered.close()


def test_a_credential_providers_password_redis_echoes_never_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The cache masked only the passwords it was given: one from a credential_provider (on a
    # client it built or one passed in) showed in full in every outage line and in
    # check_connection's error, echoed by a server without HELLO.
    password = "pw-Cr3dential-s3cret"
    with RedisServer(password=password, extra_args=["--rename-command", "HELLO", ""]) as server:
        host, port = server.address

        def provider() -> UsernamePasswordCredentialProvider:
            return UsernamePasswordCredentialProvider("default", password)

        built = RedisCache(host, port, protocol=3, dead_timeout=0, credential_provider=provider())
        given = RedisCache(redis.Redis(host, port, protocol=3, credential_provider=provider()))
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert built.set("k", "v") is False
            assert given.get("k") is None
        with pytest.raises(RuntimeError) as refused:
            RedisCache(
                host, port, protocol=3, credential_provider=provider(), check_connection=True
            )
        assert len(caplog.records) == 2
        assert all("unknown command 'HELLO'" in record.getMessage() for record in caplog.records)
        assert "ResponseError" in caplog.text
        assert password[:6] not in caplog.text
        assert "unknown command 'HELLO'" in str(refused.value)
        assert password[:6] not in str(refused.value)
        assert refused.value.__cause__ is None  # a traceback would print the cause
