"""``NullCache``: stores nothing (scheme ``null``), for tests and for switching caching off."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from cacheplug.core.arguments import check_delta, check_key
from cacheplug.core.base import BaseCache
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.timeouts import Timeout, normalize_timeout

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn
    from cacheplug.core.serializer import SerializerLike

__all__ = ["NullCache"]


class NullCache(BaseCache):
    """A cache that forgets everything at once.

    ``set`` and ``add`` accept (and encode, so a bad value still raises) but keep nothing;
    every read is a miss.

    :param default_timeout: as for every backend; :param ignore_delete_many_errors: accepted
        for cachelib compatibility (cachelib's ``NullCache`` takes both, in this order).
    """

    _keeps_entries: ClassVar[bool] = False

    def __init__(
        self,
        default_timeout: float | timedelta = 300,
        ignore_delete_many_errors: bool = True,
        *,
        key_prefix: str = "",
        serializer: str | SerializerLike | None = None,
        secret: str | bytes | None = None,
    ) -> None:
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self.ignore_delete_many_errors = ignore_delete_many_errors

    def get(self, key: str) -> Any:
        check_key(key)
        self._misses += 1
        return None

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        normalize_timeout(timeout, self._default_timeout)  # a bad one raises
        self._encode(value, key)
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
        # encoded, as SimpleCache does: a count its serializer cannot store is OverflowError
        self._encode_count(key, delta)
        self._sets += 1
        return delta


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("null", NullCache)
