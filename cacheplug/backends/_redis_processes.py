"""A ``RedisCache`` in other processes: a pickled copy (a ``spawn`` child's) builds clients of
its own from the cache's recipe, and a forked child renews the locks of the clients it inherits
and of their pools, which threads of the parent may have held at the fork.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from cacheplug.backends import _redis_cluster as cluster
from cacheplug.backends._redis_assigned import AssignableClients
from cacheplug.backends._redis_dead_server import DeadServer
from cacheplug.backends._redis_pools import pool_after_fork_in_child
from cacheplug.backends._redis_replacing import swap_lock
from cacheplug.core.base import BaseCache
from cacheplug.core.options import check_picklable

__all__ = ["ProcessCopies"]

# option values that always pickle: the others are tried first, to name the one that fails
_PLAIN = (str, bytes, int, float, type(None))


class ProcessCopies(AssignableClients):
    """Pickling and fork support of :class:`~cacheplug.backends.redis.RedisCache`."""

    #: the key_prefix given (a callable is pickled as it is)
    _key_prefix: str | Callable[[], str]
    #: The clients, their pools and what was learnt of the server: a pickled copy builds its
    #: own from :attr:`_recipe`.
    _process_local: ClassVar[frozenset[str]] = BaseCache._process_local | {
        "_client",
        "_once_client",
        "_reader",
        "_pending",
        "_direct",
        "_scripts_refused",
        "_swapping",
    }

    def _start_in_process(self) -> None:
        super()._start_in_process()
        #: held while a client takes another's place (see ``_redis_replacing``)
        self._swapping = swap_lock()

    def __getstate__(self) -> dict[str, Any]:
        """The options, for a copy in another process (a ``spawn`` child) that connects on its
        own with the same settings; clients, pools and ``stats`` stay here.

        The password and TLS passphrase travel in the pickle, as the secret does: send it to
        processes of your own.

        :raises TypeError: the cache uses a client or pool passed in (a ready object holds
            this process' connections), or an option cannot be pickled.
        """
        recipe = self._recipe
        if recipe is None:
            raise TypeError(
                f"cannot pickle a RedisCache on a client passed in as host "
                f"({type(self._write_client).__name__}) or assigned to its _write_client or "
                "_read_client: its connections belong to this process; "
                "build the cache with host=, port=, db=, password= (or startup_nodes= for a "
                "cluster, or from_url()) so that a copy connects on its own"
            )
        if recipe.kwargs.get("connection_pool") is not None:
            raise TypeError(
                "cannot pickle a RedisCache given connection_pool=: the pool's connections "
                "belong to this process; give its settings as keywords instead (host=, port=, "
                "db=, password=, max_connections= for its size...), so that a copy makes its own"
            )
        state = super().__getstate__()
        options = [("key_prefix", self._key_prefix), ("serializer", state.get("serializer"))]
        for name, value in [*options, *recipe.kwargs.items()]:
            if not isinstance(value, _PLAIN):
                check_picklable("RedisCache", name, value)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._build_clients()

    def _after_fork_in_child(self) -> None:
        """New locks for this cache's clients and their pools, a client passed in included
        (redis-py renews none of a cluster's and resets a pool under its old lock)."""
        super()._after_fork_in_child()
        self._swapping = swap_lock()
        if "_client" not in vars(self):  # forked while another thread was building it
            return
        if self._pending is not None:
            self._pending.after_fork_in_child()
        for client in (self._client, self._once_client, self._reader):
            if isinstance(client, DeadServer):
                client.after_fork_in_child()
        if self._cluster and self._client is not self._pending:
            cluster.after_fork_in_child(self._client)
        for pool in self._pools():
            pool_after_fork_in_child(pool)
