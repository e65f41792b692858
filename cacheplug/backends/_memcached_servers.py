"""The memcached servers of a ``MemcachedCache`` and their connections.

One pool of pymemcache clients per server (parsed from its spec by ``_memcached_server_specs``)
with its health and namespace token, consistent hashing of keys onto servers. pymemcache itself
is never imported here: the backend passes its ``Client`` class in.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import select
import socket
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from cacheplug.backends._memcached_server_specs import Address, server_identity
from cacheplug.core.cache_url import host_port
from cacheplug.core.errors import ConfigurationError

__all__ = [
    "TIMEOUTS",
    "Ring",
    "Server",
    "check_pool_size",
    "closing_client",
    "connect_all",
    "idle_and_open",
    "make_servers",
    "readable",
]

_RING_POINTS = 160
#: A reply that did not come in time: kernel socket timeouts raise BlockingIOError.
TIMEOUTS = (BlockingIOError, TimeoutError)
#: Seconds a batch's first try at a connection waits: a reachable server on a LAN answers in
#: well under a millisecond; one still silent then gets its whole connect_timeout, at the same
#: time as the others.
_FIRST_TRY = 0.05


class _RawSerde:
    """Hands pymemcache pre-encoded ``(flags, bytes)`` pairs and gives them back undecoded."""

    @staticmethod
    def serialize(key: Any, value: tuple[int, bytes]) -> tuple[bytes, int]:
        return value[1], value[0]

    @staticmethod
    def deserialize(key: Any, value: bytes, flags: int) -> tuple[int, bytes]:
        return flags, value


_SERDE = _RawSerde()


class _MadeSockets:
    """A client's socket module during one connect, keeping the sockets it makes."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.made: list[socket.socket] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def socket(self, *args: Any) -> socket.socket:
        kind: Any = self._module.socket
        is_class = isinstance(kind, type)  # a bool: kind stays Any for __new__ and __init__
        if not is_class:
            made: socket.socket = kind(*args)
            self.made.append(made)
            return made
        # noted before its descriptor is opened: a signal handler's exception as the socket's
        # C part returns (socket.__init__ checks for signals there) would leave it unclosed
        made = kind.__new__(kind, *args)
        self.made.append(made)
        kind.__init__(made, *args)
        return made


@functools.cache
def closing_client(client_class: type[Any]) -> type[Any]:
    """``client_class`` (pymemcache's ``Client``) closing its sockets itself when a signal
    handler's exception (``KeyboardInterrupt``, a deadline) cuts a call short: the socket of a
    connect it interrupts (pymemcache closes it on an ``Exception`` only), and the socket of a
    client the call dropped (taken from its pool or given back as the signal came) as the
    client is freed, never by the socket's own finalizer with a ``ResourceWarning``."""

    class Client(client_class):  # type: ignore[misc]
        socket_module: Any
        sock: socket.socket | None

        def _connect(self) -> None:
            module = self.socket_module
            sockets = self.socket_module = _MadeSockets(module)
            try:
                super()._connect()
            except BaseException:
                for made in sockets.made:
                    if made is not self.sock:
                        # the C close: one cut short in its __init__ lacks what close() reads
                        close = socket.SocketType.close
                        (close if isinstance(made, socket.SocketType) else type(made).close)(made)
                raise
            finally:
                self.socket_module = module

        def __del__(self) -> None:
            sock = getattr(self, "sock", None)
            if sock is not None:
                sock.close()

    return Client


class Server:
    """One memcached server: its idle connections, its health and its namespace token."""

    def __init__(
        self,
        address: tuple[str, int] | str,
        factory: Callable[[], Any],
        idle: int,
        weight: int = 1,
    ):
        self.address = address
        self.weight = weight  # its share of the keys, relative to the other servers'
        self.name = address if isinstance(address, str) else host_port(*address)  # as written
        self.identity = server_identity(address)
        self._factory = factory
        self._idle: deque[Any] = deque()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()  # idle or in use
        self._max_idle = idle
        self.down_until = 0.0
        self.failure = ""  # why it was last marked down, as logged then
        self.token: str | None = None

    def acquire(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            client = self._factory()
            self._clients.add(client)
            return client

    def release(self, client: Any) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(client)
        else:
            client.close()

    def discard_idle(self) -> None:
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return

    def after_fork_in_child(self) -> None:
        """Close this process's copies of every connection, those a thread of the parent was
        using at the fork included: nothing here reads them, and a copy kept open would keep
        the connection open after the parent closes it."""
        self._idle.clear()
        for client in list(self._clients):
            client.close()
        self._clients = weakref.WeakSet()

    def seen_token(self, token: str) -> str:
        self.token = token
        return token


def check_pool_size(max_pool_size: object) -> int:
    """``max_pool_size``, once it is an int >= 1.

    :raises ConfigurationError: it is not.
    """
    if type(max_pool_size) is not int or max_pool_size < 1:
        raise ConfigurationError(f"max_pool_size must be an int >= 1, got {max_pool_size!r}")
    return max_pool_size


def make_servers(
    addresses: Iterable[Address],
    client_class: Any,
    *,
    connect_timeout: float,
    timeout: float,
    no_delay: bool,
    max_pool_size: int,
) -> list[Server]:
    """One :class:`Server` per address of ``addresses`` (``parse_servers``'), with no connection
    yet, connecting with ``client_class`` (pymemcache's ``Client``) and these settings."""
    return [
        Server(
            address,
            partial(
                client_class,
                address,
                serde=_SERDE,
                connect_timeout=connect_timeout,
                # Python's socket timeout keeps its deadline when a signal interrupts a wait
                # (and bounds a whole sendall); a kernel one (SO_RCVTIMEO) starts again on
                # each retry, so signals more frequent than it made a call wait forever.
                timeout=timeout,
                no_delay=no_delay,
                default_noreply=False,
            ),
            max_pool_size,
            weight,
        )
        for address, weight in addresses
    ]


class Ring:
    """Consistent hashing of keys onto servers (adding a server moves about 1/n of the keys)."""

    def __init__(self, servers: list[Server]) -> None:
        points = sorted(
            (_hash(f"{server.identity}-{point}"), index)
            for index, server in enumerate(servers)
            for point in range(_RING_POINTS * server.weight)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [servers[index] for _, index in points]

    def __call__(self, key: str) -> Server:
        index = bisect.bisect(self._hashes, _hash(key))
        return self._owners[index if index < len(self._owners) else 0]


def _hash(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def idle_and_open(sock: socket.socket) -> bool:
    """Whether a pooled connection is still open with nothing unread, without waiting."""
    # readable: closed or reset by the peer, or a stray reply waiting
    return not readable(sock, 0)


def readable(sock: socket.socket, seconds: float) -> bool:
    """Whether ``sock`` has bytes to read, or was closed or reset, within ``seconds``."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0, math.ceil(seconds * 1000))))


def connect_all(clients: list[Any]) -> dict[int, Exception]:
    """Connect each of ``clients`` (pymemcache clients with no socket); the error of each that
    failed, by ``id`` of the client.

    Each gets a short first try in the calling thread, which a reachable server answers in far
    less. Those still unanswered then wait their whole ``connect_timeout`` at the same time, so
    servers that drop connection attempts cost a batch one ``connect_timeout`` in all (plus a
    first try each), not one each, and a batch over healthy servers starts no thread.
    """
    failures: dict[int, Exception] = {}
    slow = []
    for client in clients:
        whole = client.connect_timeout
        if whole is not None and whole <= _FIRST_TRY:
            _connect(client, failures)
            continue
        client.connect_timeout = _FIRST_TRY
        try:
            client._connect()
        except TimeoutError:
            slow.append(client)
        except OSError as err:  # refused, unreachable, no such host: that server's error
            failures[id(client)] = err
        finally:
            client.connect_timeout = whole
    if len(slow) == 1:
        _connect(slow[0], failures)
    elif slow:
        _connect_at_once(slow, failures)
    return failures


def _connect(client: Any, failures: dict[int, Exception]) -> None:
    """Connect ``client`` in this thread; a failed connect (OSError) into ``failures``, anything
    else (raised by a signal handler) to the caller."""
    try:
        client._connect()
    except OSError as err:
        failures[id(client)] = err


def _connect_at_once(clients: list[Any], failures: dict[int, Exception]) -> None:
    """Connect ``clients`` at the same time: the first in this thread, the others in threads of
    their own (pymemcache connects with blocking calls, the name lookup included). Interrupted,
    it raises at once; a connection made after that is closed."""
    abandoned = threading.Event()  # the caller was interrupted: no one takes these connections

    def connect(client: Any) -> None:
        try:
            client._connect()
        except Exception as err:  # the batch reports it as that server's error
            failures[id(client)] = err
        else:
            # connected after an interrupted caller closed its clients: close it here, or the
            # socket waits for the garbage collector (a ResourceWarning)
            if abandoned.is_set():
                client.close()

    helpers = []
    try:
        for client in clients[1:]:
            # a daemon: a name lookup that hangs must not hold up the interpreter's exit
            helper = threading.Thread(
                target=connect, args=(client,), name="cacheplug-connect", daemon=True
            )
            try:
                helper.start()
            except RuntimeError:  # no thread to be had (at interpreter shutdown): in turn
                _connect(client, failures)
            else:
                helpers.append(helper)
        # in this thread, what is not a failed connect (OSError) was raised by a signal
        # handler: the caller's, at once, not after the other connects
        _connect(clients[0], failures)
        for helper in helpers:
            helper.join()
    except BaseException:
        # set before the caller closes the clients: a helper connected by then is closed by
        # the caller, one connected later closes its own
        abandoned.set()
        raise
