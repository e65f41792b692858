"""The peers cacheplug is measured against, behind one small ``get``/``set`` shape."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import cachelib
import cachetools

from cacheplug import SimpleCache

__all__ = ["BareTTLCache", "CacheLike", "LockedTTLCache", "simple_peers"]

DEFAULT_TIMEOUT = 300


class CacheLike(Protocol):
    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any) -> Any: ...


class LockedTTLCache:
    """``cachetools.TTLCache`` behind a ``threading.Lock``: the thread-safe way to share it.

    It keeps references, not copies: mutating a value after ``set`` changes the cached one.
    """

    def __init__(self, maxsize: int, ttl: float = DEFAULT_TIMEOUT) -> None:
        self._cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize, ttl)
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            return self._cache.get(key)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._cache[key] = value


class BareTTLCache:
    """``cachetools.TTLCache`` as it is: no lock, so not safe to share between threads."""

    def __init__(self, maxsize: int, ttl: float = DEFAULT_TIMEOUT) -> None:
        cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize, ttl)
        self.get = cache.get
        self.set = cache.__setitem__


def simple_peers(threshold: int, *, bare: bool = True) -> dict[str, CacheLike]:
    """cacheplug's SimpleCache and its in-memory peers, each holding at most ``threshold``."""
    peers: dict[str, CacheLike] = {
        "cacheplug": SimpleCache(threshold, default_timeout=DEFAULT_TIMEOUT),
        "cachelib": cachelib.SimpleCache(threshold, default_timeout=DEFAULT_TIMEOUT),
        "cachetools+lock": LockedTTLCache(threshold),
    }
    if bare:
        peers["cachetools"] = BareTTLCache(threshold)
    return peers
