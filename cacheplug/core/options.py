"""Checks of a backend's constructor options (which a URL's query gives too), run when the
cache is built or pickled: each error says what was given and what is accepted."""

from __future__ import annotations

import math
import pickle
import sys

from cacheplug.core.errors import ConfigurationError

__all__ = ["LONGEST_SOCKET_TIMEOUT", "check_bool", "check_picklable", "check_seconds"]

#: The longest socket timeout an option may give, in seconds (about 31 years): the socket
#: module refuses a few times more.
LONGEST_SOCKET_TIMEOUT = 1e9


def check_seconds(
    name: str,
    value: object,
    least: float = 0.0,
    *,
    above: bool = False,
    most: float = math.inf,
    none: str = "",
) -> float:
    """The option ``name`` as a float number of seconds, checked when the cache is built.

    ``value`` must be an int or float, not a bool, at least ``least`` (more than it when
    ``above``) and at most ``most``; NaN and infinity never pass. ``none`` says what ``None``
    means for an option that takes it (the caller lets it through).

    :raises ConfigurationError: says what was given and what is accepted.
    """
    # comparisons, not float(): an int too large for a float still fails them cleanly
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value > least if above else value >= least)
        and value <= most
        and value <= sys.float_info.max  # not infinity, nor an int no float can hold
    ):
        return float(value)
    bounds = f"{'>' if above else '>='} {least:g}"
    if most < math.inf:
        bounds += f" and <= {most:g}"
    alternative = f", or None {none}" if none else ""
    raise ConfigurationError(
        f"{name} must be a number of seconds {bounds}{alternative}, got {value!r}"
    )


def check_bool(name: str, value: object) -> bool:
    """The option ``name``, once it is a bool: text such as ``"no"`` would read as true.

    :raises TypeError: says what was given; ``from_url`` reads text (``?fsync=no``) itself.
    """
    if type(value) is not bool:
        raise TypeError(
            f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}; "
            "text such as 'no' is read only in a URL"
        )
    return value


def check_picklable(cache: str, option: str, value: object) -> None:
    """Raise a :class:`TypeError` naming ``option`` of a ``cache`` (its class name) being
    pickled unless ``value`` pickles."""
    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as err:
        raise TypeError(
            f"cannot pickle a {cache} whose {option} ({type(value).__name__}) cannot be pickled "
            f"({type(err).__name__}: {err}); give one that can (a registered name or a str, a "
            "module-level function or class), or build the cache in the other process"
        ) from err
