"""``RedisCache``: Redis and Redis Cluster through redis-py.

Schemes: ``redis://``, ``rediss://`` (TLS), ``redis+unix:///path.sock`` and ``unix:///path.sock``,
``redis+cluster://host:port,host:port``.

This module holds the backend class, with the hot paths of its calls, and its plugin hook. The
class is built on bases next to it: ``_redis_assigned`` holds which clients the cache uses and
their assignment under cachelib's names, ``_redis_outages`` what it does when a server fails,
``_redis_processes`` its pickled and forked copies, ``_redis_counters`` the counters and
``_redis_batches`` the commands sent together. ``_redis_clients`` builds the clients of one
server and maps URLs (``_redis_tls`` checks the TLS options), ``_redis_cluster`` holds the
cluster support, ``_redis_wire`` the commands the hot calls send themselves,
``_redis_dead_server`` the stand-in for a failed server, ``_redis_pools`` the repair of
connection pools after an interrupted call or a fork, ``_redis_replacing`` the closing of
replaced clients, and ``_redis_masking`` the masking of passwords a server echoes.
"""

from __future__ import annotations

import codecs
import inspect
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

from cacheplug.backends import _redis_cluster as cluster
from cacheplug.backends import _redis_wire as wire
from cacheplug.backends._redis_batches import Batches
from cacheplug.backends._redis_clients import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEAD_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    INSTALL_HINT,
    URL_OPTIONS,
    checked_options,
    checked_server,
    options_from_url,
    refuse_decoding,
    refuse_unknown_keywords,
)
from cacheplug.backends._redis_counters import (
    INC_SHA,
    INT64_MAX,
    INT64_MIN,
    Counters,
    escaped,
    is_decimal,
    unescaped,
)
from cacheplug.backends._redis_masking import secrets_of
from cacheplug.backends._redis_outages import LONE_VALUE
from cacheplug.backends._redis_processes import ProcessCopies
from cacheplug.backends._redis_replacing import disconnect_dedicated
from cacheplug.core.arguments import check_delta, check_key, check_mapping
from cacheplug.core.cache_url import host_port
from cacheplug.core.errors import ConfigurationError, SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.signing import SIGNED_MARK
from cacheplug.core.timeouts import Timeout, normalize_timeout
from cacheplug.serializers.pickle import PickleSerializer

if TYPE_CHECKING:
    from redis.cluster import ClusterNode

    from cacheplug.core.cache_url import CacheURL
    from cacheplug.core.hookspecs import RegisterFn
    from cacheplug.core.serializer import SerializerLike

__all__ = ["RedisCache"]

# Redis refuses an expiry past 2**63 ms from now: longer timeouts get this (146 million years).
MAX_TTL_SECONDS = 2**62 // 1000


class RedisCache(Batches, Counters, ProcessCopies):
    """A cache on a Redis server or Redis Cluster, drop-in for cachelib's ``RedisCache``.

    Integers in the signed 64-bit range are stored as plain decimals so ``inc``/``dec`` use
    Redis' atomic ``INCRBY``; everything else goes through the serializer (and is signed with
    a ``secret``). A server that cannot be reached answers the contract's outage values,
    logged, never an exception.

    :param host: server host name, or a ready ``redis.Redis``/``RedisCluster`` client to use.
    :param port: server port.
    :param password: AUTH password (with ``username=``: ACL user).
    :param db: database number (a Redis Cluster has only db 0).
    :param default_timeout: seconds an entry lives when ``set`` gets no timeout; 0 = forever.
    :param key_prefix: prepended to every key; ``clear`` then deletes only keys under it. A
        callable (as cachelib allows) is called for the prefix on every operation.
    :param startup_nodes: ``[(host, port), ...]`` (or redis-py ``ClusterNode`` objects) of a
        Redis Cluster; builds a ``RedisCluster``.
    :param retries: how often an idempotent command (get, set, has, the ``*_many`` reads and
        writes, clear) is retried after a connection error on a single server (no backoff). A
        timeout is never retried, nor are ``inc``/``add``/``delete``/``delete_many``: the server
        may have run them already. A cluster client retries nothing.
    :param dead_timeout: seconds a single server that failed to connect or answer in time is
        not asked again (operations answer the outage values at once); 0 turns this off.
    :param ignore_delete_many_errors: accepted for cachelib compatibility; no effect.
    :param check_connection: ping at construction and raise :class:`RuntimeError` on failure.
    :param kwargs: passed to ``redis.Redis`` / ``RedisCluster``; the defaults here are
        ``socket_connect_timeout=1.0`` and ``socket_timeout=5.0`` so a dead server answers fast.
    :raises ConfigurationError: redis-py is missing, or an option is invalid.
    """

    url_options: ClassVar[Mapping[str, type]] = URL_OPTIONS

    def __init__(  # noqa: PLR0917 (cachelib's positional signature)
        self,
        host: Any = "localhost",
        port: int = 6379,
        password: str | None = None,
        db: int = 0,
        default_timeout: float = 300,
        key_prefix: str | Callable[[], str] | None = None,
        ignore_delete_many_errors: bool = True,
        check_connection: bool = False,
        *,
        serializer: str | SerializerLike | None = None,
        secret: str | bytes | None = None,
        startup_nodes: Sequence[tuple[str, int] | ClusterNode] | None = None,
        retries: int = DEFAULT_RETRIES,
        dead_timeout: float = DEFAULT_DEAD_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(default_timeout, serializer=serializer, secret=secret)
        self.key_prefix = key_prefix
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.exceptions import ClusterDownError, RedisClusterException
            from redis.retry import Retry
        except ImportError as err:
            raise ConfigurationError(INSTALL_HINT) from err
        if host is None:
            raise ConfigurationError("RedisCache host may not be None; give a name or a client")
        refuse_decoding(host, kwargs)
        if isinstance(host, str) or startup_nodes is not None:  # a client it builds
            refuse_unknown_keywords(_OWN_KEYWORDS, kwargs, startup_nodes is not None)
        self.dead_timeout = checked_options(retries, dead_timeout, kwargs)
        self._secrets = secrets_of(password, kwargs, None if isinstance(host, str) else host)
        self.ignore_delete_many_errors = ignore_delete_many_errors
        # CLUSTERDOWN is a ResponseError to redis-py, yet no refusal of a command: an outage
        self._response_error, self._cluster_down = redis.ResponseError, ClusterDownError
        self._no_script_error = redis.exceptions.NoScriptError
        self._failures: tuple[type[Exception], ...] = (
            redis.RedisError,
            RedisClusterException,
            OSError,
        )
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        self._outage_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._owns_client = True
        self._cluster = startup_nodes is not None
        # What builds this cache's clients, again in a copy unpickled in another process:
        # none for a client passed in, which cannot travel.
        self._recipe: _Recipe | None = None
        if startup_nodes is not None:
            # redis-py's cluster client retries time-outs whatever the Retry says.
            kwargs.setdefault("retry", Retry(NoBackoff(), 0))
            nodes = cluster.cluster_nodes(startup_nodes, db)
            self._where = "cluster " + ",".join(host_port(h, p) for h, p in nodes)
            self._recipe = _Recipe(nodes, password, retries, kwargs)
        elif isinstance(host, str):
            host, port, db, socket_path = checked_server(host, port, db, kwargs)
            self._where = f"unix:{socket_path}" if socket_path else host_port(host, port)
            self._where += f"/{db}"
            kwargs.update(host=host, port=port, password=password, db=db)
            self._recipe = _Recipe(None, None, retries, kwargs)
        else:
            self._adopt(host)
        self._build_clients(host)
        # Lone surrogates (legal in a str) cannot be UTF-8: such names are sent encoded with
        # surrogatepass, distinct from every other name; hiredis' packer ignores encoding_errors.
        # A client the user gave (or configured) gets such names as str: its packer decides.
        self._name_errors = (
            "surrogatepass"
            if self._owns_client
            and "encoding_errors" not in kwargs
            and codecs.lookup(kwargs.get("encoding", "utf-8")).name == "utf-8"
            else "strict"
        )
        if check_connection:
            self._check_connection()

    @property
    def key_prefix(self) -> str:
        """Prepended to every key; a callable given as ``key_prefix`` is asked once per call."""
        prefix = self._key_prefix
        if isinstance(prefix, str):
            return prefix
        asked = prefix()
        if not isinstance(asked, str):
            raise TypeError(f"key_prefix callable must return str, got {type(asked).__name__}")
        return asked

    @key_prefix.setter
    def key_prefix(self, prefix: str | Callable[[], str] | None) -> None:
        if prefix is not None and not isinstance(prefix, str) and not callable(prefix):
            raise TypeError(
                f"key_prefix must be str or a callable returning str, got {type(prefix).__name__}"
            )
        self._key_prefix: str | Callable[[], str] = prefix or ""

    def _get_prefix(self) -> str:
        """The key prefix of the moment, a callable ``key_prefix`` asked for it: what
        cachelib's ``RedisCache`` gives its subclasses under this name (Flask-Caching's
        ``unlink`` prefixes its keys with it)."""
        return self.key_prefix

    # -- building from a URL -----------------------------------------------------------------

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> Self:
        """Map ``redis[s]://``, ``[redis+]unix://`` and ``redis+cluster://`` URLs on ``__init__``;
        a ``host``, ``port``, ``unix_socket_path`` or ``startup_nodes`` keyword wins over what
        the URL says in its place.

        :raises ConfigurationError: the URL does not fit its scheme, or a ``host`` or ``port``
            keyword is given for a socket or a cluster, which take none.
        """
        options = options_from_url(url, options, _OWN_KEYWORDS)
        if url.scheme in ("redis", "rediss"):
            host, port = url.hosts[0] if url.hosts else ("localhost", None)
            return cls(**{"host": host, "port": port or 6379, **options})
        misplaced = sorted({"host", "port"} & options.keys())
        if misplaced:
            where = "a socket path" if url.scheme != "redis+cluster" else "its nodes"
            raise ConfigurationError(
                f"keyword {' and '.join(misplaced)} cannot apply to {url.redacted()!r}, which "
                f"names {where}; use a redis://host:port URL, or name them in this one"
            )
        if url.scheme == "redis+cluster":
            nodes = [(h, p or 6379) for h, p in url.hosts]
            return cls(**{"startup_nodes": nodes, **options})
        return cls(**{"unix_socket_path": url.path, **options})

    # -- encoding -------------------------------------------------------------------------------

    def _dump(self, value: Any, key: str, prefix: str) -> Any:
        """The payload of ``key``'s ``value`` as stored under ``prefix``."""
        # Plain decimals keep counters usable by INCRBY (bools are not counters). Other ints
        # are the serializer's to keep or refuse, as on every other backend.
        if type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return b"%d" % value
        # a serializer's data that reads as a decimal (text "12") must not pass for a counter
        return escaped(self._encode(value, key, prefix))

    def _decoded(self, payload: bytes, key: str, prefix: str) -> Any:
        """The value in the ``payload`` of ``key`` under ``prefix`` (it may raise): a plain
        decimal is a counter."""
        if 44 < payload[0] < 58:
            if is_decimal(payload):
                return int(payload)
            payload = unescaped(payload)
        if self._signer is not None:
            return self._decode(payload, key, prefix)
        serializer = self.serializer
        if type(serializer) is PickleSerializer:
            return pickle.loads(payload)
        return serializer.loads(payload)

    def _undecoded(self, key: str, payload: bytes, prefix: str, err: Exception) -> Any:
        """The value of a ``payload`` that :meth:`_decoded` refused with ``err``: ``None``,
        logged and counted, without calling the serializer again (its error says why)."""
        if not payload or (self._signer is None and payload.startswith(SIGNED_MARK)):
            # refused before the serializer saw it (no first byte to look at), or signed and
            # read without a secret: _decode_or_miss says so
            return self._decode_or_miss(key, payload, prefix)
        self._read_as_miss(key, err)
        return None

    def _other_type(self, key: str, name: str) -> None:
        """Read ``key``, whose ``name`` holds a list, hash... (another client made it), as an
        unreadable entry: a miss, logged and counted, no outage."""
        held = SerializationError(f"it holds a Redis {self._type(self._wire(name))}, not an entry")
        self._read_as_miss(key, held)
        self._misses += 1

    def _wire(self, name: str) -> str | bytes:
        """``name`` as this cache sends it: lone surrogates pass when the client is ours."""
        if self._name_errors == "surrogatepass" and not name.isascii():
            return name.encode("utf-8", "surrogatepass")
        return name

    def _name(self, key: str) -> str | bytes:
        """The Redis name of ``key``, as sent."""
        return self._wire(self.key_prefix + key)

    def _ttl_ms(self, timeout: Timeout) -> int:
        """Milliseconds to live: 0 never expires, negative is already expired."""
        if timeout is None:
            timeout = self._default_timeout
        elif type(timeout) is not int:
            timeout = normalize_timeout(timeout, self._default_timeout)  # floats: finite only
        if timeout > 0:
            return max(1, int(min(timeout, MAX_TTL_SECONDS) * 1000))
        return 0 if timeout == 0 else -1

    # -- the contract -----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        if type(key) is not str:
            check_key(key)
        prefix = self.key_prefix  # once: a callable's next answer may differ
        name = prefix + key
        reader = self._reader
        try:
            if reader is not None:
                payload = reader.get(self._wire(name))
            elif self._direct and (packed := wire.packed_one("GET", name, self._name_errors)):
                payload = wire.send(self._client, packed)
            else:
                payload = self._client.get(self._wire(name))
        except self._failures as err:
            if isinstance(err, self._response_error) and str(err).startswith("WRONGTYPE"):
                self._other_type(key, name)
                return None
            self._backend_error("get", err, reader is not None)
            return None
        if payload is None:
            self._misses += 1
            return None
        try:
            value = self._decoded(payload, key, prefix)
        except Exception as err:
            value = self._undecoded(key, payload, prefix, err)
        if value is None:  # unreadable, or a stored None, which reads like a miss
            self._misses += 1
            return None
        self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if type(key) is not str:
            check_key(key)
        ms = self._ttl_ms(timeout)
        prefix = self.key_prefix
        data = self._dump(value, key, prefix)
        name = prefix + key
        try:
            if (
                self._direct
                and type(data) is bytes
                and (packed := wire.packed_set(name, data, ms, self._name_errors))
            ):
                wire.send(self._client, packed)
            elif ms > 0:
                self._client.execute_command("SET", self._wire(name), data, "PX", ms)
            elif ms == 0:
                self._client.execute_command("SET", self._wire(name), data)
            else:
                self._client.delete(self._wire(name))
        except self._failures as err:
            sent = data if ms >= 0 else b""  # a negative timeout sends DEL, not the value
            self._backend_error("set", self._write_failure(err, self._wire(name), sent))
            return False
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        ms = self._ttl_ms(timeout)
        prefix = self.key_prefix
        data = self._dump(value, key, prefix)
        name = self._wire(prefix + key)
        try:
            if ms < 0:
                added = not self._client.exists(name)
                self._sets += added  # born expired: a write, as set counts it
                return added
            expiry = ("PX", ms) if ms else ()
            added = bool(self._once.execute_command("SET", name, data, "NX", *expiry))
        except self._failures as err:
            sent = data if ms >= 0 else b""  # a negative timeout sends EXISTS, not the value
            self._backend_error("add", self._write_failure(err, name, sent))
            return False
        self._sets += added
        return added

    def delete(self, key: str) -> bool:
        check_key(key)
        try:
            deleted = bool(self._once.delete(self._name(key)))
        except self._failures as err:
            self._backend_error("delete", err)
            return False
        self._deletes += deleted
        return deleted

    def has(self, key: str) -> bool:
        check_key(key)
        reader = self._reader
        try:
            return bool((self._client if reader is None else reader).exists(self._name(key)))
        except self._failures as err:
            self._backend_error("has", err, reader is not None)
            return False

    def clear(self) -> bool:
        prefix = self.key_prefix
        try:
            if self._cluster:  # every primary, whatever the others answer
                failed = cluster.each_primary(
                    self._client, lambda node: self._clear_on(node, prefix), self._failures
                )
            else:
                failed = None
                self._clear_on(self._client, prefix)
        except self._failures as err:
            failed = err
        if failed is not None:
            self._backend_error("clear", failed)
            return False
        return True

    def get_many(self, *keys: str) -> list[Any]:
        if not keys:
            return []
        prefix = self.key_prefix
        reader = self._reader
        direct = self._direct and reader is None
        packed = None
        try:
            names = [prefix + key for key in keys] if prefix or not direct else keys
            if direct:
                packed = wire.packed_mget(names, self._name_errors)
            sent: Sequence[str | bytes] = names if packed else list(map(self._wire, names))
        except TypeError:
            for key in keys:
                check_key(key)  # raises with the contract's message
            raise
        unread = 0  # names on a cluster node that failed: errors, not misses
        try:
            if self._cluster:
                payloads, unread = cluster.mget(
                    self._client, sent, lambda commands: self._pipeline(commands, "get_many")
                )
            elif packed is not None:
                payloads = wire.send_mget(self._client, packed)
            elif len(sent) <= wire.MGET_PIECE:
                payloads = (self._client if reader is None else reader).mget(sent)
            else:
                payloads = self._mget_pieces(sent, reader)
        except self._failures as err:
            self._backend_error("get_many", err, reader is not None)
            return [None] * len(keys)
        if self._signer is None and type(self.serializer) is PickleSerializer:
            # All hits and no counter: one pass. A miss (None) or a counter (a decimal, never
            # a pickle: it lacks the STOP opcode) makes pickle.loads raise; then value by value.
            try:
                values = list(map(pickle.loads, payloads))
            except Exception:
                pass
            else:
                return self._counted_reads(values)
        decoded = self._decoded
        values = []
        append = values.append
        for key, payload in zip(keys, payloads, strict=True):
            if payload is None:
                append(None)
                continue
            try:
                append(decoded(payload, key, prefix))
            except Exception as err:
                append(self._undecoded(key, payload, prefix, err))
        return self._counted_reads(values, unread)

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        check_mapping(mapping)
        for key in mapping:
            check_key(key)
        ms = self._ttl_ms(timeout)
        keys = list(mapping)
        if not keys:
            return []
        prefix = self.key_prefix
        # raises as set does
        payloads = [self._dump(value, key, prefix) for key, value in mapping.items()]
        if ms < 0:
            results = self._pipelined("DEL", [self._wire(prefix + key) for key in keys], "set_many")
            if results is None:
                return []
            pairs = zip(keys, results, strict=True)
            gone = [key for key, result in pairs if not isinstance(result, Exception)]
            count = len(gone)  # as set counts a born-expired write
            self._sets += count  # no call between its read and write
            return gone
        expiry = ("PX", ms) if ms else ()
        commands = [
            ("SET", self._wire(prefix + k), data, *expiry)
            for k, data in zip(keys, payloads, strict=True)
        ]
        lone = [i for i, data in enumerate(payloads) if len(data) >= LONE_VALUE]
        lone_keys = [keys[i] for i in lone]
        lone_commands = [commands[i] for i in lone]
        for i in reversed(lone):
            del keys[i], commands[i]
        results = self._pipeline(commands, "set_many") if commands else []
        if results is None:
            return []
        stored = [key for key, result in zip(keys, results, strict=True) if result is True]
        if lone_keys:
            counted = len(stored) < len(results)  # a write failed: logged and counted
            down = {  # cluster nodes that failed: each costs one timeout per call
                self._node_of(command[1])
                for command, result in zip(commands, results, strict=True)
                if self._cluster
                and isinstance(result, Exception)
                and not isinstance(result, self._response_error)
            }
            if not any(isinstance(result, self._cluster_down) for result in results):
                stored += self._set_lone(lone_keys, lone_commands, counted, down)
            done = set(stored)
            stored = [key for key in mapping if key in done]  # in the mapping's order, as cachelib
        count = len(stored)
        self._sets += count  # no call between its read and write
        return stored

    def delete_many(self, *keys: str) -> list[str]:
        for key in keys:
            check_key(key)
        if not keys:
            return []
        prefix = self.key_prefix
        commands = [("DEL", self._wire(prefix + key)) for key in keys]
        results = self._pipeline(commands, "delete_many", self._once)
        if results is None:
            return []
        deleted = [key for key, result in zip(keys, results, strict=True) if result == 1]
        count = len(deleted)
        self._deletes += count  # no call between its read and write
        return deleted

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` atomically (``INCRBY``); a new counter gets ``default_timeout``.

        :raises TypeError: ``delta`` or the stored value is not an integer (the value stays).
        :raises OverflowError: the result would leave the signed 64-bit range (the value stays).
        """
        check_key(key)
        check_delta(delta)
        if not INT64_MIN <= delta <= INT64_MAX:
            raise OverflowError(f"delta {delta} is outside the signed 64-bit range of counters")
        prefix = self.key_prefix
        args = (1, self._wire(prefix + key), delta, self._ttl_ms(None))
        try:
            if self._scripts_refused:
                value: int | None = self._inc_without_script(args)
            else:
                value = int(self._once.evalsha(INC_SHA, *args))
        except self._failures as err:
            value = self._inc_failed(key, prefix, args, err)
        if value is not None:
            self._sets += 1  # a counter written, as on every backend
        return value

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the idle connections of the clients this cache built (a client or pool passed
        in stays open); the cache connects again when used.

        Calls running meanwhile, in other threads, finish on their connections, which then go
        back to the pool open: closing them under a call would fail it as if the server were
        down.
        """
        if not self._owns_client:
            return
        self._drop_idle_connections(built=True)
        if self._cluster:  # asked for an attribute, a cluster client not yet built connects
            return
        for client in self._reals([self._client, self._once_client]):
            disconnect_dedicated(client)

    def _shown_key_prefix(self) -> str:
        # a callable key_prefix is shown, not called: it may raise outside the context it
        # reads (a request), and its answer of the moment is not the cache's setting
        prefix = self._key_prefix
        if isinstance(prefix, str):
            return repr(prefix)
        shown = getattr(prefix, "__qualname__", None) or type(prefix).__qualname__
        module = getattr(prefix, "__module__", None)
        return f"<callable {f'{module}.' if module else ''}{shown}>"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where}, {super().__repr__().partition('(')[2]}"


_OWN_KEYWORDS = tuple(inspect.signature(RedisCache.__init__).parameters)[1:-1]


class _Recipe(NamedTuple):
    """What builds a ``RedisCache``'s clients: ``nodes`` and ``password`` of a cluster (no
    ``nodes`` on one server, whose ``kwargs`` hold its address and password), how often its
    reads and writes are retried, and the redis-py client's keywords."""

    nodes: list[tuple[str, int]] | None
    password: str | None
    retries: int
    kwargs: dict[str, Any]


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    for scheme in ("redis", "rediss", "redis+unix", "unix", "redis+cluster"):
        register(scheme, RedisCache)
