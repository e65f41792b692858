"""MemcachedCache's batched writes and reads (set_many, delete_many, get_many) on real servers:
batches of many bytes, unreadable entries among many, errors in the middle of a batch."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from servers import MemcachedServer
from test_memcached import address, server_stat

from cacheplug import MemcachedCache
from cacheplug.backends._memcached_counters import FLAG_SERIALIZED


@pytest.fixture(scope="module")
def small_items() -> Iterator[MemcachedServer]:
    """A memcached that refuses values over 1 kB (SERVER_ERROR object too large)."""
    with MemcachedServer(extra_args=["-I", "1k", "-o", "slab_chunk_max=512"]) as server:
        yield server


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


@pytest.mark.parametrize("key_prefix", ["", "p:"])
@pytest.mark.parametrize("refused", [[0], [2500], [4999], [10, 2047, 2048, 4500]])
def test_set_many_with_refused_values_in_any_batch_stores_the_others_in_one_go(
    small_items: MemcachedServer, key_prefix: str, refused: list[int]
) -> None:
    # a refused value (SERVER_ERROR) dropped the connection and the whole batch was sent again
    # key by key: 100k keys with one value too large took 9.5 s instead of 0.4 s
    small_items.flush()
    mapping: dict[str, object] = {f"k{i}": i for i in range(5000)}
    for i in refused:
        mapping[f"k{i}"] = b"x" * 2000
    with MemcachedCache([address(small_items)], key_prefix=key_prefix) as cache:
        assert cache.set(f"k{refused[0]}", "old") is True
        sets = server_stat(small_items, "cmd_set")
        stored = [key for key, value in mapping.items() if not isinstance(value, bytes)]
        assert cache.set_many(mapping) == stored
        # each sent once (memcached counts only the sets it could take)
        assert server_stat(small_items, "cmd_set") - sets == len(stored)
        assert cache.stats()["errors"] == 1  # one per call, whatever was refused in it
        # a refused set drops the old value, and the connection is still in step
        assert cache.get_many(*mapping) == [None if i in refused else i for i in range(5000)]
        assert cache.set("after", "ok") is True
        assert cache.get("after") == "ok"
