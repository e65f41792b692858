"""The memcached commands ``MemcachedCache`` sends through pymemcache's ``Client``.

The hot ones and compare-and-swap are in ``_memcached_wire``; these are the others.
``FAILED`` is what the backend's engine calls answer when one failed.
"""

from __future__ import annotations

from typing import Any

from cacheplug.backends._memcached_wire import EXISTS, exists_request

__all__ = ["CREATE_ATTEMPTS", "FAILED", "add", "delete", "exists"]


class _Failed:
    """Marks an engine call that failed (already counted and logged)."""

    def __repr__(self) -> str:
        return "<failed>"


FAILED: Any = _Failed()
#: Tries at creating an entry (add) that other clients keep creating or deleting meanwhile.
CREATE_ATTEMPTS = 8


def add(client: Any, key: str, item: tuple[int, bytes], exptime: int) -> bool:
    """memcached ``add``: whether ``key`` was missing and is now stored."""
    return bool(client.add(key, item, exptime, False))


def delete(client: Any, key: str) -> bool:
    """memcached ``delete``: whether ``key`` existed."""
    return bool(client.delete(key, False))


def exists(client: Any, key: str) -> bool:
    """Whether ``key`` is stored, by a meta get that asks for no value back."""
    command = exists_request(client.check_key(key, client.key_prefix))
    return EXISTS.get(client._misc_cmd([command], b"mg", False)[0]) is True
