"""``MemcachedCache``: one or several memcached servers through pymemcache (scheme ``memcached``).

Entries carry flags that say how their bytes are encoded (``_memcached_items``), and integers
under 2**62 in size are stored as memcached counters, so ``inc``/``dec`` are one native ``incr``
(``_memcached_counters``). Keys memcached would refuse are sent in a hashed form
(``_memcached_keys``). The servers, given as specs (``_memcached_server_specs``), share the keys
by consistent hashing, with a pool of connections per server (``_memcached_servers``); the hot
commands speak memcached's text protocol directly (``_memcached_wire`` sends them,
``_memcached_replies`` reads the answers, ``_memcached_counter_wire`` holds the counters'
commands). Calls run on the pools
and skip a server that failed for a while (``_memcached_calls``); a batch over several servers
waits for the connections it opens at the same time and sends its requests to all of them before
it reads any reply, and what the ``*_many`` calls share is in ``_memcached_batches``. With a
``key_prefix``, every key lives in a namespace that ``clear`` replaces (``_memcached_namespace``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeAlias

from cacheplug.backends import _memcached_commands as commands
from cacheplug.backends import _memcached_namespace as namespace
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_batches import ServerBatches, store_many_at, store_many_in
from cacheplug.backends._memcached_calls import Call
from cacheplug.backends._memcached_commands import FAILED
from cacheplug.backends._memcached_counters import (
    INT64_MAX,
    INT64_MIN,
    incr_step,
    increment,
)
from cacheplug.backends._memcached_items import FlaggedItems
from cacheplug.backends._memcached_keys import (
    MAX_RELATIVE_EXPIRY,
    exptime_for,
    mapped_line,
    memcached_key,
    plain_line,
)
from cacheplug.backends._memcached_server_specs import parse_servers, url_servers
from cacheplug.backends._memcached_servers import (
    Ring,
    Server,
    check_pool_size,
    closing_client,
    make_servers,
)
from cacheplug.core.arguments import check_delta, check_key, check_mapping
from cacheplug.core.base import BaseCache
from cacheplug.core.errors import ConfigurationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.options import (
    LONGEST_SOCKET_TIMEOUT,
    check_bool,
    check_picklable,
    check_seconds,
)
from cacheplug.core.timeouts import Timeout, check_default_timeout, normalize_timeout

if TYPE_CHECKING:
    from cacheplug.core.cache_url import CacheURL
    from cacheplug.core.hookspecs import RegisterFn
    from cacheplug.core.serializer import SerializerLike

__all__ = ["MemcachedCache"]

INSTALL_HINT = "pip install 'cacheplug[memcached]'"

_Driver: TypeAlias = tuple[Any, tuple[type[Exception], ...], tuple[type[Exception], ...]]


def _driver() -> _Driver:
    """pymemcache's ``Client``, the engine errors (its own, and a namespace token other clients
    keep removing) and the connection errors."""
    try:
        from pymemcache.client.base import Client
        from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError
    except ImportError as err:
        raise ConfigurationError(
            f"MemcachedCache needs the pymemcache driver, which is not installed: {INSTALL_HINT}"
        ) from err
    engine_errors = (OSError, MemcacheError, namespace.TokenDroppedError)
    return closing_client(Client), engine_errors, (OSError, MemcacheUnexpectedCloseError)


class MemcachedCache(BaseCache, FlaggedItems, ServerBatches):
    """A cache on memcached, drop-in for cachelib's ``MemcachedCache``.

    Example::

        cache = MemcachedCache(["10.0.0.1:11211", "10.0.0.2:11211"], key_prefix="app:")
        cache = from_url("memcached://10.0.0.1,10.0.0.2:11212?serializer=msgpack&timeout=0.5")

    :param servers: ``"host:port"`` strings (port defaults to 11211), ``(host, port)`` tuples or
        unix socket paths; default ``["127.0.0.1:11211"]``. Keys are spread over several
        servers by consistent hashing.
    :param default_timeout: seconds (or a ``timedelta``) an entry lives by default; 0 = forever.
    :param key_prefix: namespace of this cache; ``clear`` then drops only its keys.
    :param pool_size, pool_blocking, ignore_delete_many_errors, memcache_client_lib: accepted
        for cachelib compatibility and ignored (connections are pooled per server on demand).
    :param check_connection: raise ``RuntimeError`` at construction when a server does not answer
        (kept as an attribute, as cachelib keeps it).
    :param serializer: see :class:`~cacheplug.BaseCache`. :param secret: see BaseCache.
    :param connect_timeout: seconds to wait for a connection. :param timeout: seconds to wait
        for a reply. :param no_delay: set TCP_NODELAY. :param max_pool_size: idle connections
        kept per server. :param dead_timeout: seconds a server that failed is skipped (its
        keys answer as in an outage) before it is tried again.
    :raises ConfigurationError: pymemcache is missing, or an argument is invalid.

    A pickled cache (handed to a ``spawn`` child) carries its options; the copy connects on its
    own, with ``stats`` from zero.
    """

    _servers: Sequence[Server] = ()  # until built: BaseCache sets key_prefix first
    #: what the constructor was given; a default for copies pickled before it was kept
    check_connection: bool = False
    #: The servers, their connections, health and namespace tokens, and the driver's errors:
    #: a pickled copy builds its own from ``_addresses`` and ``_connection_settings``.
    _process_local: ClassVar[frozenset[str]] = BaseCache._process_local | {
        "_servers",
        "_only",
        "_ring",
        "_engine_errors",
        "_connection_errors",
    }
    url_options: ClassVar[Mapping[str, type]] = {
        "connect_timeout": float,
        "timeout": float,
        "no_delay": bool,
        "max_pool_size": int,
        "dead_timeout": float,
    }

    def __init__(  # noqa: PLR0917 (cachelib's positional signature)
        self,
        servers: Iterable[str | tuple[str, int]] | str | None = None,
        default_timeout: float | timedelta = 300,
        key_prefix: str | None = None,
        pool_size: int = 1,
        pool_blocking: bool = True,
        ignore_delete_many_errors: bool = True,
        check_connection: bool = False,
        memcache_client_lib: str | None = None,
        *,
        serializer: str | SerializerLike | None = None,
        secret: str | bytes | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        no_delay: bool = True,
        max_pool_size: int = 16,
        dead_timeout: float = 1.0,
    ) -> None:
        driver = _driver()  # a missing driver is said before anything else
        super().__init__(
            default_timeout, key_prefix=key_prefix or "", serializer=serializer, secret=secret
        )
        for name, seconds in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            check_seconds(name, seconds, 0.001, most=LONGEST_SOCKET_TIMEOUT)
        self.dead_timeout = check_seconds("dead_timeout", dead_timeout)
        check_bool("no_delay", no_delay)
        self._reply_timeout = timeout
        self.ignore_delete_many_errors = ignore_delete_many_errors
        # read back by code written for cachelib, which keeps it; only the constructor acts on it
        self.check_connection = check_connection
        self._connection_settings: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "timeout": timeout,
            "no_delay": no_delay,
            "max_pool_size": check_pool_size(max_pool_size),
        }
        self._addresses = parse_servers(servers)
        client_class = self._build_servers(driver)
        if check_connection:
            for server in self._servers:
                if self._run(server, "connect", client_class.version) is FAILED:
                    raise RuntimeError(f"could not connect to memcached server {server.name}")

    def _build_servers(self, driver: _Driver | None = None) -> Any:
        """Build the servers of :attr:`_addresses`, not connected yet: for a new cache, and
        for a copy unpickled in another process (``driver``: :func:`_driver`'s answer, when the
        caller has it already). pymemcache's ``Client`` class, as used."""
        client_class, self._engine_errors, self._connection_errors = driver or _driver()
        self._servers = make_servers(self._addresses, client_class, **self._connection_settings)
        self._only: Server | None = self._servers[0] if len(self._servers) == 1 else None
        self._ring = Ring(self._servers)
        # a cache dropped without close() (Flask-Caching never closes one) closes its sockets
        # then, instead of leaving them to the garbage collector's ResourceWarning
        weakref.finalize(self, _discard_idle, self._servers)
        return client_class

    def __getstate__(self) -> dict[str, Any]:
        """The options, for a copy in another process (a ``spawn`` child) that connects to the
        same servers on its own, with the same settings; connections, server health, the
        namespace tokens last seen and ``stats`` stay here.

        :raises TypeError: the serializer cannot be pickled.
        """
        state = super().__getstate__()
        serializer = state.get("serializer")
        if serializer is not None:
            check_picklable("MemcachedCache", "serializer", serializer)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._build_servers()

    @property
    def key_prefix(self) -> str:
        """Namespace of this cache; reassigned, the cache works as one built with that prefix."""
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, prefix: str | None) -> None:
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"key_prefix must be str or None, got {type(prefix).__name__}")
        self._key_prefix = prefix or ""
        # one attribute, so a call running meanwhile sees the old or the new prefix, not a mix
        self._namespace = (prefix, namespace.token_key(prefix)) if prefix else None
        for server in self._servers:
            server.token = None  # the token of another namespace

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> Self:
        """``memcached://host[:port][,host[:port]...]?option=value``; no path or credentials.

        A host that is a percent-encoded absolute path (``%2Frun%2Fmemcached.sock``) is a unix
        socket. A ``servers`` keyword wins over the URL's hosts.
        """
        if url.username or url.password is not None or url.path.strip("/"):
            raise ConfigurationError(
                f"memcached:// takes hosts and options only (no path, no credentials), "
                f"got {url.redacted()!r}; write memcached://host1:11211,host2:11211?option=value"
            )
        servers = url_servers(url)
        if "servers" in options:
            return cls(**options)
        return cls(servers or None, **options)

    @property
    def default_timeout(self) -> float:
        """Seconds an entry lives when ``set`` gets no timeout; reassignable, as in cachelib,
        and checked as on every backend (a timedelta reads back as seconds)."""
        return self._default_timeout

    @default_timeout.setter
    def default_timeout(self, seconds: float) -> None:
        seconds = check_default_timeout(seconds)  # raises before anything changes
        self._default_timeout = seconds
        # a relative exptime is the same on every call: worked out once per value
        self._default_exptime = exptime_for(seconds) if seconds <= MAX_RELATIVE_EXPIRY else None

    def _timeout(self, timeout: Timeout) -> int:
        if timeout is None and self._default_exptime is not None:
            return self._default_exptime
        return exptime_for(normalize_timeout(timeout, self.default_timeout))

    # -- engine calls -----------------------------------------------------------------------------

    def _fetch_one(self, key: str, operation: str, space: tuple[str, str]) -> Any:
        """The raw item of ``key`` in the namespace ``space``, None, or ``FAILED``."""
        server = self._server(key, space)
        items = self._run(server, operation, namespace.fetch, server, [key], *space)
        return FAILED if items is FAILED else items.get(key)

    def _server(self, key: str, space: tuple[str, str] | None) -> Server:
        """The server of ``key``; in a namespace, placed by the prefixed key."""
        return self._only or self._ring(key if space is None else space[0] + key)

    def _call_one(
        self,
        operation: str,
        space: tuple[str, str] | None,
        key: str,
        in_namespace: Callable[..., Any],
        plain: Callable[..., Any],
        *args: Any,
    ) -> Any:
        """A call about ``key`` on its server: ``in_namespace(client, server, space, key, *args)``
        in the namespace ``space``, else (None) ``plain(client, memcached key, *args)``."""
        server = self._server(key, space)
        if space is not None:
            return self._run(server, operation, in_namespace, server, space, key, *args)
        return self._run(server, operation, plain, memcached_key(key), *args)

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        if type(key) is not str:
            check_key(key)
        space = self._namespace
        if space is not None:
            item = self._fetch_one(key, "get", space)
            if item is FAILED:
                return None  # an error, not a miss
        else:
            name = memcached_key(key).encode("ascii")
            items = self._run(self._only or self._ring(key), "get", wire.fetch, name)
            if items is FAILED:
                return None
            item = items.get(name)
        if item is None:
            self._misses += 1
            return None
        return self._unpack(key, item)

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if type(key) is not str:
            check_key(key)
        exptime = self._timeout(timeout)
        packed = self._pack(value, key)
        space = self._namespace
        stored = self._call_one("set", space, key, namespace.store, wire.store, packed, exptime)
        if stored is not True:
            return False
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if type(key) is not str:
            check_key(key)
        exptime = self._timeout(timeout)
        packed = self._pack(value, key)
        space = self._namespace
        added = self._call_one("add", space, key, namespace.add, commands.add, packed, exptime)
        if added is FAILED or not added:
            return False
        self._sets += 1
        return True

    def delete(self, key: str) -> bool:
        if type(key) is not str:
            check_key(key)
        space = self._namespace
        deleted = self._call_one("delete", space, key, namespace.delete, commands.delete)
        if deleted is FAILED or not deleted:
            return False
        self._deletes += 1
        return True

    def has(self, key: str) -> bool:
        if type(key) is not str:
            check_key(key)
        space = self._namespace
        return self._call_one("has", space, key, namespace.exists, commands.exists) is True

    def clear(self) -> bool:
        space = self._namespace
        if space is None:
            request, answers = b"flush_all 0\r\n", _FLUSHED
        else:
            token = namespace.new_token()
            request = wire.storage_request(b"set", space[1], (0, token.encode()), 0)
            answers = wire.STORED
        calls: list[Call] = [
            (server, wire.write_steps, ([request], answers)) for server in self._servers
        ]
        done = self._run_each("clear", calls)
        ok = True
        for server, answer in zip(self._servers, done, strict=True):
            if answer is FAILED:
                ok = False
            elif space is not None:
                server.seen_token(token)
        return ok

    def get_many(self, *keys: str) -> list[Any]:
        only = self._only
        line = None
        if self._namespace is None and only is not None:
            # keys memcached takes as they are, or else every key mapped (say, non-ASCII ones)
            line = plain_line(keys) or mapped_line(keys)
        if line is None or only is None:
            found, lost = self._fetch(keys, "get_many")
            unread = sum(key in lost for key in keys) if lost else 0
            return self._values(keys, [found.get(key) for key in keys], unread)
        items = self._run(only, "get_many", wire.fetch, line)
        if items is FAILED:
            return [None] * len(keys)
        return self._values(keys, [items.get(name) for name in line.split(b" ")])

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        check_mapping(mapping)
        for key in mapping:
            if type(key) is not str:
                check_key(key)
        exptime = self._timeout(timeout)
        packed = {key: self._pack(value, key) for key, value in mapping.items()}
        stored: list[str] = []
        # one namespace for the whole call, which places the keys and writes them
        space = self._namespace
        batches: list[tuple[Server, dict[str, Any], list[namespace.TokenDroppedError]]] = [
            (server, {key: packed[key] for key in group}, [])
            for server, group in self._by_server(packed, space).items()
        ]
        if space is not None and len(batches) == 1:  # nothing to overlap: the plain call is leaner
            ((server, items, dropped),) = batches
            args = (server, space, items, exptime, dropped)
            answers = [self._run(server, "set_many", store_many_at, *args)]
        else:
            calls: list[Call] = [
                (server, store_many_in, (server, space, items, exptime, dropped))
                if space is not None
                else (
                    server,
                    wire.store_many_steps,
                    ({memcached_key(key): item for key, item in items.items()}, exptime),
                )
                for server, items, dropped in batches
            ]
            answers = self._run_each("set_many", calls)
        for (server, items, dropped), done in zip(batches, answers, strict=True):
            stored += self._stored(server, space, items, exptime, done=done, dropped=dropped)
        count = len(stored)
        self._sets += count  # no call between its read and write
        done = set(stored)
        return [key for key in packed if key in done]

    def delete_many(self, *keys: str) -> list[str]:
        deleted: set[str] = set()
        space = self._namespace
        groups = self._by_server(keys, space)
        if space is not None and len(groups) == 1:  # nothing to overlap: the plain call is leaner
            ((server, group),) = groups.items()
            call = namespace.delete_many
            answers = [self._run(server, "delete_many", call, server, space, group)]
        else:
            calls: list[Call] = [
                (server, wire.delete_many_steps, ([memcached_key(key) for key in group],))
                if space is None
                else (server, namespace.delete_many_steps, (server, space, group))
                for server, group in groups.items()
            ]
            answers = self._run_each("delete_many", calls)
        for group, existed in zip(groups.values(), answers, strict=True):
            if existed is not FAILED:
                deleted.update(key for key, hit in zip(group, existed, strict=True) if hit)
        count = len(deleted)
        self._deletes += count  # no call between its read and write
        return [key for key in dict.fromkeys(keys) if key in deleted]

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` atomically (memcached ``incr``); the entry keeps its expiry.

        :raises TypeError: ``delta`` or the stored value is not an integer (the value stays).
        :raises OverflowError: the result, ``delta`` or the stored integer is outside the signed
            64-bit range (the value stays).
        """
        if type(key) is not str:
            check_key(key)
        check_delta(delta)
        if not INT64_MIN <= delta <= INT64_MAX:
            raise OverflowError(f"delta {delta} is outside the signed 64-bit range of counters")
        space = self._namespace
        server = self._server(key, space)
        if space is None:
            value = increment(self, server, memcached_key(key), key, delta)
        else:
            # the first incr reads the namespace token back in its round trip; one by 0 for a
            # delta counted by compare-and-swap, only to learn the entry's name
            step = incr_step(delta)
            counted = self._run(server, "inc", namespace.count, server, space, key, step or 0)
            if counted is FAILED:
                return None
            name, first = counted
            value = increment(self, server, name, key, delta, first)  # ignored for a CAS delta
        if value is not None:
            self._sets += 1  # a counter written, as on every backend
        return value

    def close(self) -> None:
        """Close the idle connections; the cache reconnects when used again."""
        _discard_idle(self._servers)

    def _after_fork_in_child(self) -> None:
        """Close the child's copies of the parent's sockets, never to share them."""
        super()._after_fork_in_child()
        # a fork while another thread was still building this cache: nothing pooled yet
        for server in getattr(self, "_servers", ()):
            server.after_fork_in_child()

    def __repr__(self) -> str:
        names = ", ".join(server.name for server in self._servers)
        return f"{super().__repr__()[:-1]}, servers=[{names}])"


#: The reply to ``flush_all``.
_FLUSHED = {b"OK": True}


def _discard_idle(servers: Iterable[Server]) -> None:
    for server in servers:
        server.discard_idle()


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("memcached", MemcachedCache)
