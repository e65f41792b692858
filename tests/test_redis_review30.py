"""RedisCache review 30: a password Redis echoes in an error never reaches a log line or an
exception."""

from __future__ import annotations

import logging

import pytest
import redis
from servers import RedisServer

from cacheplug import RedisCache

PASSWORD = "pw-R3view30-s3cret"


def test_a_password_redis_echoes_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    # A server without HELLO (Redis before 6, a proxy) answers redis-py's "HELLO 3 AUTH user
    # password" with "unknown command 'HELLO', with args beginning with: ... '<password>'".
    with RedisServer(password=PASSWORD, extra_args=["--rename-command", "HELLO", ""]) as server:
        host, port = server.address
        built = RedisCache(host, port, password=PASSWORD, protocol=3, dead_timeout=0)
        given = RedisCache(redis.Redis(host, port, password=PASSWORD, protocol=3))
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert built.set("k", "v") is False
            assert given.get("k") is None
        with pytest.raises(RuntimeError) as refused:
            RedisCache(host, port, password=PASSWORD, protocol=3, check_connection=True)
        assert len(caplog.records) == 2
        assert all("unknown command 'HELLO'" in record.getMessage() for record in caplog.records)
        assert "ResponseError" in caplog.text  # the error's class is still named
        assert PASSWORD not in caplog.text
        assert "unknown command 'HELLO'" in str(refused.value)
        assert PASSWORD not in str(refused.value)
        assert refused.value.__cause__ is None  # a traceback would print the cause
