"""MemcachedCache's batched writes and reads (set_many, delete_many, get_many) on real servers:
batches of many bytes, unreadable entries among many, errors in the middle of a batch."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from servers import MemcachedServer
from test_memcached import address

from cacheplug import MemcachedCache
from cacheplug.backends._memcached_counters import FLAG_SERIALIZED


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    memcached_server.flush()
    with MemcachedCache([address(memcached_server)]) as made:
        yield made


def raw_set(server: MemcachedServer, key: str, flags: int, data: bytes) -> None:
    """Store ``data`` as another client would, with any ``flags``."""
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), flags, len(data), data))
        assert sock.recv(64) == b"STORED\r\n"


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_set_many_of_more_bytes_than_the_link_carries_within_the_timeout_stores_them(
    key_prefix: str,
) -> None:
    # 160 MB sent in one go took longer than the 0.05 s timeout on a healthy server: set_many
    # answered [] and marked the server down; the timeout bounds a wait for a reply, not a call
    values = {f"k{i}": bytes([i]) * 1_000_000 for i in range(160)}
    with (
        MemcachedServer(memory_mb=512) as server,
        MemcachedCache([address(server)], key_prefix=key_prefix, timeout=0.05) as cache,
    ):
        assert cache.set_many(values) == list(values)
        assert cache.stats()["errors"] == 0
        assert cache.get_many("k0", "k159") == [values["k0"], values["k159"]]


def test_get_many_counts_each_unreadable_entry_once(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    # an entry of another client's flags, then a payload pickle cannot read: the fast path
    # for pickled values gave up and read all again, counting the first entry twice
    raw_set(memcached_server, "foreign", 77, b"abc")
    raw_set(memcached_server, "corrupt", FLAG_SERIALIZED, b"xyz")
    assert cache.set("fine", "ok") is True
    assert cache.get_many("foreign", "corrupt", "fine", "missing") == [None, None, "ok", None]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (1, 3, 2)
