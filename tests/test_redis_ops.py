"""RedisCache in situations operations teams meet: a server that accepts connections and never
answers, credentials it refuses, fork, a call cut short by an exception from a signal handler,
a full or read-only server, odd addresses, very large entries, and TLS.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
from waiting import paused_process

from cacheplug import RedisCache


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
