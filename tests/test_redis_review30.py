"""RedisCache review 30: a password Redis echoes in an error never reaches a log line or an
exception, and a cluster's ``clear`` empties every node it reaches while one is down."""

from __future__ import annotations

import logging

import pytest
import redis
from servers import RedisCluster, RedisServer

from cacheplug import ConfigurationError, RedisCache

PASSWORD = "pw-R3view30-s3cret"


# Redis cuts the arguments it echoes at 128 characters: a long password shows its beginning
LONG_PASSWORD = "Lp-" + "x" * 60 + "-s3cret-" + "y" * 100


@pytest.mark.parametrize("password", [PASSWORD, LONG_PASSWORD], ids=["short", "long"])
def test_a_password_redis_echoes_never_shows(
    password: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A server without HELLO (Redis before 6, a proxy) answers redis-py's "HELLO 3 AUTH user
    # password" with "unknown command 'HELLO', with args beginning with: ... '<password>'".
    with RedisServer(password=password, extra_args=["--rename-command", "HELLO", ""]) as server:
        host, port = server.address
        built = RedisCache(host, port, password=password, protocol=3, dead_timeout=0)
        given = RedisCache(redis.Redis(host, port, password=password, protocol=3))
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert built.set("k", "v") is False
            assert given.get("k") is None
        with pytest.raises(RuntimeError) as refused:
            RedisCache(host, port, password=password, protocol=3, check_connection=True)
        assert len(caplog.records) == 2
        assert all("unknown command 'HELLO'" in record.getMessage() for record in caplog.records)
        assert "ResponseError" in caplog.text  # the error's class is still named
        assert password[:20] not in caplog.text
        assert "unknown command 'HELLO'" in str(refused.value)
        assert password[:20] not in str(refused.value)
        assert refused.value.__cause__ is None  # a traceback would print the cause


def test_cluster_clear_with_a_node_down_empties_the_others() -> None:
    # The first SCAN asked every primary at once: one dead node failed the call before any key
    # of the live nodes was deleted (and FLUSHDB stopped at the first node that failed).
    with RedisCluster(masters=2) as cluster:
        prefixed = RedisCache(startup_nodes=cluster.nodes, key_prefix="clr:", socket_timeout=2)
        bare = RedisCache(startup_nodes=cluster.nodes, socket_timeout=2)
        keys = [f"k{i}" for i in range(40)]
        assert prefixed.set_many(dict.fromkeys(keys, 1)) == keys
        assert bare.set("other", 1) is True
        other_port = bare._write_client.get_node_from_key("other").port
        live = [cluster.servers[0]]
        other = [int(server.port == other_port) for server in live]  # a foreign key stays
        assert all(server.command("KEYS", "clr:*") for server in live)
        cluster.servers[1].kill()
        errors = prefixed.stats()["errors"]
        assert prefixed.clear() is False  # the dead node's keys are still there
        assert prefixed.stats()["errors"] == errors + 1
        assert [server.command("KEYS", "clr:*") for server in live] == [[]]
        assert [len(server.command("KEYS", "other")) for server in live] == other  # type: ignore[arg-type]
        assert prefixed.set_many(dict.fromkeys(keys, 1))  # the live nodes' keys again
        assert bare.clear() is False
        assert [server.command("DBSIZE") for server in live] == [0]
        prefixed.close()
        bare.close()


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        (f"redis://:{PASSWORD}@localhost:6379/0", "'redis://:***@localhost:6379/0'"),
        (f"user:{PASSWORD}@localhost", "'***@localhost'"),
    ],
)
def test_a_url_given_as_host_is_refused_without_its_password(host: str, shown: str) -> None:
    # It was taken as a host name: the cache never connected, and its repr and every outage
    # line ("Error -2 connecting to redis://:<password>@...") showed the password.
    with pytest.raises(ConfigurationError) as given:
        RedisCache(host)
    assert f"host {shown} is not a host name" in str(given.value)
    assert "from_url()" in str(given.value)
    with pytest.raises(ConfigurationError) as node:
        RedisCache(startup_nodes=[(host, 7000)])
    assert "startup_nodes takes (host, port) pairs" in str(node.value)
    assert PASSWORD not in str(given.value) + str(node.value)


def test_masking_leaves_text_that_only_shares_a_passwords_beginning() -> None:
    from cacheplug.backends._redis_masking import masked

    secret = "localhost-pass-1234"
    refused = redis.ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")
    assert masked(refused, [secret]) is refused  # "localhost" is the host, not the password
    echoed = redis.ResponseError(
        "unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'default' 'localhost-pa'"
    )
    shown = masked(echoed, [secret])
    assert type(shown) is redis.ResponseError
    assert str(shown).endswith("'default' '***'")


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("rediss://cache?ssl_ca_certs=%00", "ssl_ca_certs"),
        ("rediss://cache?ssl_ca_path=/etc%00/ssl", "ssl_ca_path"),
        ("rediss://cache?ssl_certfile=/tmp/c%00.pem", "ssl_certfile"),
        ("redis+unix:///tmp/redis%00.sock", "unix_socket_path"),
    ],
)
def test_a_path_holding_a_nul_byte_is_a_configuration_error(url: str, option: str) -> None:
    # open() raised a bare ValueError for the TLS files; a socket path was cut at the NUL and
    # every call answered as in an outage
    from cacheplug import from_url

    with pytest.raises(ConfigurationError, match=f"{option} .* contains a NUL byte"):
        from_url(url)
