"""What ``RedisCache`` does to redis-py's connection pools, which redis-py leaves unsafe
against a signal handler's exception (``KeyboardInterrupt``, a deadline) and against a fork:
a connection a call cut short gives back is closed, one a cut left counted is reclaimed, ints
reach hiredis as text, and a forked child's copy of a pool gets new locks. Also what an error
says of a pool: a connection Redis closes after its reply, or a pool with no connection free.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
import threading
from collections.abc import Mapping
from typing import Any

from cacheplug.core._entering import entering

__all__ = [
    "close_when_cut_short",
    "closes_connection",
    "int_free_packer",
    "pool_after_fork_in_child",
    "pool_exhausted",
]


def close_when_cut_short(pool: Any) -> None:
    """Make ``pool`` close a connection it takes back from a call that an exception from outside
    the driver (``KeyboardInterrupt``, a deadline a signal handler raises) cut short.

    redis-py closes the connection when such an exception lands in a read, but not when it lands
    between sending a command and reading its reply: the reply arrives later, and the next call
    on that connection would read it as its own. Pools take connections back in a ``finally``
    while the exception propagates, so ``sys.exception()`` sees it there; an exception that the
    caller was already handling when the call took its connection (a cache used in an
    ``except KeyboardInterrupt:`` block) cut nothing short.

    A connection whose reply was a protocol error (a value over ``proto-max-bulk-len``) is
    closed too: Redis closes it just after that reply, and another thread could take it first.
    """
    release = pool.release
    if getattr(release, "closes_when_cut_short", False):
        return
    kwargs = getattr(pool, "connection_kwargs", None)
    packer = int_free_packer()
    if packer is not None and isinstance(kwargs, dict) and "command_packer" not in kwargs:
        kwargs["command_packer"] = packer
    get_connection = pool.get_connection
    handled: dict[int, BaseException | None] = {}  # by id of a connection in use
    taking: set[int] = set()  # threads inside redis-py's get_connection

    def get_connection_noting(*args: Any, **kwargs: Any) -> Any:
        me = threading.get_ident()
        taking.add(me)
        try:
            connection = get_connection(*args, **kwargs)
        except BaseException as err:
            taking.discard(me)
            if not isinstance(err, Exception):  # a signal handler's, inside redis-py
                reclaim(pool, handled, taking)
            raise
        try:
            handled[id(connection)] = sys.exception()
            taking.discard(me)
        except BaseException:  # a signal handler's: the caller never gets the connection
            taking.discard(me)
            handled.pop(id(connection), None)
            release(connection)
            raise
        return connection

    def release_closing(connection: Any) -> None:
        # a signal as this starts keeps the connection taken, as at the start of redis-py's
        # own release; once started, it gives the connection back whatever is raised
        try:
            cut = sys.exception()
            if cut is not handled.pop(id(connection), None) and (
                not isinstance(cut, Exception | None) or closes_connection(cut)
            ):
                connection.disconnect()
        except BaseException:
            connection.disconnect()  # cut short while deciding: never pooled as it is
            raise
        finally:
            release(connection)

    release_closing.closes_when_cut_short = True  # type: ignore[attr-defined]
    pool.get_connection = get_connection_noting
    pool.release = release_closing


def reclaim(pool: Any, handled: Mapping[int, Any], taking: set[int]) -> None:
    """Undo what a signal handler's exception inside redis-py's ``get_connection`` left:
    a connection in the pool's in-use set that no caller got (disconnected and dropped), a
    connection counted as made that the pool no longer holds (taken off its count).

    Only while no other thread is inside ``get_connection``: its connection, on its way to
    its caller, would look the same. Else the next cut there does it.
    """
    in_use = getattr(pool, "_in_use_connections", None)
    idle = getattr(pool, "_available_connections", None)
    if not isinstance(in_use, set) or not isinstance(idle, list):
        return  # another kind of pool (BlockingConnectionPool): left as redis-py leaves it
    with entering(pool._lock):  # made per call: this runs only after a cut
        if taking:
            return
        for connection in [c for c in in_use if id(c) not in handled]:
            in_use.discard(connection)
            connection.disconnect()
        pool._created_connections = len(idle) + len(in_use)


@functools.cache
def int_free_packer() -> Any:
    """redis-py's hiredis command packer, handed ints and floats as text; None without
    hiredis.

    hiredis packs an int (or a float) through its ``repr``, which runs pending signal handlers
    (CPython checks for signals while it converts an int to text); when one raises, hiredis
    goes on with the NULL it got and the process dies (SIGSEGV). Every connect sends an int
    (``HELLO 3``), and so do ``add``, ``inc`` and ``set_many`` with their expiries.
    """
    from redis.connection import HiredisRespSerializer
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        return None

    class IntFreePacker(HiredisRespSerializer):
        def pack(self, *args: Any) -> Any:
            # str() raises a signal handler's exception as Python code does
            texts: Any = [str(arg) if type(arg) in (int, float) else arg for arg in args]
            return super().pack(*texts)

    return IntFreePacker()


def pool_after_fork_in_child(pool: Any) -> None:
    """In a forked child: new locks for a redis-py pool and its copies of the parent's
    connections closed (without a shutdown, which would end the parent's too).

    redis-py resets the pool at the child's first call, under the pool's lock, which a thread
    of the parent taking or giving back a connection at the fork held: the child would wait
    forever. The reset also forgets connections the parent's threads had in use, without
    closing their copies.
    """
    for name in ("_lock", "_fork_lock"):
        lock = getattr(pool, name, None)
        if lock is not None:
            setattr(pool, name, type(lock)())
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
        *getattr(pool, "_connections", ()),  # BlockingConnectionPool
    ]
    for connection in connections:
        sock, connection._sock = getattr(connection, "_sock", None), None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def closes_connection(err: BaseException | None) -> bool:
    """Whether ``err`` is a reply after which Redis closes its connection: a protocol error,
    such as a value over ``proto-max-bulk-len``."""
    from redis.exceptions import ResponseError

    return isinstance(err, ResponseError) and str(err).startswith("Protocol error")


def pool_exhausted(err: BaseException) -> bool:
    """Whether ``err`` only says that every connection of the client's pool was in use
    (``max_connections``), which says nothing about the server."""
    from redis.exceptions import MaxConnectionsError

    # BlockingConnectionPool's wait for a free connection ends in a plain ConnectionError
    return isinstance(err, MaxConnectionsError) or isinstance(err.__context__, queue.Empty)
