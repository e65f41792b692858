"""Configuration by URL: parse, check and coerce options, build the cache.

``scheme://[user[:password]@]host[:port][,host[:port]...]/path?option=value&...``
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote

from cacheplug.core.errors import ConfigurationError

if TYPE_CHECKING:
    from cacheplug.core.base import BaseCache

__all__ = [
    "SHARED_OPTIONS",
    "CacheURL",
    "coerce_option",
    "from_env",
    "from_url",
    "parse_url",
    "redact_url",
]

#: Options every backend takes, with their types.
SHARED_OPTIONS: Mapping[str, type] = {
    "serializer": str,
    "default_timeout": float,
    "key_prefix": str,
    "secret": str,
}
SECRET_OPTIONS = frozenset({"secret", "password"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOST = re.compile(r"[A-Za-z0-9_.\-%~]+\Z")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_MASK = "***"


@dataclass(frozen=True)
class CacheURL:
    """A parsed cache URL. ``password`` and secret options never show in ``repr``/``str``."""

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
        """The URL with its password and secret options masked."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + _MASK
            userinfo += "@"
        hosts = ",".join(
            (f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "")
            for h, p in self.hosts
        )
        query = "&".join(
            f"{k}={_MASK if k in SECRET_OPTIONS else quote(v, safe='')}"
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
        return _safe(url)


def parse_url(url: str) -> CacheURL:
    """Split a cache URL into its parts.

    :raises ConfigurationError: the URL is malformed (the message says which part).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"cache URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ConfigurationError(
            f"malformed cache URL {_safe(url)!r}: expected 'scheme://...', "
            f"for example 'simple://' or 'redis://localhost:6379/0'"
        )
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ConfigurationError(
            f"malformed cache URL {_safe(url)!r}: fragments ('#...') are not supported; "
            f"percent-encode '#' in passwords as %23"
        )
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user)
        password = unquote(pw) if colon else None
    hosts = tuple(_parse_host(part, url) for part in hostlist.split(",")) if hostlist else ()
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError as err:
        raise ConfigurationError(
            f"malformed query in cache URL {_safe(url)!r}: expected 'option=value&...'"
        ) from err
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ConfigurationError(
                f"option {name!r} appears twice in cache URL {_safe(url)!r}; give it once"
            )
        query[name] = value
    return CacheURL(scheme.lower(), hosts, unquote(path), username, password, query)


def _parse_host(part: str, url: str) -> tuple[str, int | None]:
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket or not host or (tail and not tail.startswith(":")):
            raise ConfigurationError(
                f"malformed IPv6 host {part!r} in cache URL {_safe(url)!r}: "
                f"expected '[address]' or '[address]:port'"
            )
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_raw = part.partition(":")
        port_text = port_text_raw if colon else None
        if not host or not _HOST.match(host):
            raise ConfigurationError(
                f"malformed host {part!r} in cache URL {_safe(url)!r}: expected "
                f"'host' or 'host:port', several separated by commas"
            )
        host = unquote(host)
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"invalid port {port_text!r} in cache URL {_safe(url)!r}: "
            f"expected a number from 1 to 65535"
        )
    return host, int(port_text)


def _safe(url: str) -> str:
    """A masked copy of ``url`` for error messages (parse errors included)."""
    masked = re.sub(r"(://[^/@?#]*?:)[^/@?#]*@", r"\1" + _MASK + "@", url)
    return re.sub(r"((?:^|[?&])(?:secret|password)=)[^&#]*", r"\1" + _MASK, masked)


def coerce_option(name: str, text: str, kind: type) -> Any:
    """Turn a query-string value into the option's declared type.

    :raises ConfigurationError: the text is not a value of that type (shown unless secret).
    """
    shown = _MASK if name in SECRET_OPTIONS else repr(text)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(
            f"option {name!r} must be a bool (true/false/1/0/yes/no), got {shown}"
        )
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigurationError(f"option {name!r} must be an int, got {shown}") from None
    if kind is float:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ConfigurationError(f"option {name!r} must be a number, got {shown}") from None
        if not math.isfinite(number):
            raise ConfigurationError(f"option {name!r} must be a finite number, got {shown}")
        return number
    return text


def _accepted(cls: type[BaseCache]) -> dict[str, type]:
    accepted = dict(SHARED_OPTIONS)
    accepted.update(cls.url_options)
    return accepted


def from_url(url: str, **overrides: Any) -> BaseCache:
    """Build a cache from a URL; keyword ``overrides`` win over the query string.

    Example::

        cache = from_url("redis://cache:6379/0?serializer=msgpack&default_timeout=60")
        cache = from_url("simple://?threshold=10000", default_timeout=0)

    :raises ConfigurationError: malformed URL, unknown scheme, unknown option or a value of the
        wrong type; the message says what is accepted.
    :raises PluginError: the scheme's plugin is broken or claimed twice.
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
                f"unknown option {name!r} for {parsed.scheme}:// ({cls.__name__}); "
                f"accepted options: {', '.join(sorted(accepted))}"
            )
        options[name] = coerce_option(name, text, kind)
    if overrides:
        _check_overrides(cls, parsed.scheme, overrides, accepted)
        options.update(overrides)
    return cls.from_url_spec(parsed, options)


def _check_overrides(
    cls: type[BaseCache], scheme: str, overrides: Mapping[str, Any], accepted: Mapping[str, type]
) -> None:
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = set(accepted) | set(parameters)
    for name in overrides:
        if name not in known:
            raise ConfigurationError(
                f"unknown keyword {name!r} for {scheme}:// ({cls.__name__}); "
                f"accepted: {', '.join(sorted(known))}"
            )


def from_env(name: str = "CACHE_URL", default: str = "simple://", **overrides: Any) -> BaseCache:
    """Build a cache from the URL in environment variable ``name`` (or ``default``)."""
    return from_url(os.environ.get(name) or default, **overrides)
