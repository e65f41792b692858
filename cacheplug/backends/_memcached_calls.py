"""Calls of ``MemcachedCache`` on its servers, one or a batch at a time, through their pools.

A call runs on a pooled connection of its server and answers ``FAILED`` on engine errors,
counted and logged; a connection error marks the server down for ``dead_timeout``, during which
calls skip it, and then one call tries it again. A call on a pooled connection that a server
restart closed is sent once more on a new one, unless applying it twice would answer wrongly.
A batch over several servers (``ServerCalls._run_each``) sends every first request before it
reads any reply.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from cacheplug.backends import _memcached_commands as commands
from cacheplug.backends import _memcached_counter_wire as counter_wire
from cacheplug.backends import _memcached_namespace as namespace
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import FAILED
from cacheplug.backends._memcached_servers import (
    TIMEOUTS,
    Server,
    connect_all,
    idle_and_open,
    readable,
)
from cacheplug.backends._memcached_wire import Steps, finish

__all__ = ["Call", "ServerCalls"]

#: A call of a batch on one server: ``(server, steps, args)``, run as ``steps(client, *args)``.
Call: TypeAlias = tuple[Server, Callable[..., Steps[Any]], tuple[Any, ...]]


class ServerCalls:
    """The engine calls of :class:`~cacheplug.backends.memcached.MemcachedCache`: they read its
    ``dead_timeout``, reply timeout and driver errors, and count and log through its stats."""

    if TYPE_CHECKING:
        dead_timeout: float
        _reply_timeout: float
        _engine_errors: tuple[type[Exception], ...]
        _connection_errors: tuple[type[Exception], ...]

        def _backend_error(self, operation: str, err: Exception) -> None: ...

    def _run(self, server: Server, operation: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(client, *args)`` on a pooled connection of ``server``; ``FAILED`` on errors."""
        trying = server.down_until
        if trying and not self._may_retry(server, operation):
            return FAILED
        client = None
        try:
            # inside the try: a signal handler raising as it starts must not leave the server
            # marked down for another dead time by _may_retry
            client = server.acquire()
            reused = client.sock is not None
            if reused and call in _SENT_ONCE and not idle_and_open(client.sock):
                client.close()  # closed by a server restart: never resent, so check first
            try:
                result = call(client, *args)
            except self._connection_errors as err:
                if not _may_resend(reused, call, err):
                    raise
                server.discard_idle()
                result = call(client, *args)
        except self._engine_errors as err:
            if self._failed(server, operation, err):
                trying = 0.0
            result = FAILED
        except BaseException:
            if client is not None:
                client.close()  # interrupted mid-call: a reply may still be on its way to it
            if trying:
                server.down_until = 0.0
            raise
        if trying:
            server.down_until = 0.0  # it answered
        server.release(client)
        return result

    def _may_retry(self, server: Server, operation: str) -> bool:
        """Whether a call may try ``server``, which failed: not within its dead time (the call
        fails, logged); after it, this call tries it and the others keep skipping it."""
        now = time.monotonic()
        if now < server.down_until:
            self._backend_error(
                operation,
                ConnectionError(
                    f"memcached {server.name} failed recently ({server.failure}); "
                    f"retrying it after {self.dead_timeout:g}s"
                ),
            )
            return False
        # a stalled server costs one timeout per dead_timeout, not one per waiting thread
        server.down_until = now + self.dead_timeout
        return True

    def _failed(self, server: Server, operation: str, err: Exception) -> bool:
        """Count and log the engine error ``err`` of a call on ``server``; whether it was a
        connection error, which marks the server down for ``dead_timeout``."""
        down = isinstance(err, self._connection_errors)
        if down:
            server.down_until = time.monotonic() + self.dead_timeout
            server.discard_idle()
            # the lines that skip it name the error too: they may be the only ones logged
            server.failure = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        self._backend_error(operation, _naming(err, server))
        return down

    def _run_each(self, operation: str, calls: Sequence[Call]) -> list[Any]:
        """Each of ``calls`` on a pooled connection of its server, as ``_run``, with every first
        request sent before any reply is read: one round trip, and at most one ``timeout``
        however many servers hang. Each call's answer, in order; ``FAILED`` on errors."""
        results: list[Any] = [FAILED] * len(calls)
        running: list[_Running] = []
        # a server tried after its dead time and its connection, until they are in running
        probed: Server | None = None
        taken: Any = None
        try:
            for index, (server, steps, args) in enumerate(calls):
                trying = server.down_until
                if trying and not self._may_retry(server, operation):
                    continue
                probed = server if trying else None
                taken = server.acquire()
                reused = taken.sock is not None
                if reused and steps in _SENT_ONCE and not idle_and_open(taken.sock):
                    taken.close()  # as in _run
                running.append(_Running(index, server, taken, steps, args, reused, trying))
                probed = taken = None
            unconnected = [run.client for run in running if run.client.sock is None]
            failures = connect_all(unconnected) if len(unconnected) > 1 else {}
            for run in running:
                # up to its first request sent, or its connection error thrown in
                self._step(run, operation, results, failures.get(id(run.client)))
            deadline = time.monotonic() + self._reply_timeout
            for later, run in enumerate(running):
                # the first reply read waits its socket's timeout, the others what is left of it
                if (
                    later
                    and not run.finished
                    and not readable(run.client.sock, deadline - time.monotonic())
                ):
                    self._step(run, operation, results, TimeoutError("timed out"))
                while not run.finished:
                    self._step(run, operation, results)
        except BaseException:
            if taken is not None:
                taken.close()
            if probed is not None:
                probed.down_until = 0.0
            for run in running:
                if not run.finished:
                    run.client.close()  # interrupted: a reply may still be on its way
                    if run.trying:
                        run.server.down_until = 0.0
            raise
        return results

    def _step(
        self,
        run: _Running,
        operation: str,
        results: list[Any],
        late: Exception | None = None,
    ) -> None:
        """Resume ``run`` up to its next request sent, or ``late`` thrown in (its reply did not
        come in time, or its connection failed); at its end, its answer into ``results`` and its
        connection back."""
        server, client = run.server, run.client
        try:
            try:
                if late is None:
                    next(run.steps)
                else:
                    run.steps.throw(late)
                return
            except StopIteration as done:
                result = done.value
            except self._connection_errors as err:
                if not _may_resend(run.reused, run.call, err):
                    raise
                server.discard_idle()
                result = finish(run.call(client, *run.args))
        except self._engine_errors as err:
            if self._failed(server, operation, err):
                run.trying = 0.0
            result = FAILED
        run.finished = True
        if run.trying:
            server.down_until = 0.0  # it answered
        server.release(client)
        results[run.index] = result


#: Calls never sent a second time: applied once and only the reply lost, a second attempt
#: would answer wrongly.
_SENT_ONCE = frozenset(
    {
        counter_wire.count,
        counter_wire.swap,
        commands.add,
        commands.delete,
        wire.delete_many_steps,
        namespace.add,
        namespace.count,
        namespace.delete,
        namespace.delete_many,
        namespace.delete_many_steps,
    }
)


def _may_resend(reused: bool, call: Callable[..., Any], err: Exception) -> bool:
    """Whether ``call``, failed with the connection error ``err``, may go once more on a new
    connection: a pooled connection may predate a server restart. Not for calls that must not
    be applied twice, nor after a timeout, which says the server is slow, not that the
    connection is stale."""
    return reused and call not in _SENT_ONCE and not isinstance(err, TIMEOUTS)


@dataclasses.dataclass(slots=True)
class _Running:
    """A call of ``ServerCalls._run_each`` on one server, with its connection."""

    index: int
    server: Server
    client: Any
    call: Callable[..., Steps[Any]]
    args: tuple[Any, ...]
    reused: bool
    trying: float  # this call tries the server again after its dead time
    steps: Steps[Any] = dataclasses.field(init=False)
    finished: bool = False

    def __post_init__(self) -> None:
        self.steps = self.call(self.client, *self.args)


def _naming(err: Exception, server: Server) -> Exception:
    """``err`` as logged: naming ``server``, so that with several servers the log says which
    one failed (pymemcache's and the socket's errors do not)."""
    if server.name in str(err):
        return err
    try:
        named = type(err)(
            f"memcached {server.name}: {err}" if str(err) else f"memcached {server.name}"
        )
    except Exception:  # an exception type that takes other arguments: logged as it is
        return err
    return named
