"""Checks of the arguments the contract's calls take, for every backend to raise the same
:class:`TypeError`."""

from __future__ import annotations

__all__ = ["check_delta", "check_key", "check_mapping", "checked_counter"]


def check_key(key: object) -> None:
    """Raise :class:`TypeError` unless ``key`` is a ``str``."""
    if type(key) is not str and not isinstance(key, str):
        raise TypeError(f"cache key must be str, got {type(key).__name__} {key!r}")


def check_mapping(mapping: object) -> None:
    """Raise :class:`TypeError` unless ``mapping`` has ``items()``, as a dict does."""
    if not callable(getattr(mapping, "items", None)):
        raise TypeError(
            "set_many takes a mapping of str keys to values, such as a dict, got "
            f"{type(mapping).__name__}; make one from (key, value) pairs with dict(pairs)"
        )


def check_delta(delta: object) -> None:
    """Raise :class:`TypeError` unless ``delta`` is an int."""
    if type(delta) is not int:
        raise TypeError(f"delta must be int, got {type(delta).__name__} {delta!r}")


def checked_counter(key: str, value: object) -> int:
    """``value`` as a counter, or :class:`TypeError` when it is not an integer."""
    if type(value) is int:
        return value
    raise TypeError(f"cannot increment {key!r}: it holds a {type(value).__name__}, not an int")
