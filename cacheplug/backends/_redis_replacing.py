"""Replacing the clients of a ``RedisCache``: a swap that a stale thread cannot undo, and the
closing of the clients the cache built once it no longer uses them.

A subclass may assign ``_write_client`` or ``_read_client`` at any time (Flask-Caching's
``RedisSentinelCache`` does in its constructor), while other threads hold the clients they
read before: a stand-in for a failed server about to put its client back, a cluster client
still connecting. What they put back goes through :func:`put_back`, which the assignment wins.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cacheplug.core._entering import entering

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["disconnect_dedicated", "pools_of", "put_back", "retire", "swap_lock"]


def swap_lock() -> AbstractContextManager[Any]:
    """A new lock for a cache's ``_swapping``, held while its clients are replaced."""
    return entering(threading.RLock())


def put_back(cache: Any, attribute: str, current: Any, client: Any) -> bool:
    """Set ``cache``'s ``attribute`` to ``client`` if it still holds ``current``, and say
    whether it did: a client assigned meanwhile stays."""
    with cache._swapping:
        if vars(cache).get(attribute) is not current:
            return False
        setattr(cache, attribute, client)
    return True


def pools_of(client: Any, built: bool = False) -> list[Any]:
    """The redis-py connection pools of ``client`` (one per node of a ``RedisCluster``); with
    ``built``, only those it built for itself, not a pool given as ``connection_pool``.

    A client passed in may be any object with redis-py's methods and no pool.
    """
    if hasattr(client, "get_nodes"):
        clients = [node.redis_connection for node in client.get_nodes()]
    else:
        clients = [client]
    return [
        each.connection_pool
        for each in clients
        if getattr(each, "connection_pool", None) is not None
        and (not built or getattr(each, "auto_close_connection_pool", False))
    ]


def retire(clients: Iterable[Any], kept: Any) -> None:
    """Close the connections of ``clients``, which their cache built and no longer uses: the
    idle ones now, those that calls still running hold as each call gives its back (closed
    under it, it would fail as if the server were down). A pool that the client ``kept`` also
    uses stays as it is."""
    kept_pools = {id(pool) for pool in pools_of(kept)}
    for client in clients:
        for pool in pools_of(client, built=True):
            if id(pool) in kept_pools:
                continue
            _close_on_release(pool)
            with contextlib.suppress(Exception):  # a closed socket may refuse to close again
                pool.disconnect(inuse_connections=False)
        disconnect_dedicated(client)


def _close_on_release(pool: Any) -> None:
    """Make ``pool`` close each connection given back to it, before it is idle again: no
    other call can have taken it then."""
    release = pool.release

    def release_closed(connection: Any) -> None:
        try:
            connection.disconnect()
        finally:
            release(connection)

    pool.release = release_closed


def disconnect_dedicated(client: Any) -> None:
    """Close the connection of a client made with ``single_connection_client=True``, once no
    call is running on it."""
    dedicated = getattr(client, "connection", None)
    lock = getattr(client, "single_connection_lock", None)
    if dedicated is not None and lock is not None:
        with entering(lock):  # each call holds it: none runs on the connection now
            dedicated.disconnect()
