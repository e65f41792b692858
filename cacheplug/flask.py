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

#: Flask-Caching's settings of its own engines: without CACHE_URL, most likely a missed move.
_ENGINE_SETTINGS = (
    "CACHE_REDIS_URL",
    "CACHE_REDIS_HOST",
    "CACHE_REDIS_PORT",
    "CACHE_REDIS_PASSWORD",
    "CACHE_REDIS_DB",
    "CACHE_REDIS_CLUSTER",
    "CACHE_REDIS_SENTINELS",
    "CACHE_MEMCACHED_SERVERS",
    "CACHE_MEMCACHED_USERNAME",
    "CACHE_MEMCACHED_PASSWORD",
    "CACHE_DIR",
)


def cache_factory(
    app: object, config: Mapping[str, Any], args: Sequence[Any], options: Mapping[str, Any]
) -> BaseCache:
    """The cache at ``config["CACHE_URL"]`` (default ``simple://``) for Flask-Caching.

    ``CACHE_OPTIONS`` (keyword arguments) win over the URL as ``from_url``'s keyword overrides
    do (a ``port`` over the URL's port, too), and the URL's query wins over
    ``CACHE_DEFAULT_TIMEOUT``, ``CACHE_KEY_PREFIX`` and ``CACHE_THRESHOLD`` (for backends
    that take a ``threshold``), which Flask-Caching always fills in.
    Flask-Caching's ``ignore_delete_many_errors`` is dropped: ``delete_many`` never raises here.

    Flask-Caching's own engine settings (``CACHE_REDIS_HOST``, ``CACHE_DIR``...) given without
    ``CACHE_URL`` are warned about: the cache is then an in-process ``simple://``.

    :raises ConfigurationError: ``CACHE_ARGS`` is not empty, or the URL or an option is wrong.
    """
    from cacheplug.core.plugins import get_backend_class
    from cacheplug.core.url import from_url, parse_url

    if args:
        raise ConfigurationError(
            "cacheplug takes no CACHE_ARGS; give its settings in CACHE_URL's query or in "
            "CACHE_OPTIONS (keyword arguments)"
        )
    url = config.get("CACHE_URL")
    if not url:
        given = [name for name in _ENGINE_SETTINGS if config.get(name)]
        if given:
            # An app moving over keeps these and would silently get an in-process cache. Not an
            # error: Flask-Caching merges app.config into every cache's, so a second cache of
            # the same app sees the first one's settings.
            warnings.warn(
                f"{', '.join(given)}: {'a setting' if len(given) == 1 else 'settings'} of "
                "Flask-Caching's own backends, which cacheplug does not read; without CACHE_URL "
                "this cache is an in-process simple://. Say where the cache is in CACHE_URL "
                "(e.g. redis://:password@host:6379/0, memcached://host:11211, file:///abs/dir), "
                "or set CACHE_URL to simple:// to keep it in-process",
                UserWarning,
                stacklevel=2,
            )
        url = "simple://"
    parsed = parse_url(url)
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
