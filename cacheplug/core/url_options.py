"""The options of a cache URL's query: :data:`SHARED_OPTIONS`, which every backend takes, and
:func:`coerce_option`, which reads an option's text as its declared type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cacheplug.core.errors import ConfigurationError
from cacheplug.core.redaction import MASK, is_secret_value

__all__ = ["SHARED_OPTIONS", "coerce_option"]

#: Options every backend takes, with their types.
SHARED_OPTIONS: Mapping[str, type] = MappingProxyType(
    {"serializer": str, "default_timeout": float, "key_prefix": str, "secret": str}
)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


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
