"""Follow-up review of today's engine backend changes: what they mask stays fast on long
texts, and their new paths keep the contract."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from servers import RedisServer

from cacheplug import ConfigurationError, RedisCache
from cacheplug.backends._redis_clients import shown_host


def test_a_long_host_holding_a_slash_is_refused_at_once() -> None:
    # Masking "user:password@" tried its pattern at every letter, each reading to the end of
    # the text: a 100,000-character host took minutes to refuse (quadratic).
    host = "a/" * 50_000
    with pytest.raises(ConfigurationError, match="not a host name"):
        RedisCache(host=host)
    with pytest.raises(ConfigurationError, match="startup_nodes"):
        RedisCache(startup_nodes=[object(), ("b" * 100_000 + "@", 7000)])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("user:pw@host", "***@host"),
        (":pw@host/0", "***@host/0"),
        ("('user:pw@host', 6379)", "('***@host', 6379)"),
        ("ClusterNode(host='u:p@h', port=1)", "ClusterNode(host='***@h', port=1)"),
        ("a/b", "a/b"),
    ],
)
def test_a_hosts_user_info_is_still_masked(text: str, shown: str) -> None:
    assert shown_host(text) == shown


class _Unprintable(redis.ConnectionError):
    """A driver error whose ``str()`` fails (raised by a client subclass of the user's)."""

    def __str__(self) -> str:
        raise ValueError("no text")


class _FailingClient(redis.Redis):
    """A client that fails every read with an error that cannot be printed."""

    def get(self, name: Any) -> Any:
        raise _Unprintable()

    def exists(self, *names: Any) -> Any:
        raise _Unprintable()


def test_an_unprintable_driver_error_is_still_an_outage_answer() -> None:
    # masking the password read str(err) outside logging's own guard: the ValueError escaped
    # get and has instead of their outage answers
    cache = RedisCache(_FailingClient(port=1), dead_timeout=0)
    assert cache.get("k") is None
    assert cache.has("k") is False
    assert cache.stats()["errors"] == 2


def test_a_socket_path_given_as_host_too_still_connects(redis_server: RedisServer) -> None:
    # redis-py ignores the host beside unix_socket_path, so such a configuration worked before
    # hosts holding '/' were refused as URLs
    path = redis_server.unix_socket
    assert path is not None
    cache = RedisCache(host=path, unix_socket_path=path, key_prefix="followup:")
    assert cache.set("k", 1) is True
    assert cache.get("k") == 1
    with pytest.raises(ConfigurationError, match="unix_socket_path="):
        RedisCache(host=path)


def test_clients_assigned_again_and_again_keep_one_copy_of_each_password(
    redis_server: RedisServer,
) -> None:
    # each assignment appended the client's password again: a subclass assigning on every
    # failover grew the list each error is masked with, without end
    cache = RedisCache(port=redis_server.port)
    for _ in range(3):
        cache._write_client = redis.Redis(port=redis_server.port, password="pw-one")
        cache._read_client = redis.Redis(port=redis_server.port, password="pw-two")
    assert sorted(cache._secrets) == ["pw-one", "pw-two"]
