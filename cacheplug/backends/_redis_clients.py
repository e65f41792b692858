"""How ``RedisCache`` reaches one Redis server: URL options, the checks on its constructor's
options, the redis-py clients it builds (TCP, TLS, unix socket), and the stand-in for a server
that just failed. A cluster's clients are in ``_redis_cluster``.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from cacheplug.backends._redis_replacing import put_back
from cacheplug.core._entering import entering
from cacheplug.core.errors import ConfigurationError, did_you_mean
from cacheplug.core.options import LONGEST_SOCKET_TIMEOUT, check_bool, check_seconds
from cacheplug.core.url import check_host, coerce_option, port_number, redact_text

if TYPE_CHECKING:
    from cacheplug.backends._redis_outages import Outages
    from cacheplug.core.url import CacheURL

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DEAD_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_SOCKET_TIMEOUT",
    "INSTALL_HINT",
    "URL_OPTIONS",
    "DeadServer",
    "ServerDown",
    "checked_host",
    "checked_options",
    "close_when_cut_short",
    "closes_connection",
    "driver_keywords",
    "int_free_packer",
    "options_from_url",
    "pool_after_fork_in_child",
    "pool_exhausted",
    "refuse_decoding",
    "refuse_unknown_keywords",
    "server_clients",
    "shown_host",
]

INSTALL_HINT = "RedisCache needs redis-py: pip install 'cacheplug[redis]'"
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_RETRIES = 1
DEFAULT_DEAD_TIMEOUT = 1.0
_NO_LIMIT = "to wait without limit"  # what None means for a socket timeout
_CERT_REQS = ("none", "optional", "required")
MAX_RETRIES = 10  # each retry of a refused connection or failed lookup adds its whole cost
MAX_DB = 2**31  # SELECT's index is a C int on the server
# "user:password@" in a host, or in its repr: from the start or a quote only, as a match
# tried at every letter would read to the end each time (minutes for a long host)
_USER_INFO = re.compile(r"(?:^|(?<=['\"]))[^'\"]*@")

URL_OPTIONS: Mapping[str, type] = {
    "db": int,
    "password": str,
    "username": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": bool,
    "max_connections": int,
    "health_check_interval": float,
    "retries": int,
    "dead_timeout": float,
    "client_name": str,
    "protocol": int,
    "ssl": bool,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_check_hostname": bool,
}


def options_from_url(
    url: CacheURL, options: Mapping[str, Any], own: Iterable[str]
) -> dict[str, Any]:
    """``options`` completed with what ``url`` says (credentials, db, TLS), once they fit its
    scheme and the client to build (``own``: the cache's keywords); the socket path, startup
    nodes or host and port are the caller's to take from ``url``.

    :raises ConfigurationError: the URL does not fit its scheme.
    """
    options = dict(options)
    for name, given in (("password", url.password), ("username", url.username or None)):
        query = url.query.get(name)
        if given is not None and query is not None and query != given:
            raise ConfigurationError(
                f"{url.redacted()!r} names two {name}s; give it in the user-info or as ?{name}="
            )
        if given is not None:
            options.setdefault(name, given)  # a keyword wins; ?name= is the same
    path_db = url.path.strip("/")
    if url.scheme in ("redis+unix", "unix"):
        if url.hosts or not url.path.strip("/"):
            raise ConfigurationError(
                f"{url.scheme}:// takes a socket path and no host, got {url.redacted()!r}; "
                f"write {url.scheme}:///path/to/redis.sock?db=0"
            )
        return options
    if path_db:
        if not path_db.isdigit():
            if "@" in url.path:  # user-info after a slash too many (redis:///:pw@host)
                raise ConfigurationError(
                    f"the path of '{url.scheme}:///***' must be a database number, like /0; "
                    f"user-info goes right after '//': '{url.scheme}://:password@host:6379/0'"
                )
            raise ConfigurationError(
                f"the path of {url.redacted()!r} must be a database number, like /0"
            )
        query_db = url.query.get("db")
        if query_db is not None and coerce_option("db", query_db, int) != int(path_db):
            raise ConfigurationError(
                f"{url.redacted()!r} names two databases; give it in the path or as ?db="
            )
        options.setdefault("db", int(path_db))  # a keyword wins; ?db= is the same
    if url.scheme == "redis+cluster":
        if not url.hosts:
            raise ConfigurationError(
                f"redis+cluster:// needs startup nodes, got {url.redacted()!r}; "
                f"write redis+cluster://host1:6379,host2:6379"
            )
        if options.pop("db", 0) != 0:
            raise ConfigurationError(f"a Redis Cluster has only db 0, got {url.redacted()!r}")
        takes = driver_keywords(cluster=True)[1] | set(own)
        refused = sorted(name for name in url.query if name in URL_OPTIONS and name not in takes)
        if refused:
            fitting = sorted(name for name in URL_OPTIONS if name in takes and name != "db")
            raise ConfigurationError(
                f"URL option {', '.join(map(repr, refused))} does not apply to "
                f"redis+cluster:// (redis-py's RedisCluster has no such setting); its Redis "
                f"options: {', '.join(fitting)}"
            )
        return options
    if len(url.hosts) > 1:
        raise ConfigurationError(
            f"{url.scheme}:// takes one host, got {url.redacted()!r}; "
            f"for a cluster write redis+cluster://host1:6379,host2:6379"
        )
    if url.scheme == "rediss":
        if options.get("ssl") is False:
            raise ConfigurationError(
                f"rediss:// always uses TLS, but {url.redacted()!r} says ssl=false; "
                "write redis://host:6379/0 for a plain connection, or drop ssl=false"
            )
        options["ssl"] = True
    return options


def refuse_decoding(host: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise unless ``host`` is a name or a client, and replies stay bytes, on a client built
    here or one given as ``host``."""
    if not isinstance(host, str) and not callable(getattr(host, "execute_command", None)):
        raise TypeError(
            f"RedisCache host must be a host name (str) or a redis-py client, "
            f"got {type(host).__name__}"
        )
    given: Mapping[str, Any] = (
        {} if isinstance(host, str) else getattr(host, "get_connection_kwargs", dict)()
    )
    if kwargs.get("decode_responses") or given.get("decode_responses"):
        raise ConfigurationError("RedisCache stores bytes; decode_responses is not supported")


class UnknownKeywordError(ConfigurationError, TypeError):
    """A keyword that neither ``RedisCache`` nor the redis-py client it builds takes.

    A ``TypeError`` too, as Python raises for an unexpected keyword argument.
    """


@functools.cache  # read once: every RedisCache built, and a cluster URL, asks
def driver_keywords(cluster: bool) -> tuple[type[Any], frozenset[str]]:
    """The redis-py client class a cache builds and the keywords it takes."""
    import inspect

    try:
        import redis
    except ImportError as err:
        raise ConfigurationError(INSTALL_HINT) from err

    client: type[Any] = redis.RedisCluster if cluster else redis.Redis
    takes = frozenset(inspect.signature(client.__init__).parameters)
    if cluster:
        from redis.cluster import REDIS_ALLOWED_KEYS

        # what it hands on to each node's redis.Redis: the rest of REDIS_ALLOWED_KEYS
        # (connection_class...) serves its from_url only, and fails every node's connect
        node = frozenset(inspect.signature(redis.Redis.__init__).parameters)
        takes |= frozenset(REDIS_ALLOWED_KEYS) & node
    return client, takes


def refuse_unknown_keywords(own: Iterable[str], kwargs: Mapping[str, Any], cluster: bool) -> None:
    """Raise unless the redis-py client to build takes every keyword of ``kwargs``.

    ``RedisCluster`` would drop an unknown one silently, ``redis.Redis`` raise a bare
    ``TypeError`` that names neither the cache nor what is accepted.
    """
    if cluster and "connection_pool" in kwargs:  # redis-py would share it between all nodes
        raise ConfigurationError(
            "RedisCache with startup_nodes takes no connection_pool: every cluster node "
            "needs its own; pass a ready RedisCluster as host instead"
        )
    client, takes = driver_keywords(cluster)
    own = set(own)
    driver = takes - (own | {"self", "kwargs", "startup_nodes", "url"})
    unknown = sorted(set(kwargs) - driver)
    if unknown:
        raise UnknownKeywordError(
            f"unknown keyword {', '.join(map(repr, unknown))} for RedisCache; accepted: its own "
            f"({', '.join(sorted(own))}) and those of redis-py's {client.__name__} "
            f"({', '.join(sorted(driver))})"
            + "".join(did_you_mean(name, own | driver, named=len(unknown) > 1) for name in unknown)
        )


def checked_port(port: object) -> int:
    """``port`` as an int from 1 to 65535; text of digits counts (a port read from the
    environment), as redis-py connects to it."""
    number = port_number(port)
    if number is None:
        raise ConfigurationError(f"port must be a number from 1 to 65535, got {port!r}")
    return number


def checked_server(
    host: str, port: object, db: object, kwargs: Mapping[str, Any]
) -> tuple[str, int, int, str | None]:
    """``host``, ``port``, ``db`` and the unix socket path in ``kwargs`` of one server, once
    redis-py can connect with them (it would fail, or raise from, every call).

    :raises ConfigurationError: one of them is invalid.
    """
    path = kwargs.get("unix_socket_path")
    if path is not None and not isinstance(path, str):
        raise TypeError(f"unix_socket_path must be a str, got {type(path).__name__}")
    if path is not None and "\0" in path:  # the kernel would connect to the path cut there
        raise ConfigurationError(f"unix_socket_path {path!r} contains a NUL byte; give a path")
    # redis-py leaves the host alone beside a socket path: one given as both still connects
    shown = check_host(host) if path is not None else checked_host(host)
    return shown, checked_port(port), checked_db(db), path


def checked_host(host: str) -> str:
    """``host`` once it is a host name or an IP address.

    A URL (or ``user:password@host``) given as a host would never connect, and redis-py's
    error of each call, logged, would show its password.

    :raises ConfigurationError: says so without the password, or what else is wrong.
    """
    if "/" in host or "@" in host:
        socket = " (a unix socket's path as unix_socket_path=)" if host[0] == "/" else ""
        raise ConfigurationError(
            f"host {shown_host(host)!r} is not a host name or IP address; give a URL to "
            "from_url() (redis://:password@host:6379/0), or host=, port=, password= apart"
            f"{socket}"
        )
    return check_host(host)


def shown_host(text: str) -> str:
    """``text``, what was given as a host (or a repr holding it), with the password of a URL
    or of ``user:password@host`` in it masked."""
    if "://" in text:
        return redact_text(text)
    return _USER_INFO.sub("***@", text)


def checked_db(db: object) -> int:
    """``db`` once it is a database number Redis' SELECT can take."""
    if type(db) is not int or not 0 <= db < MAX_DB:
        raise ConfigurationError(f"db must be a database number, an int >= 0, got {db!r}")
    return db


def checked_options(retries: int, dead_timeout: float, kwargs: dict[str, Any]) -> float:
    """``dead_timeout`` as a float, once it, ``retries`` and the client's ``kwargs`` that
    redis-py takes unchecked are known to be valid (redis-py would only fail the first call,
    or every connection)."""
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
        raise ConfigurationError(
            f"retries must be an int >= 0 and <= {MAX_RETRIES}, got {retries!r}"
        )
    for name in ("socket_connect_timeout", "socket_timeout"):
        if kwargs.get(name) is not None:
            kwargs[name] = check_seconds(
                name, kwargs[name], above=True, most=LONGEST_SOCKET_TIMEOUT, none=_NO_LIMIT
            )
    if kwargs.get("health_check_interval") is not None:
        kwargs["health_check_interval"] = check_seconds(
            "health_check_interval", kwargs["health_check_interval"], none="for no checks"
        )
    client = kwargs.get("client_name")
    if client is not None and (
        not isinstance(client, str) or not all("!" <= c <= "~" for c in client)
    ):
        raise ConfigurationError(
            f"client_name must be printable ASCII without spaces, as CLIENT SETNAME takes it, "
            f"got {client!r}"
        )
    if kwargs.get("protocol") not in (None, 2, 3, "2", "3"):
        raise ConfigurationError(
            f"protocol must be 2 or 3 (RESP2, RESP3), got {kwargs['protocol']!r}"
        )
    reqs = kwargs.get("ssl_cert_reqs")
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ConfigurationError(
                f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)} (in any case) or an "
                f"ssl.VerifyMode, got {reqs!r}"
            )
        kwargs["ssl_cert_reqs"] = reqs.lower()  # redis-py takes lower case only
    for option, kind in URL_OPTIONS.items():
        if kind is bool and kwargs.get(option) is not None:
            check_bool(option, kwargs[option])
    _refuse_ignored_tls(kwargs)
    pool = kwargs.get("max_connections")
    if pool is not None and (type(pool) is not int or pool < 0):
        raise ConfigurationError(
            f"max_connections must be an int >= 1 (or 0, redis-py's default size), got {pool!r}"
        )
    for option, lookup in (("encoding", codecs.lookup), ("encoding_errors", codecs.lookup_error)):
        if option in kwargs:
            try:
                lookup(kwargs[option])
            except (LookupError, TypeError):
                raise ConfigurationError(f"unknown {option} {kwargs[option]!r}") from None
    checked_tls(kwargs)
    return check_seconds("dead_timeout", dead_timeout)


def _refuse_ignored_tls(kwargs: Mapping[str, Any]) -> None:
    """Raise unless redis-py would honour every TLS setting of a client's ``kwargs``: it reads
    ``ssl_*`` only with ``ssl`` on, and never wraps a unix socket in TLS, so a user would get
    a connection in clear text while believing it verified.

    :raises ConfigurationError: names the settings and what TLS needs.
    """
    tls = sorted(
        name for name, value in kwargs.items() if name.startswith("ssl_") and value is not None
    )
    path = kwargs.get("unix_socket_path")
    if path is not None and (tls or kwargs.get("ssl")):
        named = ["ssl", *tls] if kwargs.get("ssl") else tls
        raise ConfigurationError(
            f"{', '.join(named)} cannot apply to the unix socket {path!r}: redis-py never wraps "
            f"one in TLS; drop {'them' if len(named) > 1 else 'it'}, or connect over TCP with "
            f"rediss://host:6379/0 for TLS"
        )
    if tls and not kwargs.get("ssl"):
        raise ConfigurationError(
            f"{', '.join(tls)} would be ignored on a plain connection: TLS options need "
            f"rediss:// or ?ssl=true in a URL, ssl=True as a keyword"
        )


class _NoPassphrase(Exception):
    """An encrypted key met without an ``ssl_password``."""


def checked_tls(kwargs: dict[str, Any]) -> None:
    """Raise unless the local files of a TLS connection in ``kwargs`` load as redis-py loads
    them on every connect, where a mistake would pass for a server outage. Without
    ``ssl_password``, a key found encrypted on a later connect fails that connect instead of
    asking for its passphrase on the process' terminal, without a timeout.

    :raises ConfigurationError: names the option, its file and what is wrong with it.
    """
    if kwargs.get("ssl") is not True:
        return
    import ssl

    for option in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"):
        path = kwargs.get(option)
        if path is not None:
            _check_readable(option, path, directory=option == "ssl_ca_path")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for option, where in (("ssl_ca_certs", "cafile"), ("ssl_ca_data", "cadata")):
        if kwargs.get(option) is not None:
            try:
                context.load_verify_locations(**{where: kwargs[option]})
            except (ssl.SSLError, TypeError, ValueError) as err:
                shown = f" {kwargs[option]!r}" if where == "cafile" else ""
                raise ConfigurationError(
                    f"{option}{shown} holds no CA certificate redis-py can load ({err})"
                ) from None
    certfile, keyfile = kwargs.get("ssl_certfile"), kwargs.get("ssl_keyfile")
    if certfile is None and keyfile is None:
        return
    if certfile is None:
        raise ConfigurationError(
            f"ssl_keyfile {keyfile!r} needs ssl_certfile, the client certificate of its key"
        )
    key = ("ssl_keyfile", keyfile) if keyfile is not None else ("ssl_certfile", certfile)
    given = kwargs.get("ssl_password")
    asked: list[bool] = []

    def passphrase() -> Any:
        asked.append(True)
        if given is None:
            raise _NoPassphrase
        return given() if callable(given) else given

    try:
        context.load_cert_chain(certfile, keyfile, password=passphrase)
    except _NoPassphrase:
        raise ConfigurationError(
            f"{key[0]} {key[1]!r} holds an encrypted key; give its passphrase as ssl_password"
        ) from None
    except ssl.SSLError as err:
        raise ConfigurationError(_cert_chain_fault(certfile, key, bool(asked), err)) from None
    except (TypeError, ValueError) as err:  # says what is wrong, never the passphrase
        raise ConfigurationError(f"ssl_password cannot unlock {key[0]}: {err}") from None
    if given is None:  # a key encrypted later fails its connect, not waits for a terminal
        kwargs["ssl_password"] = functools.partial(_no_passphrase, *key)


def _check_readable(option: str, path: object, directory: bool) -> None:
    """Raise unless ``path`` names a file this process can read (a directory, when
    ``directory``)."""
    if not isinstance(path, str | bytes | os.PathLike):  # an int would open a descriptor
        raise ConfigurationError(f"{option} must be a path (str), got {path!r}")
    if "\0" in os.fsdecode(path):  # open() would raise a bare ValueError
        raise ConfigurationError(f"{option} {path!r} contains a NUL byte; give a path")
    if directory:
        if not os.path.isdir(path):
            raise ConfigurationError(f"{option} {path!r} is not a directory")
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ConfigurationError(f"{option} {path!r} cannot be read: {err.strerror}") from None


def _cert_chain_fault(certfile: Any, key: tuple[str, Any], asked: bool, err: Exception) -> str:
    """What is wrong with a client certificate and key that did not load with ``err``
    (``asked``: the key asked for its passphrase, so the certificate loaded)."""
    import ssl

    if getattr(err, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"{key[0]} {key[1]!r} does not hold the key of ssl_certfile {certfile!r}"
    if asked:
        return f"ssl_password does not unlock the key in {key[0]} {key[1]!r}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except ssl.SSLError:
        return f"ssl_certfile {certfile!r} holds no certificate in PEM format ({err})"
    return f"{key[0]} {key[1]!r} holds no private key in PEM format ({err})"


def _no_passphrase(option: str, path: Any) -> NoReturn:
    """Refuse to unlock an encrypted key (``ssl_password`` for redis-py)."""
    import ssl

    # two arguments: redis-py shows them as "Error <first> connecting to host:port. <second>."
    raise ssl.SSLError(
        "no passphrase", f"{option} {path!r} holds an encrypted key; give ssl_password"
    )


def server_clients(retries: int, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """A ``redis.Redis`` retrying connection errors, and one never retrying, on one server."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    retry = Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
    clients = (
        redis.Redis(**{"retry": retry, **kwargs}),
        redis.Redis(**{**kwargs, "retry": Retry(NoBackoff(), 0)}),
    )
    for client in clients:
        close_when_cut_short(client.connection_pool)
    return clients


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
