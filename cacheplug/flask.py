"""A Flask-Caching backend factory: any cacheplug cache behind ``flask_caching.Cache``.

Flask-Caching calls a ``CACHE_TYPE`` that is not one of its own classes as
``factory(app, config, args, options)``; this module provides that factory, so an application
configures its cache with one URL::

    app.config["CACHE_TYPE"] = "cacheplug.flask.cache_factory"
    app.config["CACHE_URL"] = "redis://cache:6379/0"
    cache = flask_caching.Cache(app)

Keep the default pickle serializer for ``@cache.cached`` views: json and msgpack give a view's
``(body, status, headers)`` tuple back as a list, which Flask answers as a JSON body with status
200, and cannot encode a ``Response`` at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from cacheplug.core.base import BaseCache
from cacheplug.core.errors import ConfigurationError

__all__ = ["cache_factory"]

#: Flask-Caching's settings of its own engines, which cacheplug does not read, and what to
#: write instead.
_ENGINE_SETTINGS = {
    "CACHE_REDIS_URL": "give its URL as CACHE_URL",
    "CACHE_REDIS_HOST": "give the host in CACHE_URL",
    "CACHE_REDIS_PORT": "give the port in CACHE_URL",
    "CACHE_REDIS_PASSWORD": (
        "give the password in CACHE_URL (redis://:password@host:6379/0) "
        "or as CACHE_OPTIONS = {'password': ...}"
    ),
    "CACHE_REDIS_DB": "give the db in CACHE_URL (redis://host:6379/1) or CACHE_OPTIONS",
    "CACHE_REDIS_CLUSTER": "write CACHE_URL = 'redis+cluster://h1:7000,h2:7001'",
    "CACHE_REDIS_SENTINELS": "cacheplug has no Redis Sentinel backend",
    "CACHE_MEMCACHED_SERVERS": "write CACHE_URL = 'memcached://h1:11211,h2:11211'",
    "CACHE_MEMCACHED_USERNAME": "cacheplug has no SASL memcached backend",
    "CACHE_MEMCACHED_PASSWORD": "cacheplug has no SASL memcached backend",
    "CACHE_DIR": "write CACHE_URL = 'file:///abs/dir'",
}


def cache_factory(
    app: object, config: Mapping[str, Any], args: Sequence[Any], options: Mapping[str, Any]
) -> BaseCache:
    """The cache at ``config["CACHE_URL"]`` (default ``simple://``) for Flask-Caching.

    ``CACHE_OPTIONS`` (keyword arguments) win over the URL as ``from_url``'s keyword overrides
    do (a ``port`` over the URL's port, too), and the URL's query wins over
    ``CACHE_DEFAULT_TIMEOUT``, ``CACHE_KEY_PREFIX`` and ``CACHE_THRESHOLD`` (for backends
    that take a ``threshold``), which Flask-Caching always fills in.
    Flask-Caching's ``ignore_delete_many_errors`` is dropped: ``delete_many`` never raises here.

    Flask-Caching's own engine settings (``CACHE_REDIS_PASSWORD``, ``CACHE_DIR``...) are
    not read, and warned about by name: without ``CACHE_URL`` the cache is an in-process
    ``simple://``; with it, they are left out of the cache the URL builds.

    :raises ConfigurationError: ``CACHE_ARGS`` is not empty, or the URL or an option is wrong.
    """
    from cacheplug.core.cache_url import parse_url
    from cacheplug.core.plugins import get_backend_class
    from cacheplug.core.url import from_url

    if args:
        raise ConfigurationError(
            "cacheplug takes no CACHE_ARGS; give its settings in CACHE_URL's query or in "
            "CACHE_OPTIONS (keyword arguments)"
        )
    url = config.get("CACHE_URL")
    parsed = parse_url(url or "simple://")  # a wrong URL fails before any warning
    ignored = _engine_settings(app, config)
    if ignored:
        # Not an error: Flask-Caching merges app.config into every cache's, so a second cache
        # of the same app sees the first one's settings.
        warnings.warn(_ignored_settings(ignored, bool(url)), UserWarning, stacklevel=2)
    url = url or "simple://"
    query = parsed.query
    overrides = dict(options)
    # a plugin's constructor need not take it, and no cacheplug delete_many raises
    overrides.pop("ignore_delete_many_errors", None)
    if "default_timeout" in query and "default_timeout" not in (config.get("CACHE_OPTIONS") or {}):
        overrides.pop("default_timeout", None)
    prefix = config.get("CACHE_KEY_PREFIX")
    if prefix and "key_prefix" not in overrides and "key_prefix" not in query:
        overrides["key_prefix"] = prefix
    threshold = config.get("CACHE_THRESHOLD")
    if (
        threshold is not None
        and "threshold" not in overrides
        and "threshold" not in query
        and "threshold" in get_backend_class(parsed.scheme).url_options
    ):
        overrides["threshold"] = threshold
    return from_url(url, **overrides)


def _ignored_settings(names: list[str], has_url: bool) -> str:
    """The warning about Flask-Caching's engine settings ``names`` (never their values)."""
    one = len(names) == 1
    said = f"{', '.join(names)}: {'a setting' if one else 'settings'} of Flask-Caching's own "
    if not has_url:  # an app moving over would silently get an in-process cache
        return (
            f"{said}backends, which cacheplug does not read; without CACHE_URL this cache is an "
            "in-process simple://. Say where the cache is in CACHE_URL (e.g. "
            "redis://:password@host:6379/0, memcached://host:11211, file:///abs/dir), or set "
            "CACHE_URL to simple:// to keep it in-process"
        )
    # a password left in CACHE_REDIS_PASSWORD would otherwise show only as failed calls
    fixes = "; ".join(f"{name}: {_ENGINE_SETTINGS[name]}" for name in names)
    return (
        f"{said}backends, which cacheplug does not read: this cache is built from CACHE_URL "
        f"and CACHE_OPTIONS alone, without {'it' if one else 'them'}. {fixes}"
    )


def _engine_settings(app: object, config: Mapping[str, Any]) -> list[str]:
    """The names of Flask-Caching's engine settings in ``config`` that concern this cache.

    With CACHE_URL, a setting of ``app.config`` whose own CACHE_TYPE is another backend is that
    cache's (Flask-Caching copies ``app.config`` into every cache's config), not this one's.
    """
    app_config: Mapping[str, Any] = getattr(app, "config", None) or {}
    others = bool(config.get("CACHE_URL")) and app_config.get("CACHE_TYPE") not in (
        None,
        config.get("CACHE_TYPE"),
    )
    given = []
    for name in _ENGINE_SETTINGS:
        value = config.get(name)
        if value is None or value == "":
            continue
        if others and name in app_config and app_config[name] == value:
            continue
        if name == "CACHE_REDIS_URL" and value == config.get("CACHE_URL"):
            continue  # the same cache, said twice: nothing is lost
        given.append(name)
    return given
