"""The stand-in for the clients of a single Redis server that just failed, which answers as
in an outage, without asking the server, for its dead time. How a cache puts it in place is in
``_redis_outages``; it has a module of its own because ``_redis_assigned``, which that module
builds on, looks through it to the real client.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from cacheplug.backends._redis_pools import pool_exhausted
from cacheplug.backends._redis_replacing import put_back

if TYPE_CHECKING:
    from cacheplug.backends._redis_outages import Outages

__all__ = ["DeadServer", "ServerDown"]


# Outage log lines show this class's name: it is worded for whoever reads them.
class ServerDown(ConnectionError):
    """The server failed moments ago and is not asked again until its dead time is over."""


class DeadServer:
    """Stands in for the client of a server that just failed, until ``until`` (monotonic).

    When the dead time is over, one call pings the server while the others keep answering
    as in an outage: a server that still hangs then costs one timeout, not one per thread.
    """

    def __init__(self, cache: Outages, attribute: str, client: Any, until: float) -> None:
        self._cache = cache
        self._attribute = attribute
        self._real = client
        self._until = until
        self._probing = threading.RLock()  # taken without waiting: one probe at a time

    def after_fork_in_child(self) -> None:
        """Drop the probe's lock, which a thread of the parent may have held at the fork."""
        self._probing = threading.RLock()

    @property
    def real(self) -> Any:
        """The client this stands in for."""
        return self._real

    def extend(self, until: float) -> None:
        """Stand in until ``until`` at least: the server failed again."""
        self._until = max(self._until, until)

    def restore(self) -> Any:
        """Put the real client back on the cache, unless a client was assigned in this
        stand-in's place meanwhile, and return it."""
        put_back(self._cache, self._attribute, self, self._real)
        return self._real

    def __getattr__(self, name: str) -> Any:
        cache = self._cache
        probing = self._probing
        try:
            # in the try: a signal handler raising as acquire() returns would leave it held,
            # and the server never asked again
            if time.monotonic() < self._until or not probing.acquire(blocking=False):
                raise ServerDown(
                    f"Redis at {cache._where} failed less than {cache.dead_timeout:g}s ago; "
                    "not asked again before then"
                )
            try:
                self._real.ping()
            except cache._outage_errors as err:
                if not pool_exhausted(err):  # a full pool says the server is busy, not down
                    self._until = time.monotonic() + cache.dead_timeout
                    raise ServerDown(
                        f"Redis at {cache._where} still fails ({type(err).__name__}: {err}); "
                        f"asked again in {cache.dead_timeout:g}s"
                    ) from err
            except Exception:
                pass  # an answer, such as an ACL refusing PING: the server is up
        finally:
            # an RLock knows its owner: only this call's acquire() is undone
            try:  # noqa: SIM105 (a signal as suppress() or _is_owned() returns leaves it held)
                probing.release()
            except RuntimeError:  # not taken by this call
                pass
        return getattr(self.restore(), name)
