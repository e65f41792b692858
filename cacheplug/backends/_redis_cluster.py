"""Redis Cluster for ``RedisCache``: startup nodes, a client that connects on first use, and
commands sent in one pipeline per node, so a node that hangs costs one timeout, not one per key.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cacheplug.backends._redis_clients import checked_host, checked_port, shown_host
from cacheplug.backends._redis_pools import (
    close_when_cut_short,
    closes_connection,
    pool_exhausted,
)
from cacheplug.backends._redis_replacing import put_back, retire
from cacheplug.backends._redis_wire import mget_pieces
from cacheplug.core._entering import entering
from cacheplug.core.errors import ConfigurationError

if TYPE_CHECKING:
    from cacheplug.backends._redis_assigned import AssignableClients

__all__ = [
    "PendingCluster",
    "after_fork_in_child",
    "cluster_nodes",
    "each_primary",
    "mget",
    "node_pipelines",
    "refresh",
]

BUILD_RETRIES = 3  # other primaries the constructor may ask when one is down
_RLOCK = type(threading.RLock())


def cluster_nodes(startup_nodes: Sequence[Any], db: int) -> list[tuple[str, int]]:
    """The ``(host, port)`` startup nodes of a cluster, once they and ``db`` fit one.

    :param startup_nodes: ``(host, port)`` pairs or redis-py ``ClusterNode`` objects.
    """
    nodes = []
    for node in startup_nodes:
        pair = (node.host, node.port) if hasattr(node, "host") and hasattr(node, "port") else node
        try:
            if isinstance(pair, str | bytes):  # "h1" would unpack into a host and a port
                raise TypeError
            host, port = pair
            if not isinstance(host, str):
                raise TypeError
            nodes.append((checked_host(host), checked_port(port)))
        except (TypeError, ValueError):  # a ConfigurationError is a ValueError too
            raise ConfigurationError(
                f"startup_nodes takes (host, port) pairs (a host name and a port from 1 to "
                f"65535) or redis-py ClusterNode objects, got {shown_host(repr(node))}"
            ) from None
    if not nodes:
        raise ConfigurationError("startup_nodes needs at least one (host, port)")
    if db != 0:
        raise ConfigurationError(
            f"a Redis Cluster has only db 0, got db={db!r}; leave db out or pass db=0"
        )
    return nodes


def _cluster_client(
    nodes: list[tuple[str, int]], password: str | None, kwargs: dict[str, Any]
) -> Any:
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    # The constructor asks one primary (the one holding slot 0) for the server's commands; it
    # asks another only on a retry, so without one no client is built while that node is down.
    building = {**kwargs, "retry": Retry(NoBackoff(), BUILD_RETRIES)}
    client: Any = RedisCluster(startup_nodes=startup, password=password, **building)
    client.set_retry(kwargs["retry"])
    # Each node has a pool of its own, made when the client finds the node.
    manager: Any = client.nodes_manager
    create_redis_node = manager.create_redis_node

    def create_closing_node(*args: Any, **node_kwargs: Any) -> Any:
        node = create_redis_node(*args, **node_kwargs)
        close_when_cut_short(node.connection_pool)
        return node

    manager.create_redis_node = create_closing_node
    for node in client.get_nodes():
        if node.redis_connection is not None:
            close_when_cut_short(node.redis_connection.connection_pool)
    return client


def after_fork_in_child(client: Any) -> None:
    """In a forked child: new locks for a ``RedisCluster`` and its nodes manager.

    A thread of the parent holding one at the fork would hold it forever in the child: asking
    the cluster for its slots (``clear()``, a failover, a moved slot) holds the manager's locks
    for as long as a node takes to answer, and finding a node or closing the client holds the
    others. The child's next such call would wait forever.
    """
    manager = getattr(client, "nodes_manager", None)
    held = [
        (client, "_lock"),
        (getattr(client, "_event_dispatcher", None), "_lock"),
        (manager, "_lock"),
        (manager, "_initialization_lock"),
        (getattr(manager, "_event_dispatcher", None), "_lock"),
        (getattr(manager, "read_load_balancer", None), "_lock"),
    ]
    renewed: dict[int, Any] = {}  # a lock two owners share stays shared
    for owner, name in held:
        lock = getattr(owner, name, None)
        if lock is not None:
            fresh = threading.RLock() if isinstance(lock, _RLOCK) else threading.Lock()
            setattr(owner, name, renewed.setdefault(id(lock), fresh))


class PendingCluster:
    """Stands in for a ``RedisCluster`` until its nodes answer (its constructor connects)."""

    def __init__(
        self,
        cache: AssignableClients,
        nodes: list[tuple[str, int]],
        password: str | None,
        kwargs: dict[str, Any],
    ) -> None:
        self._cache = cache
        self._connect: Callable[[], Any] = lambda: _cluster_client(nodes, password, kwargs)
        self._lock = threading.Lock()
        self._locked = entering(self._lock)
        # The client built, held apart from the cache: redis-py's RedisCluster lies in
        # reference cycles, so only the cycle collector frees it, and it may finalize the
        # client's sockets (each warning "unclosed socket") before the client's __del__ closes
        # them. A dropped cache closes its client first.
        self.built: list[Any] = []
        weakref.finalize(cache, _close_dropped, self.built).atexit = False

    def after_fork_in_child(self) -> None:
        """Drop the lock, which a thread of the parent may have held at the fork."""
        self._lock = threading.Lock()
        self._locked = entering(self._lock)

    def __getattr__(self, name: str) -> Any:
        with self._locked:
            client = self._cache._client
            if client is self:
                client = self._connect()
                self.built[:] = [client]
                if not put_back(self._cache, "_client", self, client):  # assigned meanwhile
                    retire([client], self._cache._write_client)
        return getattr(client, name)


def _close_dropped(built: list[Any]) -> None:
    """Close the connections of the client a cache built, once the cache is dropped."""
    for client in built:
        with contextlib.suppress(Exception):  # the collector has no caller to tell
            client.close()
    built.clear()


def refresh(client: Any) -> None:
    """Ask the cluster for its nodes and slots now.

    Commands for every primary (``FLUSHDB``, ``SCAN``) go to the primaries the client knows: a
    node that joined since it last asked would be left out, and a primary turned replica by a
    failover would refuse to be flushed.
    """
    client.nodes_manager.initialize()


def each_primary(
    client: Any, action: Callable[[Any], object], failures: tuple[type[Exception], ...]
) -> Exception | None:
    """Run ``action`` on the client of each primary of the cluster (as :func:`refresh` finds
    them), on every one whatever the others do; the first failure, if any.

    A node that is down leaves the others' work done (``clear`` empties what it can reach),
    and a cluster that cannot be asked for its nodes fails at once.

    :raises RedisError: the cluster does not say which its primaries are.
    """
    refresh(client)
    failed: Exception | None = None
    for node in client.get_primaries():
        try:
            action(client.get_redis_connection(node))
        except failures as err:
            failed = failed or err
    return failed


def mget(
    client: Any,
    names: Sequence[str | bytes],
    pipeline: Callable[[list[tuple[Any, ...]]], list[Any] | None],
) -> tuple[list[Any], int]:
    """The payloads of ``names`` on a cluster, one ``MGET`` per slot, all sent by ``pipeline``,
    ``None`` for the names whose ``MGET`` failed (``pipeline`` logs it), and how many failed.
    """
    slots: dict[int, list[int]] = {}
    for index, name in enumerate(names):
        slots.setdefault(client.keyslot(name), []).append(index)
    # a slot of many names (hash tags) is read in pieces, each bounded by the socket timeout
    pieces = [piece for indexes in slots.values() for piece in mget_pieces(indexes)]
    replies = pipeline([("MGET", *(names[i] for i in indexes)) for indexes in pieces])
    if replies is None:
        return [None] * len(names), len(names)
    payloads: list[Any] = [None] * len(names)
    unread = 0
    for indexes, reply in zip(pieces, replies, strict=True):
        if isinstance(reply, Exception):
            unread += len(indexes)
        else:
            for index, payload in zip(indexes, reply, strict=True):
                payloads[index] = payload
    return payloads, unread


def node_pipelines(
    client: Any, commands: Sequence[tuple[Any, ...]], failures: tuple[type[Exception], ...]
) -> list[Any]:
    """Replies of one-key ``commands`` on a cluster, in one pipeline per node.

    Each node is asked once: the commands go out to every node before any reply is read, and
    a node that fails (down, or hung past ``socket_timeout``) gives its exception as the reply
    of each of its commands while the other nodes' replies stand. A redirection (the slot
    moved) is followed by the client, command by command; once one meets ``CLUSTERDOWN`` again,
    the other ``CLUSTERDOWN`` replies stand as they are.

    :param failures: the exceptions that mean a node or the cluster failed.
    :raises RedisError: the nodes of the keys cannot be found.
    """
    from redis import exceptions

    groups: dict[str, tuple[Any, list[int]]] = {}
    for index, command in enumerate(commands):
        node = client.get_node_from_key(command[1])
        groups.setdefault(node.name, (node, []))[1].append(index)
    results: list[Any] = [None] * len(commands)
    taken: list[tuple[Any, Any]] = []  # (node's client, connection) until given back
    sent: list[tuple[Any, Any, list[int]]] = []
    read: list[Any] = []  # the connections whose replies were all read
    lost: Exception | None = None  # a connection failed: a node may have gone
    try:
        for node, indexes in groups.values():
            server = client.get_redis_connection(node)
            try:
                conn = server.connection_pool.get_connection()
            except failures as err:
                lost = _fail(results, indexes, err)
                continue
            # listed before any other call: a signal handler's exception finds it in the finally
            taken.append((server, conn))
            try:
                conn.send_packed_command(conn.pack_commands([commands[i] for i in indexes]))
            except failures as err:
                lost = _fail(results, indexes, err)
                conn.disconnect()
            else:
                sent.append((server, conn, indexes))
        for server, conn, indexes in sent:
            lost = _read(server, conn, commands, indexes, results, failures=failures) or lost
            read.append(conn)
    finally:
        try:
            _give_back(taken, read)
        except BaseException:  # a signal handler's: the connections not yet given back too
            _give_back(taken, read)
            raise
    # replies telling the client to ask another node (the slot moved or is moving)
    redirects = (exceptions.AskError, exceptions.TryAgainError, exceptions.ClusterDownError)
    down = False  # a command re-sent met CLUSTERDOWN again: the cluster is down, not moving
    for index, reply in enumerate(results):
        if isinstance(reply, redirects) and not (
            down and isinstance(reply, exceptions.ClusterDownError)
        ):
            try:
                results[index] = _resend(client, commands[index], reply)
            except failures as err:
                results[index] = err
                # the client waits 0.25 s before it gives up on each such command
                down = down or isinstance(err, exceptions.ClusterDownError)
    if isinstance(lost, exceptions.ConnectionError) and not pool_exhausted(lost):
        with contextlib.suppress(*failures):
            client.nodes_manager.initialize()  # a failover may have moved its slots
    return results


def _give_back(taken: list[tuple[Any, Any]], read: list[Any]) -> None:
    """Give each connection of ``taken`` back to its node's pool, closed unless its replies
    were all ``read`` (an unread reply would be the next command's). Each leaves ``taken`` as
    it is given back: run again after a signal handler's exception, this gives back the rest,
    none twice (once back, another thread may hold it)."""
    while taken:
        server, conn = taken[-1]
        if conn not in read:
            conn.disconnect()
        del taken[-1]  # no call before the release starts: no signal lands in between
        server.connection_pool.release(conn)


def _read(
    server: Any,
    conn: Any,
    commands: Sequence[tuple[Any, ...]],
    indexes: Sequence[int],
    results: list[Any],
    *,
    failures: tuple[type[Exception], ...],
) -> Exception | None:
    """Read the replies of the ``commands`` at ``indexes``, sent on ``conn``, into
    ``results``; the failure that left the rest unread (``conn`` is closed then), if any."""
    from redis import exceptions

    for position, index in enumerate(indexes):
        try:
            results[index] = server.parse_response(conn, commands[index][0])
        except exceptions.ResponseError as err:
            results[index] = err
            if closes_connection(err):  # Redis runs none of the rest, and closes it
                conn.disconnect()  # before another thread takes it from the pool
                closed = exceptions.ConnectionError(f"Redis closed the connection: {err}")
                _fail(results, indexes[position + 1 :], closed)
                return None
        except failures as err:
            conn.disconnect()
            return _fail(results, indexes[position:], err)
    return None


def _resend(client: Any, command: tuple[Any, ...], reply: Exception) -> Any:
    """The reply to ``command`` sent again through ``client``, which follows redirections.

    A node refuses an ``MGET`` on a slot in mid-migration (``ASK``, ``TRYAGAIN``) while its keys
    are split between the two nodes, for as long as the migration lasts: its keys are then read
    one by one, each where it is. After ``MOVED`` the slot's new owner may be moving it on.
    """
    from redis import exceptions

    redirects = (exceptions.AskError, exceptions.TryAgainError)  # MovedError is an AskError
    if command[0] != "MGET" or not isinstance(reply, redirects):
        return client.execute_command(*command)
    names = command[1:]
    if not isinstance(reply, exceptions.MovedError):
        return [client.execute_command("GET", name) for name in names]
    # the first GET teaches the client the slot's owner; the others in one MGET unless it moves
    first = client.execute_command("GET", names[0])
    owner = client.get_redis_connection(client.get_node_from_key(names[0]))
    try:
        rest = owner.execute_command("MGET", *names[1:]) if len(names) > 1 else []
    except redirects:
        rest = [client.execute_command("GET", name) for name in names[1:]]
    return [first, *rest]


def _fail(results: list[Any], indexes: Sequence[int], err: Exception) -> Exception:
    """Make ``err`` the reply at each of ``indexes``, and return it."""
    for index in indexes:
        results[index] = err
    return err
