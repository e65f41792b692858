"""The namespace of a ``MemcachedCache`` with a ``key_prefix``.

Every key lives in a namespace named by a random token kept on each server; ``clear`` replaces
the token, reads fetch it in the same ``get`` round trip, ``set``/``add``/``delete`` read it in
the round trip of the write (and write again if it changed) and the other writes read it
first, so a ``clear`` by any process is seen by every later call.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS
from cacheplug.backends._memcached_keys import memcached_key

if TYPE_CHECKING:
    from cacheplug.backends._memcached_servers import Server

__all__ = ["add", "delete", "fetch", "load_token", "names", "new_token", "store", "token_key"]


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


def _write(
    client: Any,
    server: Server,
    space: tuple[str, str],
    key: str,
    *,
    request: Callable[[str], bytes],
    answers: Mapping[bytes, bool],
) -> bool:
    """A write of ``key`` in the namespace, one round trip unless the namespace changed: it
    goes under the token last seen, and the token read right after it tells whether that was
    still the namespace; if not (a clear elsewhere, a lost token), it is made again under the
    current one. ``space``: the key prefix and its token key; ``request``: the command for a
    memcached key. What the command's reply says was done."""
    key_prefix, token_key = space
    token = server.token or load_token(client, server, token_key)
    for _ in range(CREATE_ATTEMPTS):
        name = memcached_key(f"{key_prefix}{token}:{key}")
        done, seen = wire.write_seeing(client, request(name), answers, token_key)
        if seen is None:  # namespace lost (restart, eviction): write into the new one
            token = load_token(client, server, token_key)
            continue
        current = seen.decode("ascii", "replace")
        if current == token:
            return done
        token = server.seen_token(current)
    raise ConnectionError(f"memcached {server.name} keeps replacing the namespace token")


def _storage(  # noqa: PLR0917 (called through MemcachedCache._run, which passes by position)
    command: bytes,
    client: Any,
    server: Server,
    space: tuple[str, str],
    key: str,
    item: tuple[int, bytes],
    exptime: int,
) -> bool:
    """A storage ``command`` of ``key`` in the namespace; whether memcached stored it."""
    request = partial(wire.storage_request, command, item=item, exptime=exptime)
    return _write(client, server, space, key, request=request, answers=wire.STORED)


#: ``set`` of a key in the namespace: ``store(client, server, space, key, item, exptime)``.
store = partial(_storage, b"set")
#: ``add`` of a key in the namespace, with ``store``'s arguments: whether it was missing.
add = partial(_storage, b"add")


def delete(client: Any, server: Server, space: tuple[str, str], key: str) -> bool:
    """``delete`` of ``key`` in the namespace; whether it existed."""
    return _write(client, server, space, key, request=wire.delete_request, answers=wire.DELETED)
