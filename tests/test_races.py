"""Races pinned down on real servers: a fork at the exact moment another thread holds a lock or
a half-registered descriptor, and calls made while an exception is being handled or cut short
by one. Threads are paused at an exact point (sys.settrace/setprofile), so each race happens
every run.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from servers import RedisServer
from test_redis_ops import (
    Interrupted,
    Target,
    assert_own_replies,
    interrupted_before_reading,
    target,
)

from cacheplug import FileSystemCache, RedisCache

__all__ = ["target"]  # the fixture, a cache on a server and on a cluster


def connections_received(cache: RedisCache) -> int:
    """Connections the cache's servers accepted so far, asked through the cache's client."""
    client: Any = cache._client
    if cache._cluster:
        stats = client.info("stats", target_nodes=client.ALL_NODES).values()
    else:
        stats = [client.info("stats")]
    return sum(node["total_connections_received"] for node in stats)


def every_call(cache: RedisCache) -> None:
    cache.get("a")
    cache.get("ä")
    cache.set("z", "Z")
    cache.get_many("a", "b", "ä")
    cache.set_many({"y": 1, "x": 2})
    cache.has("a")
    cache.add("q", 1)
    cache.inc("n")
    cache.delete("absent")


def test_calls_inside_an_except_block_keep_their_connections(target: Target) -> None:
    # The pools closed every connection given back while any BaseException was being handled,
    # so a cache used in an `except KeyboardInterrupt:` block reconnected on every call.
    every_call(target.cache)  # every node connected once
    try:
        raise Interrupted
    except Interrupted:
        before = connections_received(target.cache)
        for _ in range(20):
            every_call(target.cache)
        assert connections_received(target.cache) == before


def test_a_call_cut_short_inside_an_except_block_leaves_no_reply(target: Target) -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Paused, the servers answer the cut-off GET only once the next call has begun.
        with target.paused(), interrupted_before_reading(), pytest.raises(Interrupted):
            target.cache.get("a")
        assert_own_replies(target.cache)


# -- FileSystemCache: a fork while another thread opens or closes a lock file -----------------


def paused_in_thread(
    action: Callable[[], Any], pause: Callable[[FrameType, str, Any], bool]
) -> tuple[threading.Thread, threading.Event, dict[str, Any]]:
    """Run ``action`` in a thread that stops at the first profile or trace event ``pause``
    accepts until the returned ``go`` is set; returns once it stopped, with the frame's locals
    at that point.
    """
    paused, go = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def stop(frame: FrameType, event: str, arg: Any) -> Any:
        if not paused.is_set() and pause(frame, event, arg):
            sys.settrace(None)
            sys.setprofile(None)
            seen.update(frame.f_locals)
            paused.set()
            go.wait(30)
        return stop

    def run() -> None:
        sys.settrace(stop)
        sys.setprofile(stop)
        try:
            action()
        finally:
            sys.settrace(None)
            sys.setprofile(None)

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.wait(30)
    return thread, go, seen


def forked(child: Callable[[], bool]) -> int:
    """The pid of a child that exits 0 if ``child()`` is true, 1 otherwise (never returns)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if child() else 1
        finally:
            os._exit(code)
    return pid


def exit_status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@FORKS_BESIDE_A_THREAD
def test_a_lock_file_opened_as_another_thread_forks_does_not_stay_locked(
    tmp_path: pathlib.Path,
) -> None:
    # The child kept a copy of a lock file a parent thread had opened and not yet registered;
    # the flock the thread then took lived on in that copy after the thread closed its own,
    # so the parent's next write waited for the child to exit.
    cache = FileSystemCache(str(tmp_path))

    def opened(frame: FrameType, event: str, arg: Any) -> bool:
        return event == "line" and frame.f_code.co_name == "locked" and "fd" in frame.f_locals

    thread, go, _ = paused_in_thread(lambda: cache.set("a", 1), opened)
    leave, stay = os.pipe()

    def wait_for_parent() -> bool:
        os.close(stay)
        return os.read(leave, 1) == b""  # lives until the parent closes the pipe

    child = forked(wait_for_parent)
    os.close(leave)
    writer = threading.Thread(target=cache.set, args=("b", 2))
    try:
        go.set()
        thread.join(30)
        writer.start()
        writer.join(5)
        assert not writer.is_alive(), "the parent's write waited for the child"
    finally:
        os.close(stay)
        assert exit_status(child) == 0
        if writer.ident is not None:
            writer.join(30)
    assert cache.get("a") == 1


@FORKS_BESIDE_A_THREAD
def test_a_fork_while_a_thread_closes_a_lock_file_closes_nothing_else_in_the_child(
    tmp_path: pathlib.Path,
) -> None:
    # The child closed every descriptor of the parent's set of lock files; a thread that had
    # closed its lock file and not yet taken it out of the set left its number there, which
    # another open could take first: the child closed that file instead.
    cache = FileSystemCache(str(tmp_path))

    def closed(frame: FrameType, event: str, arg: Any) -> bool:
        return event == "c_return" and arg is os.close and frame.f_code.co_name == "_close_lock"

    thread, go, seen = paused_in_thread(lambda: cache.set("a", 1), closed)
    fd = seen["fd"]
    try:
        other = os.open(os.devnull, os.O_RDONLY)
        if other != fd:  # another file takes the closed number
            os.dup2(other, fd)
            os.close(other)
        child = forked(lambda: os.fstat(fd) is not None)
    finally:
        go.set()
        thread.join(30)
    try:
        assert exit_status(child) == 0, "the child closed a file that is no lock file"
    finally:
        os.close(fd)


# -- RedisCache: a fork while a thread asks a failed server whether it is back ----------------


@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_a_thread_probes_a_failed_server_gets_it_back(
    fresh_redis_server: RedisServer,
) -> None:
    # The child inherited the probe's lock held by the parent's probing thread: it never
    # asked the server again and answered as in an outage for good.
    cache = RedisCache(port=fresh_redis_server.port, dead_timeout=0.001)
    fresh_redis_server.kill()
    assert cache.get("a") is None  # the server is now in its dead time
    fresh_redis_server.restart()
    fresh_redis_server.command("SET", "a", 7)  # a counter: read back as the int

    def probing(frame: FrameType, event: str, arg: Any) -> bool:
        return event == "call" and frame.f_code.co_name == "ping"

    thread, go, _ = paused_in_thread(lambda: cache.get("a"), probing)
    try:
        child = forked(lambda: cache.get("a") == 7)
    finally:
        go.set()
        thread.join(30)
    assert exit_status(child) == 0, "the child never asked the server again"
    assert cache.get("a") == 7


@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_a_thread_connects_to_a_cluster_does_not_hang(
    redis_cluster: Any,
) -> None:
    # The child inherited the lock the parent's thread held while it built the cluster
    # client: the child's first call waited on it forever.
    nodes = [s.address for s in redis_cluster.servers]
    cache = RedisCache(startup_nodes=nodes, key_prefix=f"review-fork-{os.getpid()}:")

    def connecting(frame: FrameType, event: str, arg: Any) -> bool:
        return event == "call" and frame.f_code.co_name == "_cluster_client"

    def answers_in_time() -> bool:
        call = threading.Thread(target=cache.set, args=("a", 1), daemon=True)
        call.start()
        call.join(10)
        return not call.is_alive()

    thread, go, _ = paused_in_thread(lambda: cache.get("a"), connecting)
    try:
        child = forked(answers_in_time)
    finally:
        go.set()
        thread.join(30)
    assert exit_status(child) == 0, "the child's first call hung"
    cache.clear()
