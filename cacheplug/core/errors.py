"""The exception tree of cacheplug."""

from __future__ import annotations

import pickle
from collections.abc import Iterable

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


def did_you_mean(name: str, known: Iterable[str], *, named: bool = False) -> str:
    """``"; did you mean 'x'?"`` with the known name closest to a mistyped ``name`` (``named``:
    ``"; for 'y' did you mean 'x'?"``, where a message lists several), or ``""`` when none is
    close: the tail of an error message."""
    import difflib  # only on the way to an error: import cacheplug stays lean

    close = difflib.get_close_matches(name, list(known), n=1)
    if not close:
        return ""
    return (
        f"; for {name!r} did you mean {close[0]!r}?" if named else f"; did you mean {close[0]!r}?"
    )
