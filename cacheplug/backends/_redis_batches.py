"""Commands a ``RedisCache`` sends together: pipelines (one per node on a cluster), ``MGET`` in
pieces, ``clear``'s ``SCAN`` and ``DEL`` under a prefix, and the values of ``set_many`` too long
to share a round trip, sent alone.
"""

from __future__ import annotations

from collections.abc import MutableSet, Sequence
from typing import TYPE_CHECKING, Any

from cacheplug.backends import _redis_cluster as cluster
from cacheplug.backends import _redis_wire as wire
from cacheplug.backends._redis_outages import Outages

__all__ = ["SCAN_BATCH", "Batches"]

SCAN_BATCH = 1000
_GLOB_SPECIAL = frozenset("*?[]\\")


class Batches(Outages):
    """The commands that :class:`~cacheplug.backends.redis.RedisCache` sends together."""

    #: CLUSTERDOWN: a ``ResponseError`` to redis-py, yet an outage, no refused command
    _cluster_down: type[Exception]

    if TYPE_CHECKING:

        def _wire(self, name: str) -> str | bytes: ...

    def _mget_pieces(self, names: Sequence[str | bytes], client: Any = None) -> list[Any]:
        """The payloads of ``names``, one ``MGET`` per ``MGET_PIECE`` names in one pipeline
        (on ``client``, by default this cache's)."""
        commands = [("MGET", *piece) for piece in wire.mget_pieces(names)]
        replies = self._pipeline(commands, None, client) or []
        return [payload for reply in replies for payload in reply]

    def _pipelined(
        self, command: str, names: list[Any], operation: str | None = None
    ) -> list[Any] | None:
        """Run ``command name`` for each name in one pipeline; see :meth:`_pipeline`."""
        return self._pipeline([(command, name) for name in names], operation)

    def _pipeline(
        self, commands: Sequence[tuple[Any, ...]], operation: str | None, client: Any = None
    ) -> list[Any] | None:
        """Replies of ``commands`` sent in one round trip (one per node on a cluster).

        A failed command's reply is its exception. With ``operation`` set, a failure is logged
        under that name and answered with ``None`` when no reply came; without it, the first
        failure propagates to the caller.
        """
        try:
            if self._cluster:
                results = cluster.node_pipelines(self._client, commands, self._failures)
            else:
                pipe = (client or self._client).pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                results = pipe.execute(raise_on_error=False)
        except self._failures as err:
            if operation is None:
                raise
            self._backend_error(operation, err)
            return None
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            if operation is None:
                raise failed
            self._backend_error(operation, failed)
        return results

    def _node_of(self, name: str | bytes) -> str:
        """The cluster node holding ``name`` (``""`` on a single server, or when unknown)."""
        if not self._cluster:
            return ""
        try:
            return str(self._client.get_node_from_key(name).name)
        except self._failures:
            return ""

    def _clear_on(self, server: Any, prefix: str) -> None:
        """Delete the keys under ``prefix`` on the client ``server`` of one server or cluster
        node, or flush its database when there is no prefix."""
        if not prefix:
            server.flushdb()
            return
        pattern = "".join("\\" + c if c in _GLOB_SPECIAL else c for c in prefix)
        batch: list[bytes] = []
        for name in server.scan_iter(match=self._wire(pattern + "*"), count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                self._pipelined("DEL", batch)
                batch = []
        if batch:
            self._pipelined("DEL", batch)

    def _set_lone(
        self, keys: list[str], commands: list[tuple[Any, ...]], counted: bool, down: MutableSet[str]
    ) -> list[str]:
        """The keys of ``keys`` stored by their ``commands``, each sent alone; an outage leaves
        the rest unsent (on a cluster, those of the node that failed: ``down`` holds the nodes
        that failed already; all of them once the cluster answers that it is down). A call
        counts one error for the writes refused (``counted``: already done), as for those sent
        together."""
        stored = []
        for key, command in zip(keys, commands, strict=True):
            node = self._node_of(command[1])
            if node in down:
                continue
            try:
                if self._cluster:
                    reply = self._pipeline([command], None)
                else:  # a refusal raised through the pool's release closes the connection
                    reply = [self._client.execute_command(*command)]
            except self._failures as err:
                err = self._write_failure(err, command[1], command[2])
                cluster_down = isinstance(err, self._cluster_down)  # each costs a wait
                refused = isinstance(err, self._response_error) and not cluster_down
                if not (counted and (refused or self._cluster)):  # no dead time on a cluster
                    self._backend_error("set_many", err)
                counted = True
                if not refused:
                    if not self._cluster or cluster_down:
                        break
                    down.add(node)
            else:
                if reply == [True]:
                    stored.append(key)
        return stored
