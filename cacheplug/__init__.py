"""cacheplug: one cache contract, pluggable backends and serializers, configured by one URL.

``import cacheplug`` is cheap: every name below is imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cacheplug.backends.filesystem import FileSystemCache
    from cacheplug.backends.memcached import MemcachedCache
    from cacheplug.backends.null import NullCache
    from cacheplug.backends.redis import RedisCache
    from cacheplug.backends.simple import SimpleCache
    from cacheplug.core.base import BaseCache
    from cacheplug.core.errors import (
        CacheplugError,
        ConfigurationError,
        PluginError,
        PluginLoadWarning,
        SerializationError,
    )
    from cacheplug.core.hookspecs import hookimpl
    from cacheplug.core.plugins import get_plugins, get_serializer
    from cacheplug.core.serializer import Serializer
    from cacheplug.core.url import from_env, from_url
    from cacheplug.serializers.json import JSONSerializer
    from cacheplug.serializers.msgpack import MsgpackSerializer
    from cacheplug.serializers.pickle import PickleSerializer

__all__ = [
    "BaseCache",
    "CacheplugError",
    "ConfigurationError",
    "FileSystemCache",
    "JSONSerializer",
    "MemcachedCache",
    "MsgpackSerializer",
    "NullCache",
    "PickleSerializer",
    "PluginError",
    "PluginLoadWarning",
    "RedisCache",
    "SerializationError",
    "Serializer",
    "SimpleCache",
    "__version__",
    "from_env",
    "from_url",
    "get_plugins",
    "get_serializer",
    "hookimpl",
]

_LOCATIONS = {
    "BaseCache": "cacheplug.core.base",
    "CacheplugError": "cacheplug.core.errors",
    "ConfigurationError": "cacheplug.core.errors",
    "PluginError": "cacheplug.core.errors",
    "PluginLoadWarning": "cacheplug.core.errors",
    "SerializationError": "cacheplug.core.errors",
    "hookimpl": "cacheplug.core.hookspecs",
    "get_plugins": "cacheplug.core.plugins",
    "get_serializer": "cacheplug.core.plugins",
    "Serializer": "cacheplug.core.serializer",
    "from_env": "cacheplug.core.url",
    "from_url": "cacheplug.core.url",
    "SimpleCache": "cacheplug.backends.simple",
    "NullCache": "cacheplug.backends.null",
    "FileSystemCache": "cacheplug.backends.filesystem",
    "RedisCache": "cacheplug.backends.redis",
    "MemcachedCache": "cacheplug.backends.memcached",
    "PickleSerializer": "cacheplug.serializers.pickle",
    "JSONSerializer": "cacheplug.serializers.json",
    "MsgpackSerializer": "cacheplug.serializers.msgpack",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'cacheplug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
