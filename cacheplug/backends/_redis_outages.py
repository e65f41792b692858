"""How a ``RedisCache`` answers a server that fails: the outage values, logged with the
passwords Redis may echo masked; a single server's clients standing aside for the dead time;
and a value Redis refused by closing the connection, told apart from a server down.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from cacheplug.backends._redis_assigned import AssignableClients
from cacheplug.backends._redis_dead_server import DeadServer, ServerDown
from cacheplug.backends._redis_masking import masked
from cacheplug.backends._redis_pools import closes_connection, pool_exhausted

__all__ = ["LONE_VALUE", "Outages"]

# Values this long may pass Redis' lowest proto-max-bulk-len or client-query-buffer-limit (1 MB),
# over which it closes the connection: set_many sends each alone, so one refusal loses no other.
LONE_VALUE = 2**20 - 2**16


class Outages(AssignableClients):
    """The failure handling of :class:`~cacheplug.backends.redis.RedisCache`, on its clients."""

    #: seconds a single server that failed is not asked again; 0 asks it every time
    dead_timeout: float
    #: the errors of an engine call that the contract turns into a value
    _failures: tuple[type[Exception], ...]
    #: those of them that make a single server's clients stand aside
    _outage_errors: tuple[type[Exception], ...]
    _response_error: type[Exception]

    def _check_connection(self) -> None:
        """Ping the server, as cachelib's ``check_connection=True`` does.

        :raises RuntimeError: the server does not answer (its error shown without passwords).
        """
        try:
            self._client.ping()
        except self._failures as err:
            shown = masked(err, self._secrets)
            cause = err if shown is err else None  # a traceback would show it in full
            raise RuntimeError(f"could not connect to Redis at {self._where}: {shown}") from cause

    def _write_failure(self, err: Exception, name: str | bytes, data: Any) -> Exception:
        """``err``, or a ``ResponseError`` when Redis closed the connection on a value over its
        limits (``proto-max-bulk-len``, ``client-query-buffer-limit``) and the server of
        ``name`` answers still, or every pooled connection is in use (a busy client says
        nothing of the server): a refused value, not a server down. A full pool that kept the
        value from being sent at all stays what it is."""
        from redis import ConnectionError as Closed  # not a TimeoutError: the server answered

        if len(data) < LONE_VALUE or pool_exhausted(err):
            return err
        if isinstance(err, self._response_error):
            if not closes_connection(err):
                return err
            self._drop_idle_connections()
            # the whole value fitted in the socket's buffers, so Redis' reply came first
            return self._refused(data, err)
        if not isinstance(err, Closed):
            return err
        try:
            if self._cluster:  # the node of the name, not the client's default node
                client = self._client
                client.get_redis_connection(client.get_node_from_key(name)).ping()
            else:
                self._client.ping()
        except self._failures as ping_err:
            if not pool_exhausted(ping_err):  # a full pool says nothing of the server
                return err
        return self._refused(data, err)

    def _refused(self, data: Any, err: Exception) -> Exception:
        """The error of a value Redis refused for its size, ``err`` its cause."""
        refused = self._response_error(
            f"Redis refused a value of {len(data)} bytes, over its proto-max-bulk-len or "
            f"client-query-buffer-limit ({type(err).__name__}: {err})"
        )
        refused.__cause__ = err
        return refused

    def _drop_idle_connections(self, built: bool = False) -> None:
        """Close the pooled connections no call is using, in the pools the clients built for
        themselves only when ``built``. Also after a protocol error: Redis closes the connection
        that carried it only after its reply was read, so the next command on it would fail."""
        for pool in self._pools(built):
            with contextlib.suppress(*self._failures):
                pool.disconnect(inuse_connections=False)

    def _backend_error(self, operation: str, err: Exception, read: bool = False) -> None:
        """Log and count ``err`` of ``operation``; an outage of a single server makes its
        client (the separate ``_read_client`` when ``read``) stand aside for ``dead_timeout``."""
        if (
            self.dead_timeout
            and not self._cluster
            and isinstance(err, self._outage_errors)
            and not isinstance(err, ServerDown)
            and not pool_exhausted(err)
        ):
            self._stand_aside(read)
        super()._backend_error(operation, masked(err, self._secrets))

    def _stand_aside(self, read: bool) -> None:
        """Put :class:`DeadServer` stand-ins in place of the clients of a server that failed."""
        until = time.monotonic() + self.dead_timeout
        with self._swapping:  # a client assigned meanwhile is not replaced by the old one's
            if read:
                reader = self._reader
                if reader is not None and not isinstance(reader, DeadServer):
                    self._reader = DeadServer(self, "_reader", reader, until)
                return
            client = self._client
            if isinstance(client, DeadServer):
                return
            self._client = DeadServer(self, "_client", client, until)
            once = self._once_client
            # still standing in since an outage only reads saw: a stand-in around it would
            # pile up one per outage, and close() would reach one that raises
            if isinstance(once, DeadServer):
                once.extend(until)
            elif once is not None:
                self._once_client = DeadServer(self, "_once_client", once, until)
