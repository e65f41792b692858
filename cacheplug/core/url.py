"""Configuration by URL: parse, check and coerce options, build the cache.

``scheme://[user[:password]@]host[:port][,host[:port]...]/path?option=value&...``

Passwords and secret options (see :func:`is_secret_option`; a misspelt ``?pasword=`` too)
never show their value in a ``repr``, ``str`` or error message.

Which options hold a secret, and the masking of raw URLs and texts, live in
:mod:`cacheplug.core.redaction`; they are re-exported here.
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
from cacheplug.core.redaction import (
    MASK,
    hide_credentials,
    is_secret_option,
    is_secret_value,
    mask_url,
    redact_text,
)

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
    "is_ipv6",
    "is_secret_option",
    "is_secret_value",
    "parse_url",
    "port_number",
    "redact_text",
    "redact_url",
]

T = TypeVar("T")

#: Options every backend takes, with their types.
SHARED_OPTIONS: Mapping[str, type] = MappingProxyType(
    {"serializer": str, "default_timeout": float, "key_prefix": str, "secret": str}
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOST = re.compile(r"[A-Za-z0-9_.\-%~]+\Z")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# TypeError's words for a keyword given twice: by the URL and as an override
_TWICE = re.compile(r"got multiple values for (?:keyword )?argument '(\w+)'")
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


def coerce_option(name: str, text: str, kind: type) -> Any:
    """Turn a query-string value into the option's declared type.

    ``bool`` takes true/false/1/0/yes/no/on/off; ``float`` keeps integers as ``int``.

    :raises ConfigurationError: the text is not a value of that type (shown unless secret).
    """
    shown = MASK if is_secret_value(name, text) else repr(text)
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
        if shown != MASK:
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
    """Build a cache from a URL; keyword ``overrides`` win over the query string, and over
    what the URL itself names where the backend takes it as a keyword too (a ``port``, a
    ``host``, memcached's ``servers``, a file cache's ``cache_dir``).

    An override given as text for an option of another type is read as the query string's
    text would be (``threshold="500"``, ``fsync="no"``).

    Example::

        cache = from_url("redis://cache:6379/0?serializer=msgpack&default_timeout=60")
        cache = from_url("simple://?threshold=10000", default_timeout=0)

    :raises ConfigurationError: malformed URL, unknown scheme, unknown option or a value of the
        wrong type, or a keyword the backend also takes from the URL and cannot put in its
        place; the message says what is accepted.
    :raises PluginError: the scheme's plugin is broken or claimed twice, or its backend's
        constructor does not take an option it declares.
    """
    return _build(*_read_url(url), overrides)


def _read_url(url: str) -> tuple[CacheURL, type[BaseCache], dict[str, Any]]:
    """The parsed URL, its backend class and its options, each checked and coerced.

    :raises ConfigurationError: the URL is at fault.
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
                f"{parsed.redacted(hiding=name)!r}; accepted options: "
                f"{', '.join(sorted(accepted))}"
                f"{did_you_mean(name, accepted)}"
            )
        options[name] = coerce_option(name, text, kind)
    return parsed, cls, options


def _build(
    parsed: CacheURL, cls: type[BaseCache], options: dict[str, Any], overrides: Mapping[str, Any]
) -> BaseCache:
    """The cache of a URL read by :func:`_read_url`, keyword ``overrides`` applied."""
    accepted = _accepted(cls)
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
        if "secret" in overrides and overrides["secret"] is None and "secret" in options:
            # a None from an unset setting would silently store unsigned pickles
            raise ConfigurationError(
                f"keyword secret=None would drop the secret of {parsed.redacted()!r} and store "
                "unsigned entries; give the secret, or remove ?secret= from the URL to sign none"
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
        twice = _given_twice(err, overrides)
        if twice is not None:  # a backend whose from_url_spec does not let the keyword win
            raise ConfigurationError(
                f"keyword {twice!r} and the URL {parsed.redacted()!r} both give {cls.__name__} "
                f"its {twice!r}, and {parsed.scheme}:// cannot let the keyword replace the "
                f"URL's; give it in one place"
            ) from None
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


def _given_twice(err: TypeError, overrides: Mapping[str, Any]) -> str | None:
    """The keyword override that ``err`` says the backend also got from the URL, if any."""
    match = _TWICE.search(str(err))
    return match[1] if match is not None and match[1] in overrides else None


def from_env(name: str = "CACHE_URL", default: str = "simple://", **overrides: Any) -> BaseCache:
    """Build a cache from the URL in environment variable ``name`` (or ``default`` when unset
    or empty); keyword ``overrides`` win over the query string.

    :raises ConfigurationError: as :func:`from_url`; when the URL is at fault, the message
        ends with ``(from environment variable NAME)``.
    """
    url = os.environ.get(name)
    if not url:
        return from_url(default, **overrides)
    origin = f" (from environment variable {name})"
    try:
        read = _read_url(url)
    except ConfigurationError as err:
        raise ConfigurationError(f"{err}{origin}") from err
    try:
        return _build(*read, overrides)
    except ConfigurationError as err:
        if overrides:  # a keyword may be at fault as well as the URL: blame neither
            raise
        raise ConfigurationError(f"{err}{origin}") from err
