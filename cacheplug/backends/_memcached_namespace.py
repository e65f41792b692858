"""The namespace of a ``MemcachedCache`` with a ``key_prefix``.

Every key lives in a namespace named by a random token kept on each server; ``clear`` replaces
the token, reads fetch it in the same ``get`` round trip, ``set`` reads it in the round trip of
the write (and writes again if it changed) and other writes read it first, so a ``clear`` by
any process is seen by every later call.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS
from cacheplug.backends._memcached_keys import memcached_key

if TYPE_CHECKING:
    from cacheplug.backends._memcached_servers import Server

__all__ = ["fetch", "load_token", "names", "new_token", "store", "token_key"]


def token_key(key_prefix: str) -> str:
    """The memcached key holding the token of ``key_prefix``'s namespace on each server."""
    return memcached_key(key_prefix + "~ns~")


def new_token() -> str:
    """A fresh token: the name of a new, empty namespace."""
    return secrets.token_hex(6)


def names(key_prefix: str, token: str, keys: Iterable[str]) -> dict[str, str]:
    """``{memcached key: key}`` of ``keys`` in the namespace named ``token``."""
    prefix = f"{key_prefix}{token}:"
    return {memcached_key(prefix + key): key for key in keys}


def load_token(client: Any, server: Server, token_key: str) -> str:
    """The namespace token on ``server``, created when missing (a new, empty namespace)."""
    for _ in range(CREATE_ATTEMPTS):
        item = client.get(token_key)
        if item is not None:
            return server.seen_token(item[1].decode("ascii", "replace"))
        fresh = new_token()
        if client.add(token_key, (0, fresh.encode()), 0, False):
            return server.seen_token(fresh)
    raise ConnectionError(f"memcached {server.name} keeps dropping the namespace token")


def fetch(
    client: Any, server: Server, keys: list[str], key_prefix: str, token_key: str
) -> dict[str, Any]:
    """Raw items of ``keys`` on ``server``, read with the namespace token in one round trip."""
    token = server.token or load_token(client, server, token_key)
    token_name = token_key.encode("ascii")
    for _ in range(2):
        prefix = f"{key_prefix}{token}:"
        names = {memcached_key(prefix + key).encode("ascii"): key for key in keys}
        items = wire.fetch(client, b" ".join([token_name, *names]))
        current = items.pop(token_name, None)
        if current is None:  # namespace lost (restart, eviction): a new one is empty
            load_token(client, server, token_key)
            return {}
        seen = current[1].decode("ascii", "replace")
        if seen == token:
            return {names[name]: item for name, item in items.items()}
        token = server.seen_token(seen)  # cleared elsewhere: read the new namespace
    return {}


def store(  # noqa: PLR0917 (called through MemcachedCache._run, which passes by position)
    client: Any,
    server: Server,
    space: tuple[str, str],
    key: str,
    item: tuple[int, bytes],
    exptime: int,
) -> bool:
    """``set`` of ``key`` in the namespace, one round trip unless the namespace changed: the
    write goes under the token last seen, and the token read right after it tells whether
    that was still the namespace; if not (a clear elsewhere, a lost token), it is written
    again under the current one. ``space``: the key prefix and its token key. Whether
    memcached stored it."""
    key_prefix, token_key = space
    token = server.token or load_token(client, server, token_key)
    for _ in range(CREATE_ATTEMPTS):
        name = memcached_key(f"{key_prefix}{token}:{key}")
        stored, seen = wire.store_seeing(client, name, item, exptime, token_key)
        if seen is None:  # namespace lost (restart, eviction): write into the new one
            token = load_token(client, server, token_key)
            continue
        current = seen.decode("ascii", "replace")
        if current == token:
            return stored
        token = server.seen_token(current)
    raise ConnectionError(f"memcached {server.name} keeps replacing the namespace token")
