"""backends.md: a Redis server that refuses scripts makes inc and dec answer None, logged with
Redis' reason, and every other call works."""

from __future__ import annotations

import logging
import secrets

import pytest
import redis
from servers import RedisServer

from cacheplug import RedisCache


def test_inc_answers_none_where_scripts_are_refused(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"noscripts-{secrets.token_hex(3)}", secrets.token_hex(8)
    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all", "-@scripting"],
    )
    try:
        cache = RedisCache(
            port=redis_server.port, username=user, password=password, key_prefix=user
        )
        caplog.set_level(logging.WARNING, logger="cacheplug")
        assert cache.inc("visits") is None
        assert cache.dec("visits") is None
        assert "NOPERM" in caplog.text or "permission" in caplog.text
        assert password not in caplog.text
        assert cache.set("k", {"a": 1}) is True
        assert cache.get("k") == {"a": 1}
        assert cache.get_many("k", "visits") == [{"a": 1}, None]
        assert cache.delete("k") is True
        cache.close()
    finally:
        admin.acl_deluser(user)
        admin.close()


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
