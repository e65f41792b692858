"""Hostile constructor keywords and URL options, against real servers and directories.

The contract for options: a bad one is refused when the cache is built, with a
ConfigurationError (a TypeError for a wrong type) naming the option and what is accepted; a
cache that was built never raises from a call except the documented caller errors. So each
option value here is either refused at construction, or the cache built with it answers every
call, with working values when the server is fine. The tests after "findings" each failed
before the fix they came with (session 16): their docstrings and names say what went wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pathlib
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from servers import MemcachedServer, RedisServer

from cacheplug import (
    BaseCache,
    ConfigurationError,
    FileSystemCache,
    JSONSerializer,
    MemcachedCache,
    RedisCache,
    SerializationError,
    SimpleCache,
    from_url,
)

CALL_BOUND = 8.0  # seconds; every option's own timeouts answer well before this
_prefixes = itertools.count()


class HungError(Exception):
    """A call did not return within CALL_BOUND."""


@contextmanager
def bounded(seconds: float = CALL_BOUND) -> Iterator[None]:
    """Raise HungError in the main thread if the block runs longer than ``seconds``."""

    def hung(signum: int, frame: object) -> None:
        raise HungError(f"no answer within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fresh_prefix() -> str:
    """A key_prefix of its own, so tests sharing a server never see each other's keys."""
    return f"hostile:{os.getpid()}:{next(_prefixes)}:"


CALLS: list[tuple[str, Callable[[BaseCache], Any]]] = [
    ("set", lambda c: c.set("k", {"n": 1})),
    ("get", lambda c: c.get("k")),
    ("add", lambda c: c.add("k2", "v")),
    ("has", lambda c: c.has("k")),
    ("inc", lambda c: c.inc("n")),
    ("dec", lambda c: c.dec("n")),
    ("get_many", lambda c: c.get_many("k", "k2")),
    ("set_many", lambda c: c.set_many({"a": 1, "b": "x"})),
    ("delete_many", lambda c: c.delete_many("a", "b")),
    ("delete", lambda c: c.delete("k")),
    ("clear", lambda c: c.clear()),
]
WORKING = {
    "set": True,
    "get": {"n": 1},
    "add": True,
    "has": True,
    "inc": 1,
    "dec": 0,
    "get_many": [{"n": 1}, "v"],
    "set_many": ["a", "b"],
    "delete_many": ["a", "b"],
    "delete": True,
    "clear": True,
}
OUTAGE = {
    "set": False,
    "get": None,
    "add": False,
    "has": False,
    "inc": None,
    "dec": None,
    "get_many": [None, None],
    "set_many": [],
    "delete_many": [],
    "delete": False,
    "clear": False,
}


def answers(cache: BaseCache) -> dict[str, Any]:
    """What each contract call answered, in order, or the exception it raised."""
    results: dict[str, Any] = {}
    for name, call in CALLS:
        try:
            with bounded():
                results[name] = call(cache)
        except Exception as err:
            results[name] = err
    return results


def raised(results: dict[str, Any]) -> dict[str, str]:
    return {
        name: f"{type(value).__name__}: {value}"
        for name, value in results.items()
        if isinstance(value, BaseException)
    }


def assert_works(cache: BaseCache) -> None:
    """Every call answers as on a healthy server."""
    try:
        assert answers(cache) == WORKING
    finally:
        cache.close()


def assert_refused_or_answers(make: Callable[[], BaseCache], *, one_server: bool = True) -> None:
    """Refused at construction with a typed error, or no call raises (and, with one server,
    each answers as on a healthy server or as in an outage)."""
    try:
        cache = make()
    except (ConfigurationError, TypeError):
        return
    try:
        results = answers(cache)
    finally:
        cache.close()
    assert not raised(results)
    for name, value in results.items():
        if one_server:
            assert value in (WORKING[name], OUTAGE[name]), (name, value)


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_cache(redis_server: RedisServer) -> Callable[..., RedisCache]:
    def make(**options: Any) -> RedisCache:
        options.setdefault("port", redis_server.port)
        options.setdefault("key_prefix", fresh_prefix())
        options.setdefault("socket_connect_timeout", 0.5)
        options.setdefault("socket_timeout", 2)
        return RedisCache(**options)

    return make


@pytest.fixture
def memcached_cache(memcached_server: MemcachedServer) -> Callable[..., MemcachedCache]:
    where = f"{memcached_server.host}:{memcached_server.port}"

    def make(**options: Any) -> MemcachedCache:
        options.setdefault("servers", [where])
        options.setdefault("key_prefix", fresh_prefix())
        options.setdefault("connect_timeout", 0.5)
        options.setdefault("timeout", 2)
        return MemcachedCache(**options)

    return make


@pytest.fixture
def file_cache(tmp_path: pathlib.Path) -> Callable[..., FileSystemCache]:
    directories = itertools.count()
    return lambda **options: FileSystemCache(tmp_path / f"d{next(directories)}", **options)


@pytest.fixture
def simple_cache() -> Callable[..., SimpleCache]:
    return SimpleCache


BACKENDS = ["simple", "file", "redis", "memcached"]


def maker(request: pytest.FixtureRequest, backend: str) -> Callable[..., BaseCache]:
    made: Callable[..., BaseCache] = request.getfixturevalue(f"{backend}_cache")
    return made


# -- values refused today, as the contract wants -----------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("simple", {"threshold": -1}, ConfigurationError, "threshold must be an int"),
    ("simple", {"threshold": True}, ConfigurationError, "threshold must be an int"),
    ("simple", {"threshold": 1.5}, ConfigurationError, "threshold must be an int"),
    ("simple", {"threshold": "5"}, ConfigurationError, "threshold must be an int"),
    ("file", {"threshold": -1}, ConfigurationError, "threshold must be an int"),
    ("file", {"threshold": True}, ConfigurationError, "threshold must be an int"),
    ("file", {"threshold": "5"}, ConfigurationError, "threshold must be an int"),
    ("file", {"mode": 0}, ConfigurationError, "mode must be file permission bits"),
    ("file", {"mode": 0o400}, ConfigurationError, "let the owner read and write, got 0o400"),
    ("file", {"mode": 0o10000}, ConfigurationError, "mode must be file permission bits"),
    ("file", {"mode": 0o4755}, ConfigurationError, "no setuid, setgid or sticky bit"),
    ("file", {"mode": "640"}, ConfigurationError, "mode must be file permission bits"),
    ("file", {"mode": True}, ConfigurationError, "mode must be file permission bits"),
    ("file", {"hash_method": hashlib.shake_128}, ConfigurationError, "hexdigest"),
    ("file", {"hash_method": "shake_256"}, ConfigurationError, "hexdigest"),
    ("file", {"hash_method": "nope"}, ConfigurationError, "unknown hash_method 'nope'"),
    ("file", {"hash_method": None}, ConfigurationError, "hash_method must be"),
    ("file", {"hash_method": 5}, ConfigurationError, "hash_method must be"),
    ("file", {"lock_timeout": 0}, ConfigurationError, "lock_timeout must be"),
    ("memcached", {"servers": []}, ConfigurationError, "at least one memcached server"),
    ("memcached", {"servers": ""}, ConfigurationError, "invalid memcached server ''"),
    ("memcached", {"servers": [None]}, ConfigurationError, "invalid memcached server None"),
    ("memcached", {"servers": [11211]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [("h", 1, 2)]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [["h", 11211]]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [("h", "11211")]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [("h", True)]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [("h", 70000)]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [("", 11211)]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [(b"h", 11211)]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": ["h:1:x"]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": [":11211"]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": ["h:0"]}, ConfigurationError, "invalid memcached server"),
    ("memcached", {"servers": ["::1"]}, ConfigurationError, "'\\[ipv6\\]:port'"),
    ("memcached", {"servers": 11211}, ConfigurationError, "got a int object"),
    ("memcached", {"max_pool_size": 0}, ConfigurationError, "max_pool_size must be an int"),
    ("memcached", {"max_pool_size": True}, ConfigurationError, "max_pool_size must be an int"),
    ("memcached", {"max_pool_size": "4"}, ConfigurationError, "max_pool_size must be an int"),
    ("redis", {"retries": -1}, ConfigurationError, "retries must be an int"),
    ("redis", {"retries": True}, ConfigurationError, "retries must be an int"),
    ("redis", {"retries": "1"}, ConfigurationError, "retries must be an int"),
    ("redis", {"socket_type": 1}, TypeError, "unknown keyword 'socket_type' for RedisCache"),
    ("redis", {"decode_responses": True}, ConfigurationError, "decode_responses"),
    ("redis", {"host": None}, ConfigurationError, "host may not be None"),
]
for _backend in BACKENDS:
    REFUSED += [
        (_backend, {"key_prefix": 5}, TypeError, "key_prefix must be str"),
        (_backend, {"key_prefix": b"p:"}, TypeError, "key_prefix must be str"),
        (_backend, {"secret": ""}, ConfigurationError, "secret must be a non-empty"),
        (_backend, {"secret": 5}, ConfigurationError, "secret must be a non-empty"),
        (_backend, {"secret": bytearray(b"k")}, ConfigurationError, "secret must be a non-empty"),
        (_backend, {"serializer": 5}, ConfigurationError, "serializer must be a registered"),
        (_backend, {"serializer": ""}, ConfigurationError, "unknown serializer ''"),
        (_backend, {"serializer": "pick1e"}, ConfigurationError, "known serializers: json"),
        (_backend, {"default_timeout": -1}, ConfigurationError, "default_timeout must be 0"),
        (_backend, {"default_timeout": math.nan}, TypeError, "finite number of seconds"),
        (_backend, {"default_timeout": True}, TypeError, "got bool True"),
        (_backend, {"default_timeout": "60"}, TypeError, "got str '60'"),
    ]


@pytest.mark.parametrize(
    ("backend", "options", "error", "message"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]!r:.40}") for case in REFUSED],
)
def test_bad_options_are_refused_when_the_cache_is_built(
    request: pytest.FixtureRequest,
    backend: str,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        maker(request, backend)(**options)


# -- odd values accepted today, with which every call works -----------------------------------

WORKS: list[tuple[str, dict[str, Any]]] = [
    ("simple", {"threshold": 0}),
    ("simple", {"threshold": 10**100}),
    ("file", {"threshold": 0}),
    ("file", {"threshold": 2**63}),
    ("file", {"threshold": 10**30}),
    ("file", {"mode": 0o660}),
    ("file", {"mode": 0o777}),
    ("file", {"hash_method": "SHA256"}),
    ("file", {"hash_method": "blake2b"}),
    ("file", {"hash_method": "md5"}),
    ("file", {"hash_method": hashlib.sha3_512}),
    ("file", {"fsync": True}),
    ("file", {"lock_timeout": 1e300}),
    ("file", {"lock_timeout": None}),
    ("redis", {"retries": 0}),
    ("redis", {"retries": 5}),
    ("redis", {"max_connections": 1}),
    ("redis", {"health_check_interval": 0}),
    ("redis", {"health_check_interval": 5}),
    ("redis", {"health_check_interval": 0.5}),
    ("redis", {"socket_keepalive": True}),
    ("redis", {"client_name": "cacheplug-hostile"}),
    ("redis", {"client_name": ""}),
    ("redis", {"protocol": 2}),
    ("redis", {"protocol": 3}),
    ("redis", {"db": 1}),
    ("redis", {"password": None}),
    ("memcached", {"max_pool_size": 1}),
    ("memcached", {"max_pool_size": 10**9}),
    ("memcached", {"no_delay": False}),
]
for _backend in BACKENDS:
    WORKS += [
        (_backend, {"default_timeout": timedelta(days=10**6)}),
        (_backend, {"default_timeout": timedelta.max}),
        (_backend, {"default_timeout": 10**30}),
        (_backend, {"default_timeout": 2**31}),
        (_backend, {"default_timeout": 30 * 24 * 3600 + 1}),
        (_backend, {"default_timeout": 1e300}),
        (_backend, {"default_timeout": 1.7e308}),
        (_backend, {"default_timeout": -0.0}),
        (_backend, {"default_timeout": 0}),
        (_backend, {"serializer": "json"}),
        (_backend, {"serializer": "msgpack", "secret": b"\x00\xff" * 40}),
    ]


@pytest.mark.parametrize(
    ("backend", "options"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]!r:.40}") for case in WORKS],
)
def test_odd_but_valid_options_make_a_working_cache(
    request: pytest.FixtureRequest, backend: str, options: dict[str, Any]
) -> None:
    assert_works(maker(request, backend)(**options))


def test_redis_port_as_text_works(
    redis_cache: Callable[..., RedisCache], redis_server: RedisServer
) -> None:
    """Ports read from the environment come as text; redis-py connects to them as numbers."""
    assert_works(redis_cache(port=str(redis_server.port)))


def test_redis_unix_socket_path_works(redis_server: RedisServer) -> None:
    assert redis_server.unix_socket is not None
    assert_works(RedisCache(unix_socket_path=redis_server.unix_socket, key_prefix=fresh_prefix()))


@pytest.mark.parametrize(
    "servers",
    [
        pytest.param(lambda a: f"{a[0]}:{a[1]}", id="one-string"),
        pytest.param(lambda a: [a], id="tuple"),
        pytest.param(lambda a: [f"{a[0]}:{a[1]}", f" {a[0]}:{a[1]} "], id="duplicates"),
        pytest.param(lambda a: (f"{a[0]}:{a[1]}",), id="tuple-of-strings"),
    ],
)
def test_memcached_server_lists_in_every_documented_shape_work(
    memcached_server: MemcachedServer, servers: Callable[[tuple[str, int]], Any]
) -> None:
    cache = MemcachedCache(servers(memcached_server.address), key_prefix=fresh_prefix())
    assert len(cache._servers) == 1
    assert_works(cache)


def test_memcached_with_a_dead_server_in_the_list_answers_every_call(
    memcached_cache: Callable[..., MemcachedCache], memcached_server: MemcachedServer
) -> None:
    alive = f"{memcached_server.host}:{memcached_server.port}"
    dead = f"127.0.0.1:{closed_port()}"
    assert_refused_or_answers(lambda: memcached_cache(servers=[alive, dead]), one_server=False)


@pytest.mark.parametrize(
    "options",
    [
        {"port": 0},
        {"port": 1},
        {"db": 10**6},  # beyond the server's databases: every call is an outage, logged
        {"password": "wrong"},
        {"username": "nobody", "password": "x"},
        {"socket_keepalive": True, "socket_keepalive_options": {999: 1}},
        {"unix_socket_path": "/nonexistent/redis.sock"},
        {"ssl": True, "ssl_ca_certs": "/nonexistent/ca.pem"},
    ],
    ids=repr,
)
def test_redis_options_a_server_refuses_answer_as_outages(
    redis_cache: Callable[..., RedisCache], options: dict[str, Any]
) -> None:
    assert_refused_or_answers(lambda: redis_cache(**options))


# -- serializer objects that misbehave --------------------------------------------------------


class _TextSerializer:
    def dumps(self, value: Any) -> Any:
        return "text"

    def loads(self, data: bytes) -> Any:
        return data


class _NoneSerializer(_TextSerializer):
    def dumps(self, value: Any) -> Any:
        return None


class _RaisingSerializer(_TextSerializer):
    def dumps(self, value: Any) -> Any:
        raise RuntimeError("cannot")


class _BytearraySerializer:
    def dumps(self, value: Any) -> Any:
        return bytearray(JSONSerializer().dumps(value))

    def loads(self, data: bytes) -> Any:
        return JSONSerializer().loads(data)


class _MemoryviewSerializer(_BytearraySerializer):
    def dumps(self, value: Any) -> Any:
        return memoryview(JSONSerializer().dumps(value))


class _UnreadableSerializer(_BytearraySerializer):
    def loads(self, data: bytes) -> Any:
        raise RuntimeError("cannot read")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [_TextSerializer, _NoneSerializer, _RaisingSerializer])
@pytest.mark.parametrize("secret", [None, "k"])
def test_a_serializer_that_cannot_encode_raises_serialization_error_and_nothing_else(
    request: pytest.FixtureRequest, backend: str, kind: type[Any], secret: str | None
) -> None:
    cache = maker(request, backend)(serializer=kind(), secret=secret)
    try:
        results = answers(cache)
    finally:
        cache.close()
    for name in ("set", "add", "set_many"):
        assert isinstance(results[name], SerializationError), (name, results[name])
    for name in ("inc", "dec"):  # counters go through the serializer on simple and file
        assert type(results[name]) is int or isinstance(results[name], SerializationError)
    assert {
        n: results[n] for n in ("get", "has", "get_many", "delete_many", "delete", "clear")
    } == {
        "get": None,
        "has": False,
        "get_many": [None, None],
        "delete_many": [],
        "delete": False,
        "clear": True,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [_BytearraySerializer, _MemoryviewSerializer])
def test_a_serializer_returning_other_bytes_like_objects_works(
    request: pytest.FixtureRequest, backend: str, kind: type[Any]
) -> None:
    assert_works(maker(request, backend)(serializer=kind(), secret="k"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_serializer_that_cannot_decode_reads_as_misses(
    request: pytest.FixtureRequest, backend: str
) -> None:
    cache = maker(request, backend)(serializer=_UnreadableSerializer())
    try:
        assert cache.set("k", [1]) is True
        assert cache.get("k") is None
        assert cache.get_many("k", "other") == [None, None]
        assert cache.has("k") is True
        assert cache.stats()["errors"] >= 1
        assert cache.delete("k") is True
    finally:
        cache.clear()
        cache.close()


# -- hypothesis: default_timeout and key_prefix on every backend ------------------------------

LONG_TIMEOUTS = st.one_of(
    st.just(0),
    st.integers(min_value=60, max_value=10**40),
    st.floats(min_value=60, max_value=1e308, allow_nan=False, allow_infinity=False),
    st.timedeltas(min_value=timedelta(seconds=60)),
)
HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend", BACKENDS)
@HYPOTHESIS
@given(default_timeout=LONG_TIMEOUTS)
def test_any_long_default_timeout_keeps_entries(
    request: pytest.FixtureRequest, backend: str, default_timeout: float | timedelta
) -> None:
    cache = maker(request, backend)(default_timeout=default_timeout)
    try:
        assert cache.set("k", "v") is True
        assert cache.add("a", [1]) is True
        assert cache.inc("n", 3) == 3
        assert cache.get_many("k", "a", "n") == ["v", [1], 3]
        assert cache.has("k") is True
        assert cache.set_many({"x": 1}, timeout=default_timeout) == ["x"]
        assert cache.get("x") == 1
    finally:
        cache.clear()
        cache.close()


SIBLING = "zz-sibling:"
PREFIXES = st.one_of(
    st.text(min_size=1, max_size=30),
    st.text(alphabet="*?[]\\^-!~# \n\x00:", min_size=1, max_size=12),
    st.sampled_from(["\ud800", "p\udcff:", "~#", "*", "a" * 300, "\\*"]),
)


@pytest.mark.parametrize("backend", BACKENDS)
@HYPOTHESIS
@given(prefix=PREFIXES)
def test_any_key_prefix_works_and_clear_stays_under_it(
    request: pytest.FixtureRequest, backend: str, prefix: str
) -> None:
    assume(not SIBLING.startswith(prefix) and not prefix.startswith(SIBLING))
    if backend == "simple":
        assert_works(SimpleCache(key_prefix=prefix))
        return
    make = maker(request, backend)
    if backend == "file":  # both prefixes in one directory
        where = tempfile.mkdtemp(dir=request.getfixturevalue("tmp_path"))
        make = lambda **options: FileSystemCache(where, **options)  # noqa: E731
    sibling = make(key_prefix=SIBLING)
    try:
        assert sibling.set("kept", 1) is True
        assert_works(make(key_prefix=prefix))
        assert sibling.get("kept") == 1
    finally:
        sibling.clear()
        sibling.close()


# -- findings: each failed before its fix ------------------------------------------

IDNA_REFUSED = ["a..b", "x" * 64 + ".example", "\ud800", "."]


@pytest.mark.parametrize("host", IDNA_REFUSED)
def test_redis_host_that_cannot_be_looked_up(
    redis_cache: Callable[..., RedisCache], host: str
) -> None:
    assert_refused_or_answers(lambda: redis_cache(host=host))


@pytest.mark.parametrize("host", IDNA_REFUSED)
def test_memcached_host_that_cannot_be_looked_up(
    memcached_cache: Callable[..., MemcachedCache], host: str
) -> None:
    assert_refused_or_answers(lambda: memcached_cache(servers=[(host, 11211)]))


@pytest.mark.parametrize("scheme", ["redis", "memcached"])
@pytest.mark.parametrize("host", ["a..b", ".", "%ff"])
def test_url_host_that_cannot_be_looked_up(scheme: str, host: str) -> None:
    port = closed_port()
    path = "/0" if scheme == "redis" else ""
    assert_refused_or_answers(lambda: from_url(f"{scheme}://{host}:{port}{path}"))


@pytest.mark.parametrize("host", [123, b"127.0.0.1", ("127.0.0.1", 6379)], ids=repr)
def test_redis_host_that_is_neither_a_name_nor_a_client(
    redis_cache: Callable[..., RedisCache], host: Any
) -> None:
    assert_refused_or_answers(lambda: redis_cache(host=host))


@pytest.mark.parametrize("port", [None, "abc", -1, 70000, True, 1.5], ids=repr)
def test_redis_port_out_of_range_is_refused(
    redis_cache: Callable[..., RedisCache], port: Any
) -> None:
    with pytest.raises(ConfigurationError, match="port"):
        redis_cache(port=port)


@pytest.mark.parametrize("db", [1.5, 2**70], ids=repr)
def test_redis_db_that_select_refuses(redis_cache: Callable[..., RedisCache], db: Any) -> None:
    assert_refused_or_answers(lambda: redis_cache(db=db))


def test_redis_url_db_beyond_any_database(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99999999999999999999?key_prefix=x:"
    assert_refused_or_answers(lambda: from_url(url))


@pytest.mark.parametrize("db", [-1, True])
def test_redis_db_negative_or_bool_is_refused(
    redis_cache: Callable[..., RedisCache], db: Any
) -> None:
    with pytest.raises(ConfigurationError, match="db"):
        redis_cache(db=db)


@pytest.mark.parametrize("seconds", ["x", 10**400, math.nan, -1, math.inf], ids=repr)
def test_redis_health_check_interval_is_checked(
    redis_cache: Callable[..., RedisCache], seconds: Any
) -> None:
    with pytest.raises(ConfigurationError, match="health_check_interval"):
        redis_cache(health_check_interval=seconds)


@pytest.mark.parametrize("name", ["a b", "a\nb", "é"])
def test_redis_client_name_redis_refuses(redis_cache: Callable[..., RedisCache], name: str) -> None:
    with pytest.raises(ConfigurationError, match="client_name"):
        redis_cache(client_name=name)


def test_redis_url_client_name_redis_refuses(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigurationError, match="client_name"):
        from_url(f"redis://127.0.0.1:{redis_server.port}/0?client_name=a%20b")


@pytest.mark.parametrize("protocol", [0, 4])
def test_redis_protocol_is_two_or_three(
    redis_cache: Callable[..., RedisCache], protocol: int
) -> None:
    with pytest.raises(ConfigurationError, match="protocol"):
        redis_cache(protocol=protocol)


def test_redis_ssl_cert_reqs_keyword_is_checked(redis_cache: Callable[..., RedisCache]) -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        redis_cache(ssl=True, ssl_cert_reqs="bogus")


@pytest.mark.parametrize("how", ["keyword", "url"])
def test_redis_max_connections_mistake_is_a_configuration_error(
    redis_server: RedisServer, how: str
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ConfigurationError, match="max_connections"):
        if how == "url":
            from_url(url + "?max_connections=-1")
        else:
            RedisCache(port=redis_server.port, max_connections=-1)


def test_redis_retries_cannot_make_a_call_hang() -> None:
    try:
        cache = RedisCache(port=closed_port(), retries=10**9, socket_connect_timeout=0.2)
    except ConfigurationError:
        return
    with bounded(5):
        assert cache.get("k") is None


def test_redis_unix_socket_path_of_a_wrong_type() -> None:
    assert_refused_or_answers(lambda: RedisCache(unix_socket_path=5))  # type: ignore[arg-type]


def test_redis_encoding_errors_unknown(redis_cache: Callable[..., RedisCache]) -> None:
    assert_refused_or_answers(lambda: redis_cache(encoding_errors="bogus"))


def test_redis_key_prefix_callable_returning_non_str(
    redis_cache: Callable[..., RedisCache],
) -> None:
    cache = redis_cache(key_prefix=lambda: 5)
    with pytest.raises(TypeError, match="key_prefix"):
        cache.get("k")


@pytest.mark.parametrize("spec", ["unix:", "127.0.0.1:\u0661\u0662"])
def test_memcached_server_spec_that_names_nothing(
    memcached_cache: Callable[..., MemcachedCache], spec: str
) -> None:
    with pytest.raises(ConfigurationError, match="invalid memcached server"):
        memcached_cache(servers=[spec])


def test_filesystem_cache_dir_as_bytes(tmp_path: pathlib.Path) -> None:
    try:
        cache = FileSystemCache(os.fsencode(tmp_path / "store"))  # type: ignore[arg-type]
    except (ConfigurationError, TypeError) as err:
        assert "cache_dir" in str(err)
        return
    assert_works(cache)


def test_filesystem_empty_cache_dir_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="cache_dir"):
        FileSystemCache("")


def test_filesystem_cache_dir_that_cannot_be_encoded(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigurationError, match="cache_dir"):
        FileSystemCache(f"{tmp_path}/\ud800")


def test_filesystem_fsync_text_is_read_or_refused(tmp_path: pathlib.Path) -> None:
    try:
        cache = FileSystemCache(tmp_path, fsync="no")  # type: ignore[arg-type]
    except (ConfigurationError, TypeError):
        return
    assert cache.fsync is False


def test_filesystem_hash_method_message_suggests_only_usable_names(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(ConfigurationError, match="unknown hash_method") as info:
        FileSystemCache(tmp_path, hash_method="sha-256")
    assert "shake" not in str(info.value)


@pytest.mark.parametrize("value", ["60", True, math.nan], ids=repr)
def test_default_timeout_error_names_the_option(value: Any) -> None:
    with pytest.raises(TypeError, match="default_timeout"):
        SimpleCache(default_timeout=value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_serializer_class_instead_of_an_instance_is_refused(
    request: pytest.FixtureRequest, backend: str
) -> None:
    with pytest.raises((ConfigurationError, TypeError), match="JSONSerializer"):
        maker(request, backend)(serializer=JSONSerializer)


@pytest.mark.parametrize("text", ["no", "false", 0, 1], ids=repr)
@pytest.mark.parametrize(
    ("backend", "option"),
    [
        ("redis", "ssl"),
        ("redis", "socket_keepalive"),
        ("redis", "ssl_check_hostname"),
        ("memcached", "no_delay"),
        ("file", "fsync"),
    ],
)
def test_text_for_a_bool_option_is_refused_by_keyword(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, backend: str, option: str, text: Any
) -> None:
    # "no" read as true: ssl="no" turned TLS on (every call an outage), fsync="no" fsync on
    if backend == "file":
        make: Callable[..., BaseCache] = lambda **kw: FileSystemCache(tmp_path, **kw)  # noqa: E731
    else:
        make = request.getfixturevalue(f"{backend}_cache")
    with pytest.raises(TypeError, match=rf"^{option} must be a bool \(True or False\)"):
        make(**{option: text})


def test_text_for_a_bool_option_is_read_in_a_url_and_its_overrides(
    redis_server: RedisServer, tmp_path: pathlib.Path
) -> None:
    cache = from_url(f"redis://127.0.0.1:{redis_server.port}/0?ssl=no", socket_keepalive="no")
    try:
        assert cache.set("k", 1) is True and cache.get("k") == 1
    finally:
        cache.delete("k")
        cache.close()
    assert from_url(f"file://{tmp_path}?fsync=no").fsync is False  # type: ignore[attr-defined]
    assert from_url(f"file://{tmp_path}", fsync="yes").fsync is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "node",
    [(None, 7000), ("127.0.0.1", 1.9), ("127.0.0.1", 70000), ("a..b", 7000), ("", 7000)],
    ids=repr,
)
def test_cluster_startup_nodes_that_cannot_be_reached_are_refused(node: Any) -> None:
    # (None, 7000) became the host "None", a port of 1.9 became 1, 70000 was taken
    with pytest.raises(ConfigurationError):
        RedisCache(startup_nodes=[node])
