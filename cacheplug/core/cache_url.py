"""A cache URL's parts: :class:`CacheURL` and :func:`parse_url`, the host and port checks
backends share, and :func:`redact_url`, which masks a URL by its parts.

``scheme://[user[:password]@]host[:port][,host[:port]...]/path?option=value&...``
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote

from cacheplug.core.errors import ConfigurationError
from cacheplug.core.redaction import MASK, hide_credentials, is_secret_value, mask_url

__all__ = [
    "CacheURL",
    "check_host",
    "host_port",
    "is_ipv6",
    "parse_url",
    "port_number",
    "redact_url",
]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOST = re.compile(r"[A-Za-z0-9_.\-%~]+\Z")
_ENCODE_HINT = "percent-encode '/', '?', '#' and '@' in a password as %2F, %3F, %23 and %40"


@dataclass(frozen=True)
class CacheURL:
    """A parsed cache URL. ``password`` and secret options never show in ``repr``/``str``.

    Empty user names and passwords are ``None``; ``path`` and the query are percent-decoded.
    """

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def host(self) -> str | None:
        """The first host, or ``None``."""
        return self.hosts[0][0] if self.hosts else None

    @property
    def port(self) -> int | None:
        """The port of the first host, or ``None``."""
        return self.hosts[0][1] if self.hosts else None

    def redacted(self, hiding: str | None = None) -> str:
        """The URL with its password and secret options masked (and option ``hiding``, an
        unknown one, whose value explains nothing); parses back to the same parts."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + MASK
            userinfo += "@"
        # an IPv6 address keeps its colons, so host_port brackets it; any other host is
        # quoted whole
        hosts = ",".join(
            host_port(quote(h, safe=":" if is_ipv6(h) else "~"), p) for h, p in self.hosts
        )
        query = "&".join(
            f"{quote(k, safe='')}="
            f"{MASK if k == hiding or is_secret_value(k, v) else quote(v, safe='')}"
            for k, v in self.query.items()
        )
        return f"{self.scheme}://{userinfo}{hosts}{quote(self.path)}" + (
            f"?{query}" if query else ""
        )

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"CacheURL({self.redacted()!r})"


def redact_url(url: str) -> str:
    """``url`` with any password or secret masked; never raises."""
    try:
        return parse_url(url).redacted()
    except ConfigurationError:
        return mask_url(url)


def parse_url(url: str) -> CacheURL:
    """Split a cache URL into its parts.

    :raises ConfigurationError: the URL is malformed (the message says which part).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"cache URL must be a str, got {type(url).__name__}")
    return _parse(url)


@functools.lru_cache(maxsize=128)
def _parse(url: str) -> CacheURL:
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ConfigurationError(
            f"malformed cache URL {mask_url(url)!r}: expected 'scheme://...', "
            f"for example 'simple://' or 'redis://localhost:6379/0'"
        )
    if "#" in rest:
        raise ConfigurationError(
            f"malformed cache URL {mask_url(url)!r}: fragments ('#...') are not supported; "
            f"{_ENCODE_HINT}"
        )
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    # An '@' after 'name:text' may end a password holding a raw '/' or '?', whose pieces
    # would show as port, path or options: refuse it, and never echo those pieces.
    misplaced_at = "@" not in netloc and "@" in path + query_text
    if misplaced_at and ":" in netloc:
        raise ConfigurationError(
            f"malformed cache URL {mask_url(url)!r}: an '@' after the host; {_ENCODE_HINT}, "
            "and '@' in an option's value as %40"
        )
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = (unquote(pw) or None) if colon else None
    try:
        hosts = (
            tuple(_parse_host(part, url, bool(at)) for part in hostlist.split(","))
            if hostlist
            else ()
        )
    except ConfigurationError:
        if misplaced_at:
            raise ConfigurationError(
                f"malformed cache URL {mask_url(url)!r}: {_ENCODE_HINT}"
            ) from None
        raise
    return CacheURL(
        scheme.lower(),
        hosts,
        unquote(slash + path),
        username,
        password,
        MappingProxyType(_parse_query(query_text, url)),
    )


def _parse_query(text: str, url: str) -> dict[str, str]:
    pairs: list[tuple[str, str]] | None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        pairs = None
    if pairs is None:  # raised out here: urllib's error, even as context, shows the bad field
        raise ConfigurationError(
            f"malformed query in cache URL {mask_url(url)!r}: expected 'option=value&...'; "
            "percent-encode '&' and '=' inside a value as %26 and %3D"
        )
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ConfigurationError(
                f"option {name!r} appears twice in cache URL {mask_url(url)!r}; give it once"
            )
        query[name] = value
    return query


def _parse_host(part: str, url: str, after_at: bool) -> tuple[str, int | None]:
    """One ``host[:port]`` of the authority; ``after_at``: the authority has user-info."""
    # without '@', 'user:password' reads as host and port: never show such a "port"
    shown_part = part if after_at else hide_credentials(part)
    hint = "" if shown_part == part else "; a password goes before the host: 'user:password@host'"
    if part.startswith("["):
        address, bracket, tail = part[1:].partition("]")
        host = unquote(address)
        if not bracket or (tail and not tail.startswith(":")) or not is_ipv6(host):
            raise ConfigurationError(
                f"malformed IPv6 host {shown_part!r} in cache URL {mask_url(url)!r}: "
                f"expected '[address]' or '[address]:port', e.g. '[::1]:6379'{hint}"
            )
        port_text = tail[1:] if tail else None
    else:
        raw, colon, port_raw = part.partition(":")
        port_text = port_raw if colon else None
        if not raw or not _HOST.match(raw):
            raise ConfigurationError(
                f"malformed host {shown_part!r} in cache URL {mask_url(url)!r}: expected 'host', "
                f"'host:port' or '[ipv6]:port', several separated by commas{hint}"
            )
        host = unquote(raw)
    if port_text is None:
        return host, None
    if not port_text:
        file_hint = " (a directory goes after three slashes: file:///var/cache/app)"
        raise ConfigurationError(
            f"no port after {part!r} in cache URL {mask_url(url)!r}: give one from 1 to 65535 or "
            f"drop the ':'{file_hint if url.lower().startswith('file:') else ''}"
        )
    port = port_number(port_text)
    if port is None:
        raise ConfigurationError(
            f"invalid port {MASK if hint else port_text!r} in cache URL {mask_url(url)!r}: "
            f"expected a number from 1 to 65535{hint}"
        )
    return host, port


def port_number(port: object) -> int | None:
    """``port`` as a TCP port, 1 to 65535, from an int or ASCII digits; None when it is none."""
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    return port if type(port) is int and 0 < port < 65536 else None


def check_host(host: str) -> str:
    """``host`` once the socket module can look it up: it encodes every name with IDNA.

    :raises ConfigurationError: an empty host or label (``a..b``), one over 63 characters, or a
        character IDNA refuses (a lone surrogate).
    """
    problem = "empty" if not host else None
    try:
        host.encode("idna")
    except UnicodeError as err:
        problem = str(err)
    if problem is not None:
        raise ConfigurationError(
            f"invalid host {host!r}: {problem}; expected a host name (labels of 1 to 63 "
            f"characters between dots) or an IP address"
        )
    return host


def host_port(host: str, port: int | None) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets, no port when None."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def is_ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address (without brackets)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
