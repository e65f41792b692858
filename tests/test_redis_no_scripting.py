"""backends.md: where Redis refuses scripts (an ACL user without +@scripting, EVAL renamed away),
inc and dec send SET NX and INCRBY instead, on a single server and on a cluster: the same
answers, no increment lost."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator

import pytest
import redis
from servers import RedisCluster, RedisServer

from cacheplug import RedisCache


@pytest.fixture(scope="module")
def renamed() -> Iterator[RedisServer]:
    """A server whose EVAL and EVALSHA are renamed away (unknown commands)."""
    renames = ["--rename-command", "EVALSHA", "evalsha-off", "--rename-command", "EVAL", "eval-off"]
    with RedisServer(extra_args=renames) as server:
        yield server


def _user(servers: list[RedisServer], *commands: str) -> tuple[str, str]:
    """A new ACL user of each of ``servers`` (ACLs are per node, also in a cluster) allowed
    ``commands`` (ACL categories), and its password."""
    user, password = f"limited-{secrets.token_hex(3)}", secrets.token_hex(8)
    for server in servers:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=commands
        )
        admin.close()
    return user, password


# no MULTI either: the steps need none
_NO_SCRIPTS = ("+@all", "-@scripting", "-@transaction")


@pytest.fixture(params=["acl", "renamed", "cluster-acl"])
def no_scripts(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[RedisCache]:
    prefix = f"noscripts-{secrets.token_hex(3)}:"
    if request.param == "acl":
        user, password = _user([redis_server], *_NO_SCRIPTS)
        options = {"port": redis_server.port, "username": user, "password": password}
    elif request.param == "cluster-acl":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        user, password = _user(cluster.servers, *_NO_SCRIPTS)
        options = {"startup_nodes": cluster.nodes, "username": user, "password": password}
    else:
        options = {"port": request.getfixturevalue("renamed").port}
    cache = RedisCache(**options, key_prefix=prefix, default_timeout=60)  # type: ignore[arg-type]
    yield cache
    cache.clear()
    cache.close()


def test_inc_and_dec_count_where_scripts_are_refused(
    no_scripts: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = no_scripts
    caplog.set_level(logging.WARNING, logger="cacheplug")
    assert cache.inc("visits") == 1
    assert "refuses scripts" in caplog.text and "SET NX and INCRBY instead" in caplog.text
    assert cache.inc("visits", 5) == 6
    assert cache.dec("visits", 10) == -4
    assert cache.get("visits") == -4
    raw = cache._client
    assert 59_000 < raw.pttl(f"{cache.key_prefix}visits") <= 60_000  # a new counter's expiry
    assert cache.set("forever", 1, timeout=0) is True
    assert cache.inc("forever") == 2
    assert raw.pttl(f"{cache.key_prefix}forever") == -1  # an existing one keeps its own
    assert cache.set("name", "ada") is True
    with pytest.raises(TypeError, match="'name': it holds a str, not an int"):
        cache.inc("name")
    assert cache.set("big", 2**63 - 1) is True
    with pytest.raises(OverflowError):
        cache.inc("big")
    assert cache.get("big") == 2**63 - 1
    assert cache.stats()["errors"] == 0
    assert caplog.text.count("refuses scripts") == 1


def test_no_increment_is_lost_without_scripts(no_scripts: RedisCache) -> None:
    def count() -> None:
        for _ in range(200):
            assert no_scripts.inc("shared") is not None

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert no_scripts.get("shared") == 800


def test_a_counter_inc_creates_expires_as_contract_md_says(redis_server: RedisServer) -> None:
    """contract.md: unlike cachelib's bare INCRBY, a new counter gets default_timeout; a
    permanent one needs default_timeout=0, or set(key, 0, timeout=0) first."""
    prefix = f"counters-{secrets.token_hex(3)}:"
    raw = redis.Redis(port=redis_server.port)
    with RedisCache(port=redis_server.port, key_prefix=prefix, default_timeout=60) as cache:
        assert cache.inc("a") == 1
        assert 59_000 < raw.pttl(f"{prefix}a") <= 60_000
        assert cache.set("b", 0, timeout=0) is True
        assert cache.inc("b", 5) == 5
        assert raw.pttl(f"{prefix}b") == -1
    with RedisCache(port=redis_server.port, key_prefix=prefix, default_timeout=0) as cache:
        assert cache.inc("c") == 1
        assert raw.pttl(f"{prefix}c") == -1
        cache.clear()
    raw.close()


def test_counters_under_a_dead_default_timeout_without_scripts(no_scripts: RedisCache) -> None:
    # a default_timeout reassigned below 0: a new counter is born expired, an existing one counts
    cache = no_scripts
    assert cache.set("kept", 5, timeout=30) is True
    cache.default_timeout = -1
    assert (cache.inc("new"), cache.dec("other", 2)) == (1, -2)
    assert cache.get_many("new", "other") == [None, None]
    assert cache.inc("kept", 2) == 7
    assert 29_000 < cache._client.pttl(f"{cache.key_prefix}kept") <= 30_000
    assert cache.stats()["errors"] == 0
