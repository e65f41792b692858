"""The memcached servers a ``MemcachedCache`` is given: their specs, as its ``servers``
argument or a ``memcached://`` URL's hosts, parsed into addresses with weights, and the identity
that tells servers apart however they are spelled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cacheplug.core.cache_url import check_host, host_port, is_ipv6, port_number
from cacheplug.core.errors import ConfigurationError

if TYPE_CHECKING:
    from cacheplug.core.cache_url import CacheURL

__all__ = ["DEFAULT_PORT", "Address", "parse_servers", "server_identity", "url_servers"]

DEFAULT_PORT = 11211
_MOST_WEIGHT = 100  # a server's weight multiplies its points on the ring
#: A server's address, ``(host, port)`` or a unix socket path, and its weight.
Address = tuple[tuple[str, int] | str, int]


def parse_servers(servers: Iterable[str | tuple[str, int]] | str | None) -> list[Address]:
    """The distinct addresses in ``servers`` (``MemcachedCache``'s argument) with their weights.

    :raises ConfigurationError: ``servers`` is invalid.
    """
    if servers is None:
        servers = [("127.0.0.1", DEFAULT_PORT)]
    elif isinstance(servers, str):
        servers = servers.split(",")
    elif _is_addresses(servers):
        # a set or a generator too: placement hashes each address, not its position
        servers = list(servers)
    else:
        raise ConfigurationError(
            f"servers must be a list of 'host:port' strings, (host, port) tuples or unix "
            f"socket paths, got a {type(servers).__name__} object; MemcachedCache opens its "
            f"own pymemcache connections and cannot use a ready client: pass the addresses "
            f"that client connects to, e.g. MemcachedCache(['10.0.0.1:11211'])"
        )
    parsed = [_parse_server(spec) for spec in servers]
    if not parsed:
        raise ConfigurationError("servers must name at least one memcached server")
    # however a server is spelled, the first spelling names it; listed twice, it weighs both
    unique: dict[str, Address] = {}
    for address, weight in parsed:
        identity = server_identity(address)
        first, before = unique.get(identity, (address, 0))
        unique[identity] = first, before + weight
    return list(unique.values())


def _is_addresses(servers: object) -> bool:
    """Whether ``servers`` is a collection of addresses, not a ready client (memcache's,
    pylibmc's or pymemcache's, which have ``get`` and ``set``) nor bytes."""
    if isinstance(servers, (list, tuple)):
        return True
    if hasattr(servers, "get") and hasattr(servers, "set"):
        return False
    return isinstance(servers, Iterable) and not isinstance(servers, (bytes, bytearray))


def server_identity(address: tuple[str, int] | str) -> str:
    """What tells servers apart and places keys: ``host:port`` with a host name in the form
    the resolver looks up (IDNA, lower case) and an IP address in its standard spelling, so
    clients that write one server differently agree where every key lives; a unix socket's
    path as it is."""
    if isinstance(address, str):
        return address
    host, port = address
    try:
        canonical = str(ipaddress.ip_address(host))
    except ValueError:
        # DNS ignores letter case; a non-ASCII name as the socket module looks it up (IDNA)
        canonical = host.encode("idna").decode("ascii").lower()
    return host_port(canonical, port)


def _parse_server(spec: object) -> tuple[tuple[str, int] | str, int]:
    """The address and weight of ``"host:port"``, ``"host"``, ``"[v6]:port"``, ``(host, port)``,
    a unix socket path, or any of the strings with a weight, ``("host:port", weight)``, as
    python-memcached (cachelib's client) takes them."""
    if isinstance(spec, tuple) and len(spec) == 2:
        host, port = spec
        if isinstance(host, str) and type(port) is int and _names_a_server(host):
            if 1 <= port <= _MOST_WEIGHT:  # python-memcached's ("host:port", weight)
                return _parse_server(host)[0], port
            raise ConfigurationError(
                f"invalid memcached server {spec!r}: the weight of {host!r} must be an int "
                f"from 1 to {_MOST_WEIGHT}, got {port!r}"
            )
        elif isinstance(host, str) and host and type(port) is int and port_number(port):
            if host.startswith("[") and host.endswith("]") and is_ipv6(host[1:-1]):
                host = host[1:-1]
            if _could_be_host(host):
                return (check_host(host), port), 1
    elif isinstance(spec, str) and spec.strip():
        # python-memcached's explicit families; the address reads the same without them
        text = spec.strip().removeprefix("inet6:").removeprefix("inet:")
        if text.startswith(("unix:", "/")):
            path = text.removeprefix("unix:")
            if path and "\0" not in path:  # a NUL would cut the path the kernel connects to
                return path, 1
        else:
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
            else:
                host, _, port_text = text.partition(":")
            if _could_be_host(host) and not port_text:
                return (check_host(host), DEFAULT_PORT), 1
            port = port_number(port_text) if _could_be_host(host) else None
            if port is not None:
                return (check_host(host), port), 1
    raise ConfigurationError(
        f"invalid memcached server {spec!r}: expected 'host:port', 'host' (port {DEFAULT_PORT}), "
        f"'[ipv6]:port', (host, port), a unix socket path, or one of the strings with a weight "
        f"as python-memcached takes it, ('host:port', 2)"
    )


def _could_be_host(host: str) -> bool:
    """Whether ``host`` may be a host name or an IP address: no resolver looks up a name with
    a blank, a bracket or a slash in it, so such a server would be down forever."""
    return bool(host) and not any(c.isspace() or c in "[]/" for c in host)


def _names_a_server(text: str) -> bool:
    """Whether ``text`` is a whole server string (a port or a socket in it), not a bare host."""
    if text.startswith(("/", "unix:", "inet:", "inet6:")):
        return True
    if text.startswith("["):  # "[v6]" alone is a host
        return "]:" in text
    return ":" in text and not is_ipv6(text)


def url_servers(url: CacheURL) -> list[str | tuple[str, int]]:
    """The servers of a ``memcached://`` URL's hosts: ``(host, port)``, or a unix socket path
    for a host that is a percent-encoded absolute path (``%2Frun%2Fmemcached.sock``).

    :raises ConfigurationError: a socket path has a port.
    """
    servers: list[str | tuple[str, int]] = []
    for host, port in url.hosts:
        if not host.startswith("/"):
            servers.append((host, port or DEFAULT_PORT))
        elif port is None:
            servers.append(host)
        else:
            raise ConfigurationError(
                f"a unix socket path takes no port, got {host!r} with port {port} in "
                f"{url.redacted()!r}"
            )
    return servers
