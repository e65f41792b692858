"""The parts of ``MemcachedCache``'s batch calls (``get_many``, ``set_many``, ``delete_many``)
shared by several of them or run on each server: the keys grouped by server, the raw items
fetched from every server involved, the keys a ``set_many`` batch stored, and the steps of a
namespaced ``set_many`` on one server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cacheplug.backends import _memcached_namespace as namespace
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_calls import Call, ServerCalls
from cacheplug.backends._memcached_commands import FAILED
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.backends._memcached_servers import Ring, Server
from cacheplug.core.arguments import check_key

if TYPE_CHECKING:
    from cacheplug.backends._memcached_wire import Steps

__all__ = ["ServerBatches", "store_many_at", "store_many_in"]


class ServerBatches(ServerCalls):
    """The batch parts of :class:`~cacheplug.backends.memcached.MemcachedCache`: they read its
    servers and namespace, and make single-key calls through it."""

    if TYPE_CHECKING:
        _only: Server | None
        _ring: Ring
        _namespace: tuple[str, str] | None
        #: ``MemcachedCache._call_one``: a call about one key on its server
        _call_one: Callable[..., Any]

    def _fetch(self, keys: Iterable[str], operation: str) -> tuple[dict[str, Any], set[str]]:
        """Raw items of the present ``keys``, one round trip per server involved, and the keys
        whose server failed."""
        found: dict[str, Any] = {}
        lost: set[str] = set()
        space = self._namespace
        groups = self._by_server(keys, space)
        if space is not None and len(groups) == 1:  # nothing to overlap: the plain call is leaner
            ((server, group),) = groups.items()
            items = self._run(server, operation, namespace.fetch, server, group, *space)
            return ({}, set(group)) if items is FAILED else (items, lost)
        calls: list[Call] = [
            (server, _fetch_keys, (group,))
            if space is None
            else (server, namespace.fetch_steps, (server, group, *space))
            for server, group in groups.items()
        ]
        for group, items in zip(groups.values(), self._run_each(operation, calls), strict=True):
            if items is FAILED:
                lost.update(group)
            else:
                found.update(items)
        return found, lost

    def _by_server(
        self, keys: Iterable[str], space: tuple[str, str] | None
    ) -> dict[Server, list[str]]:
        """``keys``, each once, grouped by their server (in the namespace ``space``, placed by
        the prefixed key)."""
        groups: dict[Server, list[str]] = {}
        only, ring = self._only, self._ring
        prefix = "" if space is None else space[0]
        try:
            unique = dict.fromkeys(keys)
        except TypeError:  # an unhashable key (a list given for *keys): say what keys must be
            for key in keys:
                check_key(key)
            raise
        for key in unique:
            if type(key) is not str:
                check_key(key)
            server = only or ring(prefix + key)
            groups.setdefault(server, []).append(key)
        return groups

    def _stored(
        self,
        server: Server,
        space: tuple[str, str] | None,
        items: dict[str, tuple[int, bytes]],
        exptime: int,
        *,
        done: Any,
        dropped: list[namespace.TokenDroppedError],
    ) -> list[str]:
        """The keys of ``items`` stored on ``server`` in the namespace ``space``, ``done`` the
        answer of their batch (``dropped``: its namespace token kept vanishing): key by key
        when the server answered the batch with an error."""
        # key by key, unless the server is down or the namespace token kept vanishing: every
        # key would meet it again, 2 * CREATE_ATTEMPTS round trips each
        if done is FAILED and len(items) > 1 and not server.down_until and not dropped:
            done = [
                self._call_one("set_many", space, key, namespace.store, wire.store, item, exptime)
                is True
                for key, item in items.items()
            ]
        if done is FAILED:
            return []
        refused = done.count(None)
        if refused:  # one error for the call, as on Redis and for a batch that failed whole
            from pymemcache.exceptions import MemcacheServerError

            self._backend_error(
                "set_many",
                MemcacheServerError(
                    f"memcached {server.name} refused {refused} of {len(items)} values "
                    f"(too large for its item size limit, or out of memory)"
                ),
            )
        return [key for key, ok in zip(items, done, strict=True) if ok]


def _fetch_keys(client: Any, keys: list[str]) -> Steps[dict[str, Any]]:
    """Raw items of the present ``keys`` (no namespace), as steps."""
    names = {memcached_key(key).encode("ascii"): key for key in keys}
    items = yield from wire.fetch_steps(client, b" ".join(names))
    return {names[name]: item for name, item in items.items()}


def store_many_in(  # noqa: PLR0917 (called through MemcachedCache._run_each, by position)
    client: Any,
    server: Server,
    space: tuple[str, str],
    items: Mapping[str, tuple[int, bytes]],
    exptime: int,
    dropped: list[namespace.TokenDroppedError],
) -> Steps[list[bool | None]]:
    """``namespace.store_many_steps``, its ``TokenDroppedError`` also kept in ``dropped``."""
    with _Keeping(dropped):
        return (yield from namespace.store_many_steps(client, server, space, items, exptime))


def store_many_at(  # noqa: PLR0917 (called through MemcachedCache._run, by position)
    client: Any,
    server: Server,
    space: tuple[str, str],
    items: Mapping[str, tuple[int, bytes]],
    exptime: int,
    dropped: list[namespace.TokenDroppedError],
) -> list[bool | None]:
    """``namespace.store_many``, its ``TokenDroppedError`` also kept in ``dropped``."""
    with _Keeping(dropped):
        return namespace.store_many(client, server, space, items, exptime)


class _Keeping:
    """Keeps a ``TokenDroppedError`` raised inside it in ``dropped``, and lets it through."""

    __slots__ = ("dropped",)

    def __init__(self, dropped: list[namespace.TokenDroppedError]) -> None:
        self.dropped = dropped

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, err: BaseException | None, trace: object) -> None:
        if isinstance(err, namespace.TokenDroppedError):
            self.dropped.append(err)
