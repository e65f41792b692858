"""Configuration by URL: parse, check and coerce options, build the cache.

``scheme://[user[:password]@]host[:port][,host[:port]...]/path?option=value&...``

Passwords and secret options (any option whose name contains ``password``, ``secret``,
``token`` or ``credential``) never appear in a ``repr``, ``str`` or error message.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import math
import os
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote

from cacheplug.core.errors import ConfigurationError, PluginError, did_you_mean

if TYPE_CHECKING:
    from cacheplug.core.base import BaseCache

__all__ = [
    "SHARED_OPTIONS",
    "CacheURL",
    "check_host",
    "coerce_option",
    "from_env",
    "from_url",
    "host_port",
    "is_secret_option",
    "is_secret_value",
    "parse_url",
    "port_number",
    "redact_url",
]

T = TypeVar("T")

#: Options every backend takes, with their types.
SHARED_OPTIONS: Mapping[str, type] = MappingProxyType(
    {"serializer": str, "default_timeout": float, "key_prefix": str, "secret": str}
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOST = re.compile(r"[A-Za-z0-9_.\-%~]+\Z")
# A value runs to the next "name=" pair, so a raw "#" or "&" inside a secret stays masked.
_QUERY_PAIR = re.compile(r"([?&;#])([^=&;#?]*)=(.*?)(?=[&;#][^=&;#]*=|\Z)", re.DOTALL)
_EMBEDDED_NAME = re.compile(r"[&;]([^=&;]*)=")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_MASK = "***"
_ENCODE_HINT = "percent-encode '/', '?', '#' and '@' in a password as %2F, %3F, %23 and %40"


def is_secret_option(name: str) -> bool:
    """Whether the value of URL option ``name`` must never be shown."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def is_secret_value(name: str, value: str) -> bool:
    """Whether the value of URL option ``name`` must never be shown.

    Besides secret options, a value that reads like ``1;secret=…`` hides one: ``;`` was a
    query separator once, so such a URL was meant to carry a secret option.
    """
    return is_secret_option(name) or any(
        is_secret_option(unquote(embedded)) for embedded in _EMBEDDED_NAME.findall(value)
    )


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

    def redacted(self) -> str:
        """The URL with its password and secret options masked; parses back to the same parts."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + _MASK
            userinfo += "@"
        # an IPv6 address keeps its colons, so host_port brackets it; any other host is
        # quoted whole
        hosts = ",".join(
            host_port(quote(h, safe=":" if _is_ipv6(h) else "~"), p) for h, p in self.hosts
        )
        query = "&".join(
            f"{quote(k, safe='')}={_MASK if is_secret_value(k, v) else quote(v, safe='')}"
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
        return _mask(url)


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
            f"malformed cache URL {_mask(url)!r}: expected 'scheme://...', "
            f"for example 'simple://' or 'redis://localhost:6379/0'"
        )
    if "#" in rest:
        raise ConfigurationError(
            f"malformed cache URL {_mask(url)!r}: fragments ('#...') are not supported; "
            f"{_ENCODE_HINT}"
        )
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    # An '@' after 'name:text' may end a password holding a raw '/' or '?', whose pieces
    # would show as port, path or options: refuse it, and never echo those pieces.
    misplaced_at = "@" not in netloc and "@" in path + query_text
    if misplaced_at and ":" in netloc:
        raise ConfigurationError(
            f"malformed cache URL {_mask(url)!r}: an '@' after the host; {_ENCODE_HINT}, "
            "and '@' in an option's value as %40"
        )
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = (unquote(pw) or None) if colon else None
    shown = _mask(url)
    try:
        hosts = tuple(_parse_host(part, shown) for part in hostlist.split(",")) if hostlist else ()
    except ConfigurationError:
        if misplaced_at:
            raise ConfigurationError(f"malformed cache URL {shown!r}: {_ENCODE_HINT}") from None
        raise
    return CacheURL(
        scheme.lower(),
        hosts,
        unquote(slash + path),
        username,
        password,
        MappingProxyType(_parse_query(query_text, shown)),
    )


def _parse_query(text: str, shown: str) -> dict[str, str]:
    pairs: list[tuple[str, str]] | None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        pairs = None
    if pairs is None:  # raised out here: urllib's error, even as context, shows the bad field
        raise ConfigurationError(
            f"malformed query in cache URL {shown!r}: expected 'option=value&...'; "
            "percent-encode '&' and '=' inside a value as %26 and %3D"
        )
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ConfigurationError(
                f"option {name!r} appears twice in cache URL {shown!r}; give it once"
            )
        query[name] = value
    return query


def _parse_host(part: str, shown: str) -> tuple[str, int | None]:
    if part.startswith("["):
        address, bracket, tail = part[1:].partition("]")
        host = unquote(address)
        if not bracket or (tail and not tail.startswith(":")) or not _is_ipv6(host):
            raise ConfigurationError(
                f"malformed IPv6 host {part!r} in cache URL {shown!r}: "
                f"expected '[address]' or '[address]:port', e.g. '[::1]:6379'"
            )
        port_text = tail[1:] if tail else None
    else:
        raw, colon, port_raw = part.partition(":")
        port_text = port_raw if colon else None
        if not raw or not _HOST.match(raw):
            raise ConfigurationError(
                f"malformed host {part!r} in cache URL {shown!r}: expected 'host', "
                f"'host:port' or '[ipv6]:port', several separated by commas"
            )
        host = unquote(raw)
    if port_text is None:
        return host, None
    if not port_text:
        hint = " (a directory goes after three slashes: file:///var/cache/app)"
        raise ConfigurationError(
            f"no port after {part!r} in cache URL {shown!r}: give one from 1 to 65535 or drop "
            f"the ':'{hint if shown.lower().startswith('file:') else ''}"
        )
    port = port_number(port_text)
    if port is None:
        raise ConfigurationError(
            f"invalid port {port_text!r} in cache URL {shown!r}: expected a number from 1 to 65535"
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


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _mask(url: str) -> str:
    """A masked copy of a raw, possibly malformed ``url``, for error messages.

    Masks generously: everything between the first ':' of the authority and its last '@',
    and the value of every secret option.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{_MASK}{rest[at:]}"

    def mask_pair(match: re.Match[str]) -> str:
        name = unquote(match.group(2))
        return match.group(0) if not is_secret_option(name) else f"{match[1]}{match[2]}={_MASK}"

    return head + sep + _QUERY_PAIR.sub(mask_pair, rest)


def coerce_option(name: str, text: str, kind: type) -> Any:
    """Turn a query-string value into the option's declared type.

    ``bool`` takes true/false/1/0/yes/no/on/off; ``float`` keeps integers as ``int``.

    :raises ConfigurationError: the text is not a value of that type (shown unless secret).
    """
    shown = _MASK if is_secret_value(name, text) else repr(text)
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(
            f"option {name!r} must be a bool (true/false, 1/0, yes/no, on/off), got {shown}"
        )
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass
        # out of the except block: the ValueError, kept as context, would show the text
        raise ConfigurationError(f"option {name!r} must be an int, got {shown}")
    if kind is float:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number: float | None = float(text)
        except ValueError:
            number = None
        if number is None:
            raise ConfigurationError(f"option {name!r} must be a number, got {shown}")
        if not math.isfinite(number):
            raise ConfigurationError(f"option {name!r} must be a finite number, got {shown}")
        return number
    try:
        return kind(text)
    except (TypeError, ValueError) as err:
        if shown != _MASK:
            raise ConfigurationError(
                f"option {name!r} must be a {kind.__name__}, got {shown}"
            ) from err
    raise ConfigurationError(f"option {name!r} must be a {kind.__name__}, got {shown}")


def _per_class(compute: Callable[[type[BaseCache]], T]) -> Callable[[type[BaseCache]], T]:
    """``compute`` remembered for each backend class while the class lives.

    A plugin registered again after ``reset_plugins`` may bring a new class each time:
    ``functools.cache`` kept every one of them (and its module's state) alive for good.
    """
    memo: weakref.WeakKeyDictionary[type[BaseCache], T] = weakref.WeakKeyDictionary()

    def remembered(cls: type[BaseCache]) -> T:
        try:
            return memo[cls]
        except KeyError:
            result = memo[cls] = compute(cls)
            return result

    return remembered


@_per_class
def _accepted(cls: type[BaseCache]) -> Mapping[str, type]:
    """The URL options of a backend class: shared ones and its own ``url_options``."""
    return MappingProxyType({**SHARED_OPTIONS, **cls.url_options})


@_per_class
def _keywords(cls: type[BaseCache]) -> frozenset[str] | None:
    """The keyword arguments a backend class takes, ``None`` when it takes any."""
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def from_url(url: str, **overrides: Any) -> BaseCache:
    """Build a cache from a URL; keyword ``overrides`` win over the query string.

    An override given as text for an option of another type is read as the query string's
    text would be (``threshold="500"``, ``fsync="no"``).

    Example::

        cache = from_url("redis://cache:6379/0?serializer=msgpack&default_timeout=60")
        cache = from_url("simple://?threshold=10000", default_timeout=0)

    :raises ConfigurationError: malformed URL, unknown scheme, unknown option or a value of the
        wrong type; the message says what is accepted.
    :raises PluginError: the scheme's plugin is broken or claimed twice, or its backend's
        constructor does not take an option it declares.
    """
    from cacheplug.core.plugins import get_backend_class

    parsed = parse_url(url)
    try:
        cls = get_backend_class(parsed.scheme)
    except ConfigurationError as err:
        raise ConfigurationError(f"{err} (in {parsed.redacted()!r})") from None
    accepted = _accepted(cls)
    options: dict[str, Any] = {}
    for name, text in parsed.query.items():
        kind = accepted.get(name)
        if kind is None:
            raise ConfigurationError(
                f"unknown option {name!r} for {parsed.scheme}:// ({cls.__name__}) in "
                f"{parsed.redacted()!r}; accepted options: {', '.join(sorted(accepted))}"
                f"{did_you_mean(name, accepted)}"
            )
        options[name] = coerce_option(name, text, kind)
    keywords = _keywords(cls)
    if overrides:
        if keywords is not None:
            known = keywords | accepted.keys()
            for name in overrides:
                if name not in known:
                    raise ConfigurationError(
                        f"unknown keyword {name!r} for {parsed.scheme}:// ({cls.__name__}); "
                        f"accepted: {', '.join(sorted(known))}{did_you_mean(name, known)}"
                    )
        for name, value in overrides.items():
            kind = accepted.get(name)
            # text from a config file reads as it would in the query string
            if isinstance(value, str) and kind is not None and kind is not str:
                options[name] = coerce_option(name, value, kind)
            else:
                options[name] = value
    try:
        return cls.from_url_spec(parsed, options)
    except TypeError as err:
        untaken = [
            name
            for name in sorted(options.keys() - (keywords or options.keys()))
            if f"unexpected keyword argument {name!r}" in str(err)
        ]
        if not untaken:
            raise
        # A plugin's mistake, not the user's: say which backend and what it must take.
        raise PluginError(
            f"{cls.__module__}:{cls.__qualname__}, the backend of {parsed.scheme}://, has no "
            f"constructor parameter for {', '.join(map(repr, untaken))}: a backend takes the "
            f"shared options ({', '.join(SHARED_OPTIONS)}) and each of its url_options"
        ) from err


def from_env(name: str = "CACHE_URL", default: str = "simple://", **overrides: Any) -> BaseCache:
    """Build a cache from the URL in environment variable ``name`` (or ``default`` when unset
    or empty); keyword ``overrides`` win over the query string.

    :raises ConfigurationError: as :func:`from_url`; the message names the variable.
    """
    url = os.environ.get(name)
    if not url:
        return from_url(default, **overrides)
    try:
        return from_url(url, **overrides)
    except ConfigurationError as err:
        raise ConfigurationError(f"{err} (from environment variable {name})") from err
