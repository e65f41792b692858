"""How ``RedisCache`` reaches one Redis server: URL options, the checks on its constructor's
options, and the redis-py clients it builds (TCP, TLS, unix socket). The checks of the TLS
options are in ``_redis_tls``, what is done to the clients' pools in ``_redis_pools``, and a
cluster's clients are in ``_redis_cluster``.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cacheplug.backends._redis_pools import close_when_cut_short
from cacheplug.backends._redis_tls import (
    _no_passphrase,  # noqa: F401 (old pickles name it here)
    checked_cert_reqs,
    checked_tls,
    refuse_ignored_tls,
)
from cacheplug.core.cache_url import check_host, port_number
from cacheplug.core.errors import ConfigurationError, did_you_mean
from cacheplug.core.options import LONGEST_SOCKET_TIMEOUT, check_bool, check_seconds
from cacheplug.core.redaction import redact_text
from cacheplug.core.url_options import coerce_option

if TYPE_CHECKING:
    from cacheplug.core.cache_url import CacheURL

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DEAD_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_SOCKET_TIMEOUT",
    "INSTALL_HINT",
    "URL_OPTIONS",
    "checked_host",
    "checked_options",
    "driver_keywords",
    "options_from_url",
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
    checked_cert_reqs(kwargs)
    for option, kind in URL_OPTIONS.items():
        if kind is bool and kwargs.get(option) is not None:
            check_bool(option, kwargs[option])
    refuse_ignored_tls(kwargs)
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
