"""Keyword overrides against the parts of a URL they also name (host, port, servers, directory),
and TLS options that a plain connection would ignore."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import redis
import servers
from flask import Flask
from flask_caching import Cache
from servers import MemcachedServer, RedisServer
from tls_files import make_certificates, tls_server_config

from cacheplug import (
    ConfigurationError,
    FileSystemCache,
    RedisCache,
    SimpleCache,
    from_env,
    from_url,
    hookimpl,
)
from cacheplug.core.plugins import register_plugin, reset_plugins
from cacheplug.core.url import CacheURL

PASSWORD = "ovr-s3cret-pw"


def dead_port() -> int:
    """A port nothing listens on: a URL naming it reaches no server."""
    return servers._free_port()


def stored(server: RedisServer, key: str) -> bytes | None:
    """``key``'s raw value on ``server``'s db 0, read by a client of the test's own."""
    client = redis.Redis(host=server.host, port=server.port)
    try:
        value: bytes | None = client.get(key)
    finally:
        client.close()
    return value


# -- host and port --------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [int, str], ids=["int", "text"])
def test_port_keyword_wins_over_the_urls_port(redis_server: RedisServer, port: type) -> None:
    url = f"redis://{redis_server.host}:{dead_port()}/0?key_prefix=ovr-port:"
    with from_url(url, port=port(redis_server.port)) as cache:
        assert cache.set("k", 1) is True
    assert stored(redis_server, "ovr-port:k") == b"1"


def test_host_keyword_wins_over_the_urls_host(redis_server: RedisServer) -> None:
    url = f"redis://no-such-host.invalid:{redis_server.port}/0?key_prefix=ovr-host:"
    with from_url(url, host=redis_server.host) as cache:
        assert cache.set("k", 2) is True
    assert stored(redis_server, "ovr-host:k") == b"2"


def test_host_and_port_keywords_fill_a_url_without_a_host(redis_server: RedisServer) -> None:
    with from_url(
        "redis:///0?key_prefix=ovr-both:", host=redis_server.host, port=redis_server.port, db=0
    ) as cache:
        assert cache.set("k", 3) is True
    assert stored(redis_server, "ovr-both:k") == b"3"


def test_port_keyword_wins_over_the_url_in_the_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVR_CACHE_URL", f"redis://{redis_server.host}:{dead_port()}/0")
    with from_env("OVR_CACHE_URL", port=redis_server.port, key_prefix="ovr-env:") as cache:
        assert cache.set("k", 4) is True
    assert stored(redis_server, "ovr-env:k") == b"4"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"port": "six"}, r"port must be a number from 1 to 65535, got 'six'"),
        ({"port": 0}, r"port must be a number from 1 to 65535, got 0"),
    ],
)
def test_a_port_keyword_that_is_no_port_is_a_configuration_error(
    overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as raised:
        from_url(f"redis://:{PASSWORD}@cache:6379/0", **overrides)
    assert PASSWORD not in str(raised.value)


# -- what other backends take from the URL -------------------------------------------------------


def test_servers_keyword_wins_over_the_urls_hosts(memcached_server: MemcachedServer) -> None:
    real = (memcached_server.host, memcached_server.port)
    with from_url(f"memcached://127.0.0.1:{dead_port()}", servers=[real]) as cache:
        assert cache.set("ovr-mc", "moved") is True
    with from_url(f"memcached://{real[0]}:{real[1]}") as cache:
        assert cache.get("ovr-mc") == "moved"


def test_cache_dir_keyword_wins_over_the_urls_directory(tmp_path: Path) -> None:
    named, given = tmp_path / "named", tmp_path / "given"
    with from_url(f"file://{named}?threshold=9", cache_dir=given) as cache:
        assert isinstance(cache, FileSystemCache)
        assert cache.set("k", "v") is True
    assert not named.exists()
    assert any(given.iterdir())
    with from_url("file://", cache_dir=str(given)) as cache:  # the URL need not name one
        assert cache.get("k") == "v"


def test_flask_cache_options_port_wins_over_cache_url(redis_server: RedisServer) -> None:
    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="cacheplug.flask.cache_factory",
        CACHE_URL=f"redis://{redis_server.host}:{dead_port()}/0",
        CACHE_KEY_PREFIX="ovr-flask:",
        CACHE_OPTIONS={"port": redis_server.port},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = Cache(app)
    with app.app_context():
        assert cache.set("k", "flask") is True
        assert cache.get("k") == "flask"
    assert stored(redis_server, "ovr-flask:k") is not None


def test_unix_socket_path_keyword_wins_over_the_urls_socket(redis_server: RedisServer) -> None:
    socket = redis_server.unix_socket
    with from_url("redis+unix:///nowhere/redis.sock?db=0", unix_socket_path=socket) as c:
        assert c.set("ovr-sock", "moved") is True
        assert c.get("ovr-sock") == "moved"


@pytest.mark.parametrize(
    ("url", "overrides"),
    [
        ("redis+unix:///run/a.sock", {"port": 6380}),
        ("redis+cluster://n1:7000,n2:7001", {"host": "n3"}),
        ("redis+cluster://n1:7000", {"host": "n3", "port": 7002}),
    ],
)
def test_a_host_or_port_keyword_for_a_socket_or_cluster_is_a_configuration_error(
    url: str, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot apply to .*, which names") as raised:
        from_url(url, **overrides)
    assert " and ".join(sorted(overrides)) in str(raised.value)


class _PositionalCache(SimpleCache):
    """A third-party backend that hands the URL's number on positionally."""

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> Self:
        return cls(int(url.path.strip("/") or 500), **options)


class _PositionalPlugin:
    @hookimpl
    def cacheplug_register_backends(self, register: Any) -> None:
        register("positional", _PositionalCache)


def test_a_keyword_a_backend_cannot_put_in_the_urls_place_is_a_configuration_error() -> None:
    reset_plugins()
    try:
        register_plugin(_PositionalPlugin(), name="positional-test")
        with pytest.raises(ConfigurationError) as raised:
            from_url("positional:///9", threshold=10)
    finally:
        reset_plugins()
    message = str(raised.value)
    assert "keyword 'threshold' and the URL 'positional:///9' both give" in message
    assert "give it in one place" in message


# -- TLS options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0?ssl_ca_certs=/x.pem&ssl_cert_reqs=required",
        "redis://cache:6379/0?ssl=false&ssl_check_hostname=false",
        "redis+cluster://n1:7000?ssl_ca_certs=/x.pem",
        f"redis://:{PASSWORD}@cache/0?ssl_password={PASSWORD}",
    ],
)
def test_tls_options_on_a_plain_url_are_refused(url: str) -> None:
    with pytest.raises(
        ConfigurationError, match=r"need rediss:// or \?ssl=true in a URL"
    ) as raised:
        from_url(url)
    assert "ignored on a plain connection" in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_tls_keywords_on_a_plain_connection_are_refused() -> None:
    plain = r"^{} would be ignored on a plain connection: .*ssl=True as a keyword$"
    with pytest.raises(ConfigurationError, match=plain.format("ssl_ca_certs")):
        from_url("redis://cache:6379/0", ssl_ca_certs="/x.pem")
    with pytest.raises(ConfigurationError, match=plain.format("ssl_cert_reqs")):
        RedisCache("cache", ssl_cert_reqs="required")
    with pytest.raises(ConfigurationError, match=plain.format("ssl_ca_certs, ssl_password")):
        RedisCache(startup_nodes=[("n1", 7000)], ssl_ca_certs="/x.pem", ssl_password="pw")


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: from_url("redis+unix:///run/redis.sock?ssl=true"), "ssl"),
        (lambda: from_url("unix:///run/redis.sock?ssl_ca_certs=/x.pem"), "ssl_ca_certs"),
        (
            lambda: RedisCache(unix_socket_path="/run/redis.sock", ssl=True, ssl_ca_certs="/x"),
            "ssl, ssl_ca_certs",
        ),
    ],
)
def test_tls_on_a_unix_socket_is_refused(build: Any, named: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        build()
    assert str(raised.value).startswith(
        f"{named} cannot apply to the unix socket '/run/redis.sock': redis-py never wraps one "
        "in TLS"
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, str]]]:
    """A Redis server's TLS port, with a certificate no system CA knows, and its files."""
    certs = make_certificates(tmp_path_factory.mktemp("ovr-tls"))
    port = servers._free_port()
    with RedisServer(config=tls_server_config(certs, port)):
        yield port, certs


@pytest.mark.parametrize("reqs", ["NONE", "None", "none"])
def test_ssl_cert_reqs_reads_in_any_case_in_a_url(
    tls_server: tuple[int, dict[str, str]], reqs: str
) -> None:
    port, _ = tls_server
    with from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs={reqs}") as unverified:
        assert unverified.set("k", reqs) is True  # no CA needed: the certificate is not checked


def test_ssl_cert_reqs_reads_in_any_case_as_a_keyword(
    tls_server: tuple[int, dict[str, str]],
) -> None:
    port, certs = tls_server
    with RedisCache("127.0.0.1", port, ssl=True, ssl_cert_reqs="NONE") as unverified:
        assert unverified.set("k", 1) is True
    with from_url(f"rediss://127.0.0.1:{port}/0", ssl_cert_reqs="Required") as untrusted:
        assert untrusted.set("k", 2) is False  # verified against the system CAs: refused
    with from_url(
        f"redis://127.0.0.1:{port}/0?ssl=true&ssl_cert_reqs=REQUIRED&ssl_ca_certs={certs['ca']}"
    ) as verified:
        assert verified.set("k", 3) is True
    with pytest.raises(ConfigurationError, match=r"required \(in any case\) .*, got 'Maybe'$"):
        from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=Maybe")
