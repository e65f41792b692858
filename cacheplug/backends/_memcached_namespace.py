"""The namespace of a ``MemcachedCache`` with a ``key_prefix``.

Every key lives in a namespace named by a random token kept on each server; ``clear`` replaces
the token, reads fetch it in the same ``get`` round trip, ``has``, writes and ``incr`` read it
back in their own round trip (and are made again if it changed), so a ``clear`` by any process
is seen by every later call. The batch calls also come as steps (``_memcached_wire.finish``),
so a batch over several servers sends to all of them before it waits on any.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from cacheplug.backends import _memcached_counter_wire as counter_wire
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.backends._memcached_wire import Steps, finish

if TYPE_CHECKING:
    from cacheplug.backends._memcached_servers import Server

_Answer = TypeVar("_Answer")
_Result = TypeVar("_Result")

__all__ = [
    "TokenDroppedError",
    "add",
    "count",
    "delete",
    "delete_many",
    "delete_many_steps",
    "exists",
    "fetch",
    "fetch_steps",
    "load_token",
    "new_token",
    "store",
    "store_many",
    "store_many_steps",
    "token_key",
]


class TokenDroppedError(RuntimeError):
    """Other clients removed the namespace token through every attempt to read or create it.

    The call fails as in an outage, but the server answered: it is not marked down.
    """


def token_key(key_prefix: str) -> str:
    """The memcached key holding the token of ``key_prefix``'s namespace on each server."""
    return memcached_key(key_prefix + "~ns~")


def new_token() -> str:
    """A fresh token: the name of a new, empty namespace."""
    return secrets.token_hex(6)


def load_token(client: Any, server: Server, token_key: str, *, missed: bool = False) -> str:
    """The namespace token on ``server``, created when missing (a new, empty namespace);
    ``missed``: a read of it just found none."""
    for attempt in range(CREATE_ATTEMPTS):
        item = None if missed and not attempt else client.get(token_key)
        if item is not None:
            return server.seen_token(item[1].decode("ascii", "replace"))
        fresh = new_token()
        if client.add(token_key, (0, fresh.encode()), 0, False):
            return server.seen_token(fresh)
    raise TokenDroppedError(
        f"other clients kept removing the namespace token on memcached {server.name} while "
        f"this call tried to read or create it; gave up after {CREATE_ATTEMPTS} attempts"
    )


def fetch(
    client: Any, server: Server, keys: list[str], key_prefix: str, token_key: str
) -> dict[str, Any]:
    """Raw items of ``keys`` on ``server``, read with the namespace token in one round trip
    (``_seeing``)."""
    token_name = token_key.encode("ascii")

    def attempt(token: str) -> tuple[dict[str, Any], bytes | None]:
        names = _fetch_names(keys, f"{key_prefix}{token}:")
        return _found(wire.fetch(client, b" ".join([token_name, *names])), names, token_name)

    return _seeing(client, server, token_key, attempt)


def fetch_steps(
    client: Any, server: Server, keys: list[str], key_prefix: str, token_key: str
) -> Steps[dict[str, Any]]:
    """``fetch`` as steps."""
    token_name = token_key.encode("ascii")

    def attempt(token: str) -> Steps[tuple[dict[str, Any], bytes | None]]:
        names = _fetch_names(keys, f"{key_prefix}{token}:")
        items = yield from wire.fetch_steps(client, b" ".join([token_name, *names]))
        return _found(items, names, token_name)

    return (yield from _seeing_steps(client, server, token_key, attempt))


def _fetch_names(keys: list[str], prefix: str) -> dict[bytes, str]:
    """The memcached name of each of ``keys`` under ``prefix`` (the namespace's)."""
    return {memcached_key(prefix + key).encode("ascii"): key for key in keys}


def _found(
    items: dict[bytes, Any], names: dict[bytes, str], token_name: bytes
) -> tuple[dict[str, Any], bytes | None]:
    """The raw items a ``get`` of the ``names`` and of the token fetched, by key, and the
    token."""
    current = items.pop(token_name, None)
    found = {names[name]: item for name, item in items.items()}
    return found, None if current is None else current[1]


def exists(client: Any, server: Server, space: tuple[str, str], key: str) -> bool:
    """Whether ``key`` is stored in the namespace, without its value, the token read back
    with it (``_seeing``)."""
    key_prefix, token_key = space

    def attempt(token: str) -> tuple[bool, bytes | None]:
        return wire.exists_seeing(client, memcached_key(f"{key_prefix}{token}:{key}"), token_key)

    return _seeing(client, server, token_key, attempt)


def _seeing(
    client: Any,
    server: Server,
    token_key: str,
    attempt: Callable[[str], tuple[_Answer, bytes | None]],
    *,
    read: str | None = None,
) -> _Answer:
    """What ``attempt(token)`` answers, a call in the namespace named ``token`` that reads the
    token back in its round trip: one round trip unless the namespace changed. The call goes
    under the token last seen (``read``: the one this call already read); if the token read
    back differs (a clear elsewhere, a lost token), it is made again, once, under the current
    one."""
    # Once the token was read during this call, a change after it comes from a clear that
    # overlaps the call and may count as made after it: no further attempt, so a storm of
    # clears cannot starve a call.
    known = server.token if read is None else read
    # an empty token, stored by another client, is a token too
    fresh = known is None or read is not None
    token = load_token(client, server, token_key) if known is None else known
    while True:
        answer, seen = attempt(token)
        current = None if seen is None else seen.decode("ascii", "replace")
        if current == token:
            return answer
        if fresh:
            if current is not None:
                server.seen_token(current)
            return answer
        if current is None:  # namespace lost (restart, eviction): a new one, empty
            token = load_token(client, server, token_key)
        else:
            token = server.seen_token(current)
        fresh = True


def _seeing_steps(
    client: Any,
    server: Server,
    token_key: str,
    attempt: Callable[[str], Steps[tuple[_Answer, bytes | None]]],
) -> Steps[_Answer]:
    """``_seeing`` as steps: its first attempt, under the token last seen, pauses after its
    request is sent, and so does the read of a token not seen yet; any further one (the
    namespace changed, the token is missing) runs alone."""
    read: str | None = None  # the token, when this call read it
    known = server.token
    if known is None:  # the token is read first, in a round trip of its own
        name = token_key.encode("ascii")
        item = (yield from wire.fetch_steps(client, name)).get(name)
        if item is None:  # missing: created, alone
            known = read = load_token(client, server, token_key, missed=True)
        else:
            known = read = server.seen_token(item[1].decode("ascii", "replace"))
    first = [(known, (yield from attempt(known)))]

    def again(token: str) -> tuple[_Answer, bytes | None]:
        # _seeing's first attempt is the one just made, unless the token changed meanwhile
        if first and first[0][0] == token:
            return first.pop()[1]
        return finish(attempt(token))

    return _seeing(client, server, token_key, again, read=read)


def _write(
    client: Any,
    server: Server,
    space: tuple[str, str],
    keys: list[str],
    *,
    requests: Callable[[list[str]], list[bytes]],
    answers: Mapping[bytes, _Answer],
) -> list[_Answer]:
    """Writes of ``keys`` in the namespace, the token read back with them (``_seeing``).
    ``space``: the key prefix and its token key; ``requests``: the commands for the keys'
    memcached names, in order. What each command's reply says was done."""
    attempt = _writing(wire.write, client, space, keys, requests, answers)
    return _seeing(client, server, space[1], attempt)


def _writing(  # noqa: PLR0917 (_write's arguments, passed on)
    write: Callable[..., _Result],
    client: Any,
    space: tuple[str, str],
    keys: list[str],
    requests: Callable[[list[str]], list[bytes]],
    answers: Mapping[bytes, Any],
) -> Callable[[str], _Result]:
    """An attempt of ``_write`` under a token, made by ``write`` (``wire.write`` or, as steps,
    ``wire.write_steps``)."""
    key_prefix, token_key = space

    def attempt(token: str) -> _Result:
        names = [memcached_key(f"{key_prefix}{token}:{key}") for key in keys]
        return write(client, requests(names), answers, token_key)

    return attempt


def count(
    client: Any, server: Server, space: tuple[str, str], key: str, step: int
) -> tuple[str, tuple[int | None, int | None, bool]]:
    """``incr`` of ``key`` in the namespace by ``step``, the token read back with it
    (``_seeing``): the memcached key it counted and ``counter_wire.count``'s answer."""
    key_prefix, token_key = space

    def attempt(token: str) -> tuple[tuple[str, Any], bytes | None]:
        name = memcached_key(f"{key_prefix}{token}:{key}")
        counted, seen = counter_wire.count_seeing(client, name, step, token_key)
        return (name, counted), seen

    return _seeing(client, server, token_key, attempt)


def store_many_steps(
    client: Any,
    server: Server,
    space: tuple[str, str],
    items: Mapping[str, tuple[int, bytes]],
    exptime: int,
) -> Steps[list[bool | None]]:
    """``store_many`` as steps."""
    requests = _stores(items, exptime)
    attempt = _writing(
        wire.write_steps, client, space, list(items), requests, wire.STORED_OR_REFUSED
    )
    return (yield from _seeing_steps(client, server, space[1], attempt))


def store_many(
    client: Any,
    server: Server,
    space: tuple[str, str],
    items: Mapping[str, tuple[int, bytes]],
    exptime: int,
) -> list[bool | None]:
    """``set`` of each of ``items`` in the namespace; whether memcached stored each, None when
    it refused one (too large, out of memory)."""
    requests = _stores(items, exptime)
    return _write(
        client, server, space, list(items), requests=requests, answers=wire.STORED_OR_REFUSED
    )


def _stores(
    items: Mapping[str, tuple[int, bytes]], exptime: int
) -> Callable[[list[str]], list[bytes]]:
    """The ``set`` commands of ``items`` for their memcached names, in order."""

    def requests(names: list[str]) -> list[bytes]:
        return [
            wire.storage_request(b"set", name, item, exptime)
            for name, item in zip(names, items.values(), strict=True)
        ]

    return requests


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

    def request(names: list[str]) -> list[bytes]:
        return [wire.storage_request(command, names[0], item, exptime)]

    return _write(client, server, space, [key], requests=request, answers=wire.STORED)[0]


#: ``set`` of a key in the namespace: ``store(client, server, space, key, item, exptime)``.
store = partial(_storage, b"set")
#: ``add`` of a key in the namespace, with ``store``'s arguments: whether it was missing.
add = partial(_storage, b"add")


def delete_many_steps(
    client: Any, server: Server, space: tuple[str, str], keys: list[str]
) -> Steps[list[bool]]:
    """``delete`` of ``keys`` in the namespace, as steps; whether each existed."""
    attempt = _writing(wire.write_steps, client, space, keys, _deletes, wire.DELETED)
    return (yield from _seeing_steps(client, server, space[1], attempt))


def delete_many(client: Any, server: Server, space: tuple[str, str], keys: list[str]) -> list[bool]:
    """``delete`` of ``keys`` in the namespace; whether each existed."""
    return _write(client, server, space, keys, requests=_deletes, answers=wire.DELETED)


def delete(client: Any, server: Server, space: tuple[str, str], key: str) -> bool:
    """``delete`` of ``key`` in the namespace; whether it existed."""
    return _write(client, server, space, [key], requests=_deletes, answers=wire.DELETED)[0]


def _deletes(names: list[str]) -> list[bytes]:
    """The ``delete`` commands of ``names``."""
    return [wire.delete_request(name) for name in names]
