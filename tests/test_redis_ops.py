"""RedisCache in situations operations teams meet: a server that accepts connections and never
answers, credentials it refuses, fork, a call cut short by an exception from a signal handler,
a full or read-only server, odd addresses, very large entries, and TLS.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import multiprocessing
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
import servers
import test_redis
from servers import RedisServer
from tls_files import make_certificates, tls_server_config
from waiting import paused_process, wait_until

from cacheplug import RedisCache, from_url
from cacheplug.core.url import parse_url


def redis_from_url(url: str) -> RedisCache:
    cache = from_url(url)
    assert isinstance(cache, RedisCache)
    return cache


class Interrupted(BaseException):
    """What a signal handler raises to cut a call short (a deadline, like KeyboardInterrupt)."""


@contextlib.contextmanager
def interrupted_before_reading() -> Iterator[None]:
    """Raise :class:`Interrupted` once, as the call reaches redis-py's read of a reply: a
    signal handler's exception landing after a command went out and before its reply is read.
    """

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == "read_response" and "redis" in code.co_filename:
            sys.settrace(None)
            raise Interrupted
        return None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)


INTERRUPTED_CALLS: dict[str, Callable[[RedisCache], Any]] = {
    "get": lambda cache: cache.get("a"),
    "get_unicode": lambda cache: cache.get("ä"),
    "get_many": lambda cache: cache.get_many("a", "b"),
    "set": lambda cache: cache.set("z", "Z"),
    "set_many": lambda cache: cache.set_many({"y": 1, "x": 2}),
    "add": lambda cache: cache.add("q", 1),
    "inc": lambda cache: cache.inc("n"),
    "has": lambda cache: cache.has("a"),
    "delete": lambda cache: cache.delete("absent"),
    "delete_many": lambda cache: cache.delete_many("absent", "gone"),
    "clear": lambda cache: cache.clear(),
}


@dataclass
class Target:
    """A cache holding a, b, ä and the counter ``count`` at 10, and its servers' pids."""

    cache: RedisCache
    pids: list[int]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every server stopped with SIGSTOP for the block: nothing is answered."""
        with contextlib.ExitStack() as stack:
            for pid in self.pids:
                stack.enter_context(paused_process(pid))
            yield


@pytest.fixture(params=["server", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "server":
        servers = [request.getfixturevalue("fresh_redis_server")]
        cache = RedisCache(port=servers[0].port, key_prefix="p:")
    else:
        servers = request.getfixturevalue("redis_cluster").servers
        prefix = f"ops-{uuid.uuid4().hex}:"  # the cluster is shared with other tests
        cache = RedisCache(startup_nodes=[s.address for s in servers], key_prefix=prefix)
    for key, value in {"a": "A", "b": "B", "ä": "AE", "count": 10}.items():
        assert cache.set(key, value) is True
    yield Target(cache, [s.pid for s in servers if s.pid is not None])
    cache.clear()
    cache.close()


def assert_own_replies(cache: RedisCache) -> None:
    assert cache.get("b") == "B"
    assert cache.get("ä") == "AE"
    assert cache.get_many("b", "a") == ["B", "A"]
    assert cache.inc("count") == 11
    assert cache.has("b") is True
    assert cache.add("b", 0) is False
    assert cache.delete("b") is True


@pytest.mark.parametrize("call", INTERRUPTED_CALLS.values(), ids=INTERRUPTED_CALLS.keys())
def test_a_call_cut_short_leaves_no_reply_for_the_next_call(
    target: Target, call: Callable[[RedisCache], Any]
) -> None:
    # Paused, the servers answer the cut-off command only once the next call has begun.
    with target.paused(), interrupted_before_reading(), pytest.raises(Interrupted):
        call(target.cache)
    assert_own_replies(target.cache)


@pytest.mark.parametrize("call", INTERRUPTED_CALLS.values(), ids=INTERRUPTED_CALLS.keys())
def test_a_signal_handler_raising_while_the_server_hangs_leaves_the_cache_usable(
    target: Target, call: Callable[[RedisCache], Any]
) -> None:
    def deadline(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, deadline)
    try:
        with target.paused(), pytest.raises(Interrupted):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            call(target.cache)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_own_replies(target.cache)


# -- a server that accepts connections and never answers --------------------------------------


def test_a_server_that_never_answers_costs_one_socket_timeout_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:  # never accepts or reads
        port = silent.getsockname()[1]
        cache = RedisCache(port=port, socket_timeout=0.1, dead_timeout=0, key_prefix="p:")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert test_redis.outage_answers(cache) == test_redis.OUTAGE
        waited = time.monotonic() - started
    calls = len(test_redis.OUTAGE)
    assert calls * 0.1 < waited < calls * 0.1 + 3.0  # each call waits once, none is retried
    assert "Timeout reading" in caplog.text
    assert cache.stats()["errors"] == calls


def test_the_default_socket_timeout_is_the_documented_five_seconds() -> None:
    cache = RedisCache(port=1)
    for client in (cache._client, cache._once_client):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 1.0)


# -- credentials the server refuses -------------------------------------------------------------

PASSWORD = "pw-0ps-s3cret"


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[RedisServer]:
    """A server with a password and an ACL user ``reader`` who may only GET keys ``other:*``."""
    with RedisServer(password=PASSWORD) as server:
        server.command("ACL", "SETUSER", "reader", "on", f">{PASSWORD}", "~other:*", "+get")
        yield server


@pytest.mark.parametrize(
    ("credentials", "error"),
    [
        (f":wrong-{PASSWORD}@", "AuthenticationError"),
        ("", "AuthenticationError"),
        (f"nobody:{PASSWORD}@", "AuthenticationError"),
        (f"reader:{PASSWORD}@", "NoPermissionError"),
    ],
    ids=["wrong-password", "no-password", "unknown-user", "user-without-rights"],
)
def test_refused_credentials_answer_outage_values_without_showing_the_password(
    guarded_server: RedisServer, caplog: pytest.LogCaptureFixture, credentials: str, error: str
) -> None:
    url = f"redis://{credentials}127.0.0.1:{guarded_server.port}/0"
    cache = redis_from_url(url)
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert test_redis.outage_answers(cache) == test_redis.OUTAGE
    assert len(caplog.records) == 1
    assert error in caplog.text
    check = subprocess.run(
        ["cacheplug", "check", url], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode != 0
    assert error in check.stderr
    shown = [repr(cache), str(cache), caplog.text, check.stdout, check.stderr]
    assert not [text for text in shown if PASSWORD in text]


# -- fork ------------------------------------------------------------------------------------------

FORK_ROUNDS = 300


def own_replies_count(cache: RedisCache, tag: str) -> int:
    """How many of a workload's answers were not the ones this process's own calls expect."""
    wrong = 0
    for i in range(FORK_ROUNDS):
        wrong += cache.set(f"{tag}:k", (tag, i)) is not True
        wrong += cache.get(f"{tag}:k") != (tag, i)
        wrong += cache.get_many(f"{tag}:k", f"{tag}:absent") != [(tag, i), None]
        wrong += cache.inc(f"{tag}:n") != i + 1
        wrong += cache.add(f"{tag}:a{i}", i) is not True
        wrong += cache.has(f"{tag}:a{i}") is not True
    return wrong


def child_workload(cache: RedisCache, answers: Any) -> None:
    answers.put(own_replies_count(cache, "child"))


@pytest.mark.parametrize("start", ["os.fork", "multiprocessing"])
def test_parent_and_forked_child_each_read_their_own_replies(
    redis_server: RedisServer, start: str
) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix=f"fork-{uuid.uuid4().hex}:")
    # Connections in both pools before the fork: the child must not use them.
    assert cache.set("warm", 1) is True
    assert (cache.inc("warm"), cache.get_many("warm"), cache.add("new", 1)) == (2, [2], True)
    if start == "os.fork":
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os.write(write_end, b"%d" % own_replies_count(cache, "child"))
            os._exit(0)
        os.close(write_end)
        parent_wrong = own_replies_count(cache, "parent")
        with os.fdopen(read_end, "rb") as pipe:
            child_wrong = int(pipe.read())
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    else:
        context = multiprocessing.get_context("fork")
        answers = context.Queue()
        child = context.Process(target=child_workload, args=(cache, answers))
        child.start()
        parent_wrong = own_replies_count(cache, "parent")
        child_wrong = answers.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0
    assert (parent_wrong, child_wrong) == (0, 0)
    assert cache.get("child:n") == cache.get("parent:n") == FORK_ROUNDS
    cache.clear()


# -- a full server, a read-only replica --------------------------------------------------------


def write_answers(cache: RedisCache) -> dict[str, Any]:
    return {
        "set": cache.set("new", "x" * 100),
        "set_forever": cache.set("new", 1, timeout=0),
        "add": cache.add("added", "x"),
        "set_many": cache.set_many({"m1": "x", "m2": 2}),
        "inc": cache.inc("fresh"),
        "inc_existing": cache.inc("count"),
        "dec": cache.dec("count"),
    }


REFUSED_WRITES = {
    "set": False,
    "set_forever": False,
    "add": False,
    "set_many": [],
    "inc": None,
    "inc_existing": None,
    "dec": None,
}


def assert_writes_refused(cache: RedisCache, caplog: pytest.LogCaptureFixture, error: str) -> None:
    """Every write refused with its outage value, logged; reads still answer."""
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert write_answers(cache) == REFUSED_WRITES
    assert error in caplog.text
    assert cache.stats()["errors"] == len(REFUSED_WRITES)
    assert (cache.get("b"), cache.get_many("count", "new")) == ("B", [10, None])


def test_a_server_out_of_memory_refuses_writes_without_exceptions(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="p:")
    assert cache.set_many({"b": "B", "count": 10}) == ["b", "count"]
    fresh_redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    fresh_redis_server.command("CONFIG", "SET", "maxmemory", "1")  # below what it already uses
    assert_writes_refused(cache, caplog, "OutOfMemoryError")
    fresh_redis_server.command("CONFIG", "SET", "maxmemory", "0")
    assert cache.set("new", 1) is True  # no dead time: the server answered all along


def test_a_read_only_replica_refuses_writes_without_exceptions(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_redis_server.command("CONFIG", "SET", "repl-diskless-sync-delay", "0")
    primary = RedisCache(port=fresh_redis_server.port, key_prefix="p:")
    assert primary.set_many({"b": "B", "count": 10}) == ["b", "count"]
    with RedisServer() as replica:
        replica.command("REPLICAOF", fresh_redis_server.host, fresh_redis_server.port)
        cache = RedisCache(port=replica.port, key_prefix="p:")
        wait_until(lambda: cache.get("b") == "B")
        assert_writes_refused(cache, caplog, "ReadOnlyError")
        assert cache.delete("b") is False
        assert cache.clear() is False


# -- odd addresses -----------------------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
def test_an_ipv6_loopback_url_works() -> None:
    with RedisServer(config={"bind": "127.0.0.1 ::1"}) as server:
        cache = redis_from_url(f"redis://[::1]:{server.port}/0?key_prefix=v6:")
        assert (cache.set("k", "v"), cache.get("k"), cache.inc("n")) == (True, "v", 1)
        assert server.command("EXISTS", "v6:k") == 1
        assert "::1" in repr(cache)


def test_an_unresolvable_host_builds_and_answers_outage_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = redis_from_url("redis://no-such-host.invalid:6379/0")
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert test_redis.outage_answers(cache) == test_redis.OUTAGE
    assert "no-such-host.invalid" in caplog.text


def unix_socket_answers(path: str) -> dict[str, Any]:
    """What a cache on the unix socket ``path`` answers to every operation when asked as user
    ``nobody`` (root passes every permission check), in a child process."""
    cache = redis_from_url(f"unix://{path}")
    test_redis.outage_answers(cache)  # imports and connects what it can, as root
    cache.close()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.setgid(65534)
        os.setuid(65534)
        os.write(write_end, repr(test_redis.outage_answers(cache)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    answers: dict[str, Any] = ast.literal_eval(text)
    return answers


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody")
def test_a_unix_socket_without_permission_answers_outage_values(
    fresh_redis_server: RedisServer,
) -> None:
    path = fresh_redis_server.unix_socket
    assert path is not None
    os.chmod(os.path.dirname(path), 0o755)  # nobody may reach the socket but not connect
    assert unix_socket_answers(path) == test_redis.OUTAGE
    os.chmod(path, 0o777)
    working = unix_socket_answers(path)
    assert (working["set"], working["inc"], working["clear"]) == (True, 1, True)


# -- very large entries ----------------------------------------------------------------------------


def test_a_50_mb_value_and_a_long_unicode_key_round_trip(redis_server: RedisServer) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix=f"big-{uuid.uuid4().hex}-é:")
    value = os.urandom(50 * 2**20)
    assert cache.set("v", value) is True
    assert cache.get("v") == value
    assert cache.set_many({"w": value}) == ["w"]
    assert cache.get_many("v", "w", "absent") == [value, value, None]
    key = "ключ-日本-😀 " * 20_000  # 220,000 characters, 860,000 bytes
    assert cache.set(key, 1) is True
    assert (cache.get(key), cache.inc(key), cache.has(key)) == (1, 2, True)
    assert cache.get_many(key, "v")[0] == 2
    assert cache.delete_many(key, "v", "w") == [key, "v", "w"]
    assert cache.clear() is True


# -- TLS -------------------------------------------------------------------------------------------


def test_rediss_with_a_client_certificate_from_the_url(tmp_path: pathlib.Path) -> None:
    certs = make_certificates(tmp_path)
    client = {"cert": str(tmp_path / "client.pem"), "key": str(tmp_path / "client-key.pem")}
    steps = [
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client", "-keyout", client["key"],
         "-out", "client.csr"],
        ["x509", "-req", "-in", "client.csr", "-CA", certs["ca"], "-CAkey", certs["ca-key"],
         "-CAcreateserial", "-days", "1", "-out", client["cert"]],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(["openssl", *step], check=True, capture_output=True, cwd=tmp_path)
    port = servers._free_port()
    config = tls_server_config(certs, port, client_certs=True)
    with RedisServer(config=config, password=PASSWORD):
        base = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?key_prefix=tls:&ssl_ca_certs={certs['ca']}"
        mutual = from_url(f"{base}&ssl_certfile={client['cert']}&ssl_keyfile={client['key']}")
        assert (mutual.set("k", [1]), mutual.get("k"), mutual.inc("n")) == (True, [1], 1)
        assert mutual.get_many("k", "n") == [[1], 1]
        unverified = from_url(
            f"rediss://:{PASSWORD}@localhost:{port}/0?key_prefix=tls:&ssl_cert_reqs=none"
            f"&ssl_certfile={client['cert']}&ssl_keyfile={client['key']}"
        )
        assert unverified.get("k") == [1]
        anonymous = redis_from_url(base)  # the server wants a client certificate
        assert test_redis.outage_answers(anonymous) == test_redis.OUTAGE
        # a client key encrypted with a passphrase, given in the URL, never shown
        locked = str(tmp_path / "client-key-locked.pem")
        subprocess.run(
            ["openssl", "pkey", "-in", client["key"], "-aes256", "-passout", "pass:k3y-phrase",
             "-out", locked],
            check=True, capture_output=True,
        )  # fmt: skip
        url = f"{base}&ssl_certfile={client['cert']}&ssl_keyfile={locked}&ssl_password=k3y-phrase"
        unlocked = from_url(url)
        assert unlocked.get("k") == [1]
        assert "k3y-phrase" not in repr(unlocked) + str(parse_url(url))
