"""``NullCache``: stores nothing (scheme ``null``), for tests and for switching caching off."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cacheplug.core.base import BaseCache, Timeout, check_delta, check_key, normalize_timeout
from cacheplug.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["NullCache"]


class NullCache(BaseCache):
    """A cache that forgets everything at once.

    ``set`` and ``add`` accept (and encode, so a bad value still raises) but keep nothing;
    every read is a miss.
    """

    def get(self, key: str) -> Any:
        check_key(key)
        self._misses += 1
        return None

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        normalize_timeout(timeout, self.default_timeout)
        self._encode(value)
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        check_key(key)
        return False

    def has(self, key: str) -> bool:
        check_key(key)
        return False

    def clear(self) -> bool:
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_key(key)
        check_delta(delta)
        return delta


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("null", NullCache)
