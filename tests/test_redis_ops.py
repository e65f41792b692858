"""RedisCache in situations operations teams meet: a server that accepts connections and never
answers, credentials it refuses, fork, a call cut short by an exception from a signal handler,
a full or read-only server, odd addresses, very large entries, and TLS.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from servers import RedisServer
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


def filled_cache(server: RedisServer) -> RedisCache:
    """A prefixed cache on ``server`` holding a, b, ä and the counter ``count`` at 10."""
    cache = RedisCache(port=server.port, key_prefix="p:")
    for key, value in {"a": "A", "b": "B", "ä": "AE", "count": 10}.items():
        assert cache.set(key, value) is True
    return cache


@pytest.mark.parametrize("call", INTERRUPTED_CALLS.values(), ids=INTERRUPTED_CALLS.keys())
def test_a_call_cut_short_leaves_no_reply_for_the_next_call(
    fresh_redis_server: RedisServer, call: Callable[[RedisCache], Any]
) -> None:
    cache = filled_cache(fresh_redis_server)
    assert fresh_redis_server.pid is not None
    # Paused, the server answers the cut-off command only once the next call has begun.
    with (
        paused_process(fresh_redis_server.pid),
        interrupted_before_reading(),
        pytest.raises(Interrupted),
    ):
        call(cache)
    assert cache.get("b") == "B"
    assert cache.get("ä") == "AE"
    assert cache.get_many("b", "a") == ["B", "A"]
    assert cache.inc("count") == 11
    assert cache.has("b") is True
    assert cache.add("b", 0) is False
    assert cache.delete("b") is True


@pytest.mark.parametrize("call", INTERRUPTED_CALLS.values(), ids=INTERRUPTED_CALLS.keys())
def test_a_signal_handler_raising_while_the_server_hangs_leaves_the_cache_usable(
    fresh_redis_server: RedisServer, call: Callable[[RedisCache], Any]
) -> None:
    cache = filled_cache(fresh_redis_server)
    assert fresh_redis_server.pid is not None

    def deadline(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, deadline)
    try:
        with paused_process(fresh_redis_server.pid), pytest.raises(Interrupted):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            call(cache)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cache.get("b") == "B"
    assert cache.get_many("b", "a") == ["B", "A"]
    assert cache.inc("count") == 11
