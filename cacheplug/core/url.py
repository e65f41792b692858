"""Configuration by URL: build the cache a URL names (:func:`from_url`, :func:`from_env`).

``scheme://[user[:password]@]host[:port][,host[:port]...]/path?option=value&...``

Passwords and secret options (see :func:`is_secret_option`; a misspelt ``?pasword=`` too)
never show their value in a ``repr``, ``str`` or error message.

Where each part lives (this module re-exports their public names):

- :mod:`cacheplug.core.cache_url`: :class:`CacheURL`, :func:`parse_url`, the host and port
  checks backends share, and :func:`redact_url`;
- :mod:`cacheplug.core.url_options`: the options every backend takes, and the reading of an
  option's text as its type;
- :mod:`cacheplug.core.redaction`: which options hold a secret, and the masking of raw URLs
  and texts.
"""

from __future__ import annotations

import inspect
import os
import re
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from cacheplug.core.cache_url import (
    CacheURL,
    check_host,
    host_port,
    is_ipv6,
    parse_url,
    port_number,
    redact_url,
)
from cacheplug.core.errors import ConfigurationError, PluginError, did_you_mean
from cacheplug.core.redaction import is_secret_option, is_secret_value, redact_text
from cacheplug.core.url_options import SHARED_OPTIONS, coerce_option

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

# TypeError's words for a keyword given twice: by the URL and as an override
_TWICE = re.compile(r"got multiple values for (?:keyword )?argument '(\w+)'")


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
