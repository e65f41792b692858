"""The exception tree of cacheplug."""

from __future__ import annotations

import pickle

__all__ = [
    "CacheplugError",
    "ConfigurationError",
    "PluginError",
    "PluginLoadWarning",
    "SerializationError",
]


class CacheplugError(Exception):
    """Base class of every error cacheplug raises on purpose."""


class ConfigurationError(CacheplugError, ValueError):
    """A cache, URL, option or serializer was configured wrongly."""


class PluginError(CacheplugError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class SerializationError(CacheplugError, pickle.PickleError):
    """A value could not be encoded, or a stored payload could not be decoded."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the rest of cacheplug keeps working."""
