"""The clients of a ``RedisCache`` and their assignment under cachelib's names.

A cache builds its clients from its recipe, or adopts one passed in as ``host``. Code written
for cachelib reaches them as ``_write_client`` and ``_read_client``, and a subclass may assign
its own there (Flask-Caching's ``RedisSentinelCache`` does): the cache then uses, masks the
passwords of, and never closes the client it was given. How a swap keeps stale threads from
undoing it is in ``_redis_replacing``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cacheplug.backends import _redis_cluster as cluster
from cacheplug.backends import _redis_wire as wire
from cacheplug.backends._redis_clients import refuse_decoding, server_clients
from cacheplug.backends._redis_dead_server import DeadServer
from cacheplug.backends._redis_masking import secrets_of
from cacheplug.backends._redis_replacing import pools_of, retire
from cacheplug.core.base import BaseCache

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from cacheplug.backends.redis import _Recipe

__all__ = ["AssignableClients"]


class AssignableClients(BaseCache):
    """The clients part of :class:`~cacheplug.backends.redis.RedisCache`: which clients it
    uses for what, the pools they hold, and a client assigned to ``_write_client`` or
    ``_read_client``."""

    #: what builds the clients, again in a copy unpickled elsewhere (none for a client given)
    _recipe: _Recipe | None
    _client: Any
    #: the client of commands that must not run twice, when it is another one (``_once``)
    _once_client: Any
    #: the client of the reads, when a subclass assigned one apart (``_read_client``)
    _reader: Any = None
    #: a cluster client that connects on first use, while it has not
    _pending: cluster.PendingCluster | None
    _direct: bool
    _cluster: bool
    _owns_client: bool
    _where: str
    _name_errors: str
    _scripts_refused: bool
    #: the passwords its log lines and errors mask (Redis may echo them)
    _secrets: tuple[str, ...] = ()
    _swapping: AbstractContextManager[Any]

    def _build_clients(self, given: Any = None) -> None:
        """Make this cache's clients from :attr:`_recipe`, or use the client ``given`` (the
        ``host`` passed in) when there is none."""
        recipe = self._recipe
        self._pending = None
        # Commands that must not run twice go through a client that never retries.
        self._once_client = None
        if recipe is None:
            self._client = given
        elif recipe.nodes is not None:  # connects on first use
            kwargs = dict(recipe.kwargs)
            self._pending = cluster.PendingCluster(self, recipe.nodes, recipe.password, kwargs)
            self._client = self._pending
        else:
            self._client, self._once_client = server_clients(recipe.retries, dict(recipe.kwargs))
        # Whether get, set and get_many send their commands themselves on the client's pool
        # (names in UTF-8 with self._name_errors; a name it cannot encode goes through the client).
        self._direct = not self._cluster and wire.direct_ok(self._client)

    @property
    def _once(self) -> Any:
        """The client for commands that must not run twice (``inc``, ``add``, ``delete``)."""
        return self._once_client or self._client

    def _pools(self, built: bool = False) -> list[Any]:
        """The redis-py connection pools of this cache's clients (none of a cluster not yet
        connected); with ``built``, only those a client built for itself, not a pool given as
        ``connection_pool`` (nor a ``_read_client`` assigned: the user's)."""
        if self._cluster:
            if self._client is self._pending:
                return []
            clients = [self._client]
        else:
            clients = [self._client, self._once_client, *([] if built else [self._reader])]
        return [pool for client in self._reals(clients) for pool in pools_of(client, built)]

    @staticmethod
    def _reals(clients: Iterable[Any]) -> list[Any]:
        """The clients of ``clients`` that are there, those standing aside included."""
        reals = (client.real if isinstance(client, DeadServer) else client for client in clients)
        return [client for client in reals if client is not None]

    @property
    def _write_client(self) -> Any:
        """The redis-py client, under the name cachelib's ``RedisCache`` gives it: code written
        for cachelib reaches the server through it, and a subclass may assign its own client
        (then used for every call but the reads of a separate ``_read_client``)."""
        client = self._client
        return client.real if isinstance(client, DeadServer) else client

    @_write_client.setter
    def _write_client(self, client: Any) -> None:
        self._check_client("_write_client", client)
        with self._swapping:
            self._refuse_split(hasattr(client, "get_primaries"), self._reader)
            # those this cache built: closed, as nothing else would until the collector
            # came (a cluster still connecting closes its own, see PendingCluster)
            built = self._built_clients()
            self._adopt(client)
            self._build_clients(client)  # a separate _read_client stays
            self._name_errors = "strict"  # its packer decides, as for a client passed in as host
            self._scripts_refused = False
            self._learn_secrets(client)
        retire([old for old in built if old is not client], client)

    def _built_clients(self) -> list[Any]:
        """The clients this cache built and uses (none it was given, nor a cluster's that
        has not connected yet)."""
        if not self._owns_client or self._client is self._pending:
            return []
        return self._reals([self._client, self._once_client])

    def _adopt(self, client: Any) -> None:
        """Take ``client``, the user's (passed in as ``host`` or assigned to ``_write_client``):
        never closed by this cache, and no recipe, since it cannot travel in a pickle."""
        self._recipe = None
        self._where = f"client {type(client).__name__}"
        self._owns_client = False
        self._cluster = hasattr(client, "get_primaries")  # before _client: the fork reset

    @property
    def _read_client(self) -> Any:
        """The client of ``get``, ``get_many`` and ``has``, as cachelib's ``_read_client``: the
        ``_write_client`` unless a subclass assigned another (a replica's), as cachelib's
        subclasses for Redis Sentinel do."""
        client = self._client if self._reader is None else self._reader
        return client.real if isinstance(client, DeadServer) else client

    @_read_client.setter
    def _read_client(self, client: Any) -> None:
        with self._swapping:
            if client is self._write_client:
                self._reader = None
                return
            self._check_client("_read_client", client)
            self._refuse_split(self._cluster, client)
            self._recipe = None
            self._reader = client
            self._learn_secrets(client)

    def _learn_secrets(self, client: Any) -> None:
        """Add the passwords of ``client``, assigned by a subclass, to those masked; once each,
        as a subclass may assign clients again and again (on each failover, say)."""
        self._secrets = tuple(dict.fromkeys((*self._secrets, *secrets_of(None, {}, client))))

    @staticmethod
    def _check_client(attribute: str, client: Any) -> None:
        """Refuse what is no redis-py client, or one decoding replies, assigned to ``attribute``.

        :raises TypeError: no client.
        :raises ConfigurationError: a client with ``decode_responses=True``.
        """
        if isinstance(client, str) or not callable(getattr(client, "execute_command", None)):
            raise TypeError(
                f"RedisCache.{attribute} takes a redis-py client, got {type(client).__name__}; "
                "give a host name to the constructor instead"
            )
        refuse_decoding(client, {})

    @staticmethod
    def _refuse_split(cluster_writer: bool, reader: Any) -> None:
        """Refuse a separate read client next to a cluster's, or a cluster's as one.

        :raises TypeError: either is a ``RedisCluster``.
        """
        if reader is not None and (cluster_writer or hasattr(reader, "get_primaries")):
            raise TypeError(
                "RedisCache takes a separate _read_client only next to a single server's "
                "_write_client; for a Redis Cluster, assign one RedisCluster to both (give it "
                "read_from_replicas=True to read from replicas)"
            )
