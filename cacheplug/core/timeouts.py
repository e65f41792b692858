"""Timeouts: what a ``timeout`` argument and a ``default_timeout`` accept, in seconds."""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["LONGEST_TIMEOUT", "Timeout", "check_default_timeout", "normalize_timeout"]

#: What a ``timeout`` argument accepts: seconds, a timedelta, or None for the default.
Timeout = float | timedelta | None

#: The longest timeout in seconds (about 285 million years); a longer int counts as this
#: (and a more negative one as its negative).
LONGEST_TIMEOUT = 2**53


def normalize_timeout(timeout: object, default: float, name: str = "timeout") -> float:
    """Seconds until expiry: ``None`` → ``default``, ``0`` → never, negative → already expired.

    A :class:`datetime.timedelta` counts as its total seconds, as cachelib 0.17 accepts it.

    :raises TypeError: ``timeout`` is not ``None``, an int, a finite float or a timedelta; the
        message names the argument as ``name``.
    """
    if timeout is None:
        return default
    if type(timeout) is int:
        if -LONGEST_TIMEOUT <= timeout <= LONGEST_TIMEOUT:
            return timeout
        # beyond a float's exact range an int cannot be added to a clock: it means "very long"
        return LONGEST_TIMEOUT if timeout > 0 else -LONGEST_TIMEOUT
    seconds: float | None = None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    elif isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
        if seconds.is_integer():
            return int(seconds)  # whole seconds read as cachelib 0.17 has them: 60, not 60.0
    if seconds is not None and math.isfinite(seconds):
        return seconds
    raise TypeError(
        f"{name} must be None, 0 (never expires), a finite number of seconds or a timedelta, "
        f"got {type(timeout).__name__} {timeout!r}"
    )


def check_default_timeout(timeout: object, name: str = "default_timeout") -> float:
    """``timeout`` as a reassigned ``default_timeout``, in seconds (a timedelta counts as its
    total seconds): 0 never expires, below 0 entries are born expired, as cachelib's users
    rely on. Unlike a ``timeout`` argument, ``None`` names no default here.

    :raises TypeError: ``timeout`` is not an int, a finite float or a timedelta; the message
        names it as ``name``.
    """
    if timeout is not None:
        try:
            return normalize_timeout(timeout, 0, name)
        except TypeError:
            pass  # its message offers None, which is no value here
    raise TypeError(
        f"{name} must be a finite number of seconds (0: never expires, below 0: entries are "
        f"born expired) or a timedelta, got {type(timeout).__name__} {timeout!r}"
    )
