"""The memcached text protocol cacheplug speaks itself for get, get_many and set.

On a real memcached: values whose bytes look like protocol lines, values larger than one
socket read, replies of thousands of values. Against a scripted server on a real loopback
socket: every error reply and a connection cut mid-value become the contract's outage
values, and the connection is never reused. The parser itself is fed replies cut at random
points, as a socket may deliver them.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)
from servers import MemcachedServer

from cacheplug import MemcachedCache
from cacheplug.backends import _memcached_counter_wire as counter_wire
from cacheplug.backends import _memcached_replies as replies
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS
from cacheplug.backends._memcached_counters import COUNTER_BIAS, FLAG_COUNTER, FLAG_SERIALIZED
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.backends._memcached_keys import plain_line as _plain_line

TRICKY = [
    b"",
    b"\r\n",
    b"END\r\n",
    b"\r\nEND\r\n",
    b"VALUE k 0 3\r\nabc\r\nEND\r\n",
    b"SERVER_ERROR boom\r\n",
    b"\r\n\r\n\r\n",
    b"x\r",
    b"\nx",
    bytes(range(256)),
]


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    memcached_server.flush()
    cache = MemcachedCache([f"{memcached_server.host}:{memcached_server.port}"])
    yield cache
    cache.close()


def test_values_that_look_like_protocol_lines_round_trip(cache: MemcachedCache) -> None:
    keys = [f"tricky{i}" for i in range(len(TRICKY))]
    for key, value in zip(keys, TRICKY, strict=True):
        assert cache.set(key, value)
        assert cache.get(key) == value
    assert cache.get_many(*keys) == TRICKY
    assert cache.get_many("missing", *keys, "missing2") == [None, *TRICKY, None]


def test_values_larger_than_one_read(cache: MemcachedCache) -> None:
    big = bytes(range(256)) * 2048 + b"\r\nEND\r\n"  # 512 KiB, ends like a reply
    assert cache.set("big", big)
    assert cache.set("small", "after")
    assert cache.get("big") == big
    assert cache.get_many("small", "big", "small") == ["after", big, "after"]


def test_thousands_of_values_in_one_reply(cache: MemcachedCache) -> None:
    values = {f"many:{i}": f"value {i} " * (i % 50) for i in range(3000)}
    assert cache.set_many(values) == list(values)
    assert cache.get_many(*values) == list(values.values())
    hits, misses = cache.stats()["hits"], cache.stats()["misses"]
    assert cache.get_many(*values, "absent") == [*values.values(), None]
    assert cache.stats()["hits"] == hits + 3000
    assert cache.stats()["misses"] == misses + 1


def test_keys_memcached_rejects_take_the_mapped_path(cache: MemcachedCache) -> None:
    keys = ["plain", "with space", "x" * 300, "", "ünï", "ctl\x01"]
    for key in keys:
        assert cache.set(key, key)
    assert cache.get_many(*keys) == keys
    assert cache.get_many("plain", "plain") == ["plain", "plain"]


def test_non_str_keys_still_raise(cache: MemcachedCache) -> None:
    with pytest.raises(TypeError):
        cache.get_many("a", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keys", "plain"),
    [
        (("a", "b:c", "~x"), True),
        ((), False),
        (("a", ""), False),
        (("a b",), False),
        (("a", "b~#c"), False),
        (("x" * 251,), False),
        (("x" * 250,), True),
        (("é",), False),
        (("tab\t",), False),
    ],
)
def test_plain_line_only_for_keys_memcached_takes_as_they_are(
    keys: tuple[str, ...], plain: bool
) -> None:
    line = _plain_line(keys)
    assert (line is not None) is plain
    if line is not None:
        assert line.split(b" ") == [key.encode() for key in keys]


@settings(max_examples=500, deadline=None)
@given(
    keys=st.lists(
        st.text(max_size=12) | st.text(alphabet="ab~# \t", max_size=6) | st.just("x" * 250),
        max_size=6,
    )
)
def test_plain_line_agrees_with_memcached_key(keys: list[str]) -> None:
    """The bulk check is memcached_key's rule for many keys at once: it never lets through a key
    memcached_key would map, and lets through every list of keys it would keep."""
    line = _plain_line(keys)
    kept = bool(keys) and all(memcached_key(key) == key for key in keys)
    assert (line is not None) is kept
    if line is not None:
        assert line == " ".join(keys).encode("ascii")


def test_set_then_get_on_the_wire(memcached_server: MemcachedServer) -> None:
    from pymemcache.client.base import Client

    client = Client(memcached_server.address, default_noreply=False)
    try:
        assert wire.store(client, "wire:k", (FLAG_SERIALIZED, b"\r\nEND\r\n"), 0)
        assert wire.fetch(client, b"wire:k wire:none") == {
            b"wire:k": (FLAG_SERIALIZED, b"\r\nEND\r\n")
        }
    finally:
        client.close()


# -- a scripted server on a real socket -------------------------------------------------------


class ScriptedServer:
    """Accepts connections on loopback and answers each request with the next scripted reply.

    A reply of None closes the connection instead of answering; so does one that ends a
    ``(reply, "close")`` pair after sending it.
    """

    def __init__(self, script: list[bytes | tuple[bytes, str] | None]) -> None:
        self.script = list(script)
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.script:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.script and conn.recv(65536):
                    step = self.script.pop(0)
                    if step is None:
                        break
                    if isinstance(step, tuple):
                        conn.sendall(step[0])
                        break
                    conn.sendall(step)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize(
    "reply",
    [
        b"SERVER_ERROR out of memory writing get response\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
        b"ERROR\r\n",
        b"HELLO\r\n",
        b"VALUE k 17152 notanumber\r\n",
        b"VALUE k 17152 3\r\nabcXY",
        (b"VALUE k 17152 3\r\nab", "close"),
        b"END\r\nEND\r\n",
        None,
    ],
)
def test_broken_replies_are_outages_and_the_connection_is_dropped(
    reply: bytes | tuple[bytes, str] | None, caplog: pytest.LogCaptureFixture
) -> None:
    value = pickle.dumps("ok")
    good = b"VALUE k %d %d\r\n%s\r\nEND\r\n" % (FLAG_SERIALIZED, len(value), value)
    server = ScriptedServer([reply, reply, b"STORED\r\n", good])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], timeout=2, dead_timeout=0)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert cache.get("k") is None
            assert cache.get_many("k", "j") == [None, None]
        assert cache.stats()["errors"] == 2
        assert caplog.records, "the failure is logged"
        # each failure dropped its connection: the next call opens a new one, which works
        assert cache.set("k", "ok") is True
        assert cache.get("k") == "ok"
        assert server.connections == 3
    finally:
        cache.close()
        server.close()


def test_set_reply_errors_are_false() -> None:
    server = ScriptedServer(
        [
            b"SERVER_ERROR object too large for cache\r\n",
            b"NOT_STORED\r\n",
            b"STORED\r\nSTORED\r\n",
        ]
    )
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], timeout=2, dead_timeout=0)
    try:
        assert cache.set("k", "v") is False
        assert cache.set("k", "v") is False  # NOT_STORED
        assert cache.set("k", "v") is False  # two replies to one request: out of step
        assert server.connections == 2
    finally:
        cache.close()
        server.close()


def counted(value: int) -> bytes:
    """The reply to inc's ``mg``+``incr`` for a counter that now holds ``value``."""
    return b"HD f%d\r\n%d\r\n" % (FLAG_COUNTER, value + COUNTER_BIAS)


NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


MISREAD = b"HD f%d\r\n%s" % (FLAG_COUNTER, NON_NUMERIC)


@pytest.mark.parametrize(
    "replies",
    [
        [b"HD f17155\r\nSERVER_ERROR out of memory\r\n"],
        [b"HD\r\n5\r\n"],  # no flags
        [b"HD f1\r\n5\r\n5\r\n"],  # a line too many
        [b"XX\r\nNOT_FOUND\r\n"],
        [b"HD f1\r\nCLIENT_ERROR bad command line format\r\n"],
        [(b"EN\r\n", "close")],
        # the compare-and-swap path after memcached called the counter non-numeric
        [MISREAD, b"VA 3 f1 c2 t-1\r\nabcXY"],
        [MISREAD, b"VA x f1 c2\r\n"],
        [MISREAD, b"VA 1 f%d c2 t-1\r\n5\r\n" % FLAG_COUNTER, b"NS\r\n"],
    ],
)
def test_broken_inc_replies_are_outages_and_the_connection_is_dropped(
    replies: list[bytes | tuple[bytes, str] | None],
) -> None:
    server = ScriptedServer([*replies, counted(6)])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], timeout=2, dead_timeout=0)
    try:
        assert cache.inc("k") is None
        assert cache.stats()["errors"] == 1
        assert cache.inc("k") == 6  # on a new connection
        assert server.connections == 2
    finally:
        cache.close()
        server.close()


def test_an_inc_that_loses_every_race_to_create_its_counter_is_a_logged_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # each time: incr finds no counter, then add finds one (another client created it, and
    # deleted it again before the next incr)
    lost = [b"EN\r\nNOT_FOUND\r\n", b"NOT_STORED\r\n"] * CREATE_ATTEMPTS
    server = ScriptedServer([*lost, b"EN\r\nNOT_FOUND\r\n", b"STORED\r\n"])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], timeout=2, dead_timeout=0)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert cache.inc("k") is None
        assert cache.stats()["errors"] == 1
        assert "inc" in caplog.text and "created" in caplog.text
        assert cache.inc("k") == 1  # a call that wins the race creates it
    finally:
        cache.close()
        server.close()


def test_inc_by_compare_and_swap_retries_until_the_entry_is_unchanged() -> None:
    stored = b"%d" % (41 + COUNTER_BIAS)
    read = b"VA %d f%d c7 t100\r\n%s\r\n" % (len(stored), FLAG_COUNTER, stored)
    server = ScriptedServer([MISREAD, read, b"EX\r\n", read, b"HD\r\n"])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], timeout=2)
    try:
        assert cache.inc("k") == 42
        assert server.connections == 1
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()
        server.close()


class PiecesClient:
    """A pymemcache client stand-in whose socket delivers a scripted reply in pieces."""

    def __init__(self, reply: bytes, cuts: list[int]) -> None:
        self.sock = Pieces(reply, cuts)
        self.sent: list[bytes] = []

    def close(self) -> None:
        self.sock = None  # type: ignore[assignment]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40) | st.sampled_from(TRICKY), cuts=st.lists(st.integers(0, 200)))
def test_read_for_swap_parses_a_reply_cut_anywhere(data: bytes, cuts: list[int]) -> None:
    reply = b"VA %d f%d c9 t-1\r\n%s\r\n" % (len(data), FLAG_COUNTER, data)
    client = PiecesClient(reply, cuts)
    assert counter_wire.read_for_swap(client, "k") == (FLAG_COUNTER, data, 9, -1)
    assert counter_wire.read_for_swap(PiecesClient(b"EN\r\n", cuts), "k") is None


# -- the parser, fed in pieces ------------------------------------------------------------------


class Pieces:
    """A socket stand-in that delivers a reply in the given pieces, then end of stream."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
        self._pieces = [data[a:b] for a, b in itertools.pairwise(points)]

    def sendall(self, data: bytes) -> None:
        pass  # the reply is scripted

    def recv(self, size: int) -> bytes:
        if not self._pieces:
            return b""
        piece = self._pieces.pop(0)
        if len(piece) > size:
            piece, rest = piece[:size], piece[size:]
            self._pieces.insert(0, rest)
        return piece


def reply_of(items: dict[bytes, tuple[int, bytes]]) -> bytes:
    blocks = [b"VALUE %s %d %d\r\n%s\r\n" % (k, f, len(d), d) for k, (f, d) in items.items()]
    return b"".join(blocks) + b"END\r\n"


names = st.binary(min_size=1, max_size=20).map(lambda b: b.hex().encode())
items = st.dictionaries(
    names,
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=300) | st.sampled_from(TRICKY)),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(items=items, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_reply_cut_anywhere_parses_to_its_values(
    items: dict[bytes, tuple[int, bytes]], cuts: list[int]
) -> None:
    data = reply_of(items)
    sock = Pieces(data, cuts)
    first = replies.more(sock, b"", 1)
    whole = replies._split_values(first) if first.endswith(b"END\r\n") else None
    assert (whole if whole is not None else replies._read_values(sock, first)) == items


#: Header lines a broken or hostile server might send: fields missing, extra, misplaced.
noise = st.lists(
    st.sampled_from([b"VALUE", b"a", b"b", b"0", b"1", b"3", b"-1", b"1_0", b"x", b"", b"\r"]),
    max_size=7,
).map(b" ".join)


@settings(max_examples=1500, deadline=None)
@given(
    items=items,
    edits=st.lists(st.tuples(st.integers(0, 100), noise | st.binary(max_size=12)), max_size=3),
)
# a 1-field header, then a 7-field one: as many fields in all as two headers should have
@example(
    items={b"a": (0, b"xyz"), b"b": (0, b"q")},
    edits=[(0, b"VALUE"), (2, b"0 3 X VALUE b 0 1")],
)
def test_the_whole_reply_parser_reads_what_the_record_parser_reads(
    items: dict[bytes, tuple[int, bytes]], edits: list[tuple[int, bytes]]
) -> None:
    """``_split_values`` checks all headers at once: whatever it accepts, the parser that walks
    the reply a record at a time (``_read_values``) reads the same; the rest falls back to it."""
    lines = reply_of(items).split(b"\r\n")
    for index, line in edits:  # never the closing END
        lines[index % (len(lines) - 1) if len(lines) > 2 else 0] = line
    reply = b"\r\n".join(lines[:-2]) + (b"\r\n" if len(lines) > 2 else b"") + b"END\r\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replies, "_FEW", 1)  # every reply checked all at once, however short
        whole = replies._split_values(reply)
    for fast in (whole, replies._split_values(reply)):
        if fast is not None:
            assert fast == replies._read_values(Pieces(reply, []), reply)


def test_a_long_batch_with_counters_and_crlf_values_reads_back_exactly(
    cache: MemcachedCache,
) -> None:
    """A batch long enough to be checked all at once, mixing counters (their own flags),
    pickled values, values holding CRLFs (glued back) and misses."""
    values: dict[str, object] = {f"v{i}": TRICKY[i % len(TRICKY)] for i in range(40)}
    assert cache.set_many(values) == list(values)
    for i in range(10):
        assert cache.inc(f"n{i}", i - 5) == i - 5
    keys = [*values, *(f"n{i}" for i in range(10)), "missing"]
    expected = [*values.values(), *range(-5, 5), None]
    assert cache.get_many(*keys) == expected
    plain = {f"p{i}": {"i": i} for i in range(30)}  # no CRLF anywhere: checked all at once
    assert cache.set_many(plain) == list(plain)
    assert cache.get_many(*plain, "n9") == [*plain.values(), 4]


@settings(max_examples=300, deadline=None)
@given(items=items, extra=st.binary(min_size=1, max_size=40), cut=st.integers(0, 10_000))
def test_a_damaged_reply_raises_a_memcache_error(
    items: dict[bytes, tuple[int, bytes]], extra: bytes, cut: int
) -> None:
    data = reply_of(items)
    damaged = data[: cut % len(data)] + extra  # cut short, then garbage, no END
    sock = Pieces(damaged, [])
    errors = (
        MemcacheUnexpectedCloseError,
        MemcacheUnknownError,
        MemcacheClientError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
    )
    first = replies.more(sock, b"", 1)
    parsed = replies._split_values(first) if first.endswith(b"END\r\n") else None
    if parsed is not None:
        return  # the garbage happened to complete a well-formed reply
    try:
        result = replies._read_values(sock, first)
    except errors:
        return
    # only possible when the damage still reads as a well-formed reply
    assert damaged.endswith(b"END\r\n"), result


def test_threads_sharing_one_cache_read_their_own_values(cache: MemcachedCache) -> None:
    """Pooled connections are never shared mid-reply: every thread reads back what it wrote."""
    errors: list[str] = []
    start = threading.Barrier(6)

    def work(worker: int) -> None:
        keys = [f"t{worker}:{i}" for i in range(40)]
        start.wait()
        for round_ in range(60):
            values = {key: f"{key}@{round_}" * (round_ % 7 + 1) for key in keys}
            if cache.set_many(values) != keys:
                errors.append(f"{worker}: set_many failed in round {round_}")
            if cache.get_many(*keys) != list(values.values()):
                errors.append(f"{worker}: get_many read another value in round {round_}")
            key = keys[round_ % len(keys)]
            if not cache.set(key, round_) or cache.get(key) != round_:
                errors.append(f"{worker}: set/get read another value in round {round_}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("size", [-1, -17, -(2**40)])
def test_a_negative_value_length_is_an_error_not_an_endless_loop(size: int) -> None:
    """A length that points back at the end of the previous record made the parser read the
    same header again and again, without touching the socket (so no timeout ever fired)."""
    reply = b"VALUE a 0 1\r\nx\r\nVALUE b 0 %d\r\nEND\r\n" % size
    outcome: list[object] = []

    def parse() -> None:
        sock = Pieces(reply, [])
        try:
            outcome.append(replies._read_values(sock, replies.more(sock, b"", 1)))
        except MemcacheUnknownError as err:
            outcome.append(err)

    worker = threading.Thread(target=parse, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "the parser never returned"
    assert len(outcome) == 1 and isinstance(outcome[0], MemcacheUnknownError)


@settings(max_examples=200, deadline=None)
@given(
    token=st.binary(min_size=1, max_size=16).map(lambda b: b.hex().encode()),
    stored=st.lists(st.sampled_from([b"STORED", b"NOT_STORED"]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 200)),
)
def test_writes_with_or_without_the_token_read_back_parse_a_reply_cut_anywhere(
    token: bytes, stored: list[bytes], cuts: list[int]
) -> None:
    item = (FLAG_SERIALIZED, b"v")
    lines = b"".join(line + b"\r\n" for line in stored)
    seen = b"%sVALUE t 0 %d\r\n%s\r\nEND\r\n" % (lines, len(token), token)
    answers = [line == b"STORED" for line in stored]
    requests = [wire.storage_request(b"set", f"k{i}", item, 0) for i in range(len(stored))]
    got = wire.write(PiecesClient(seen, cuts), requests, wire.STORED, "t")
    assert got == (answers, token)
    missing = PiecesClient(lines + b"END\r\n", cuts)
    assert wire.write(missing, requests, wire.STORED, "t") == (answers, None)
    assert wire.write(PiecesClient(lines, cuts), requests, wire.STORED) == (answers, None)


@settings(max_examples=200, deadline=None)
@given(
    token=st.one_of(st.none(), st.binary(min_size=1, max_size=16).map(lambda b: b.hex().encode())),
    reply=st.sampled_from(
        [
            (b"HD f17155\r\n42\r\n", (17155, 42, True)),
            (b"EN\r\nNOT_FOUND\r\n", (None, None, True)),
            (
                b"HD f17152\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
                (17152, None, False),
            ),
        ]
    ),
    cuts=st.lists(st.integers(0, 200)),
)
def test_a_count_with_the_token_read_back_parses_a_reply_cut_anywhere(
    token: bytes | None, reply: tuple[bytes, tuple[int | None, int | None, bool]], cuts: list[int]
) -> None:
    lines, counted = reply
    seen = b"END\r\n" if token is None else b"VALUE t 0 %d\r\n%s\r\nEND\r\n" % (len(token), token)
    assert counter_wire.count_seeing(PiecesClient(lines + seen, cuts), "n", 1, "t") == (
        counted,
        token,
    )


@pytest.mark.parametrize(
    "reply",
    [
        b"SERVER_ERROR object too large for cache\r\nEND\r\n",
        b"STORED\r\nVALUE t 0 3\r\nabcd\r\nEND\r\n",  # not as long as announced
        b"STORED\r\nVALUE t 0 x\r\nabc\r\nEND\r\n",
        b"STORED\r\nVALUE u 0 3\r\nabc\r\nEND\r\n",  # another key than asked
        b"STORED\r\nXX\r\n",
        b"STORED\r\nEND\r\nSTORED\r\n",  # a line too many: out of step
    ],
)
def test_a_write_with_the_token_read_back_raises_on_a_damaged_reply(reply: bytes) -> None:
    client = PiecesClient(reply, [])
    with pytest.raises((MemcacheServerError, MemcacheUnknownError)):
        wire.write(client, [wire.delete_request("k")], {b"STORED": True}, "t")
    assert client.sock is None  # the connection is dropped


def test_prefixed_set_many_and_delete_many_take_one_round_trip_each() -> None:
    # one scripted reply per request: a token read before the writes would take the next reply
    token = b"VALUE %s 0 3\r\naaa\r\nEND\r\n" % memcached_key("p:~ns~").encode()
    server = ScriptedServer(
        [
            token,  # load_token, once per cache
            b"STORED\r\nSTORED\r\n" + token,
            b"DELETED\r\nNOT_FOUND\r\n" + token,
        ]
    )
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    try:
        assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        assert cache.delete_many("a", "c") == ["a"]
        assert server.script == []
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()
        server.close()


PREFIXED_WRITES: list[tuple[Callable[[MemcachedCache], object], bytes, object]] = [
    (lambda cache: cache.set("k", "v"), b"STORED\r\n", True),
    (lambda cache: cache.add("k", "v"), b"NOT_STORED\r\n", False),
    (lambda cache: cache.delete("k"), b"DELETED\r\n", True),
    (lambda cache: cache.set_many({"a": 1, "b": 2}), b"STORED\r\nNOT_STORED\r\n", ["a"]),
    (lambda cache: cache.delete_many("a", "b"), b"NOT_FOUND\r\nDELETED\r\n", ["b"]),
    # the counter held 4 (stored as 4 + COUNTER_BIAS under the counter flags): incr made it 5
    (lambda cache: cache.inc("n"), b"HD f%d\r\n%d\r\n" % (FLAG_COUNTER, 5 + COUNTER_BIAS), 5),
]
PREFIXED_WRITE_IDS = ["set", "add", "delete", "set_many", "delete_many", "inc"]


def token_reply(token: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (
        memcached_key("p:~ns~").encode(),
        len(token),
        token,
    )


@pytest.mark.parametrize(("write", "lines", "answer"), PREFIXED_WRITES, ids=PREFIXED_WRITE_IDS)
def test_a_prefixed_write_is_made_again_when_a_clear_elsewhere_replaced_the_known_token(
    write: Callable[[MemcachedCache], object], lines: bytes, answer: object
) -> None:
    # the token this cache knows is "aaa" from an earlier call; the server answers, right after
    # the write, that the namespace is now "bbb": the write is made again, into "bbb"; a clear
    # that replaces "bbb" too overlaps this call, so the second answer stands
    for after in (b"bbb", b"ccc"):
        server = ScriptedServer([lines + token_reply(b"bbb"), lines + token_reply(after)])
        cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
        cache._servers[0].seen_token("aaa")
        try:
            assert write(cache) == answer
            assert cache._servers[0].token == after.decode()
            assert server.script == []  # both writes were made
            assert cache.stats()["errors"] == 0
        finally:
            cache.close()
            server.close()


@pytest.mark.parametrize(("write", "lines", "answer"), PREFIXED_WRITES, ids=PREFIXED_WRITE_IDS)
def test_a_prefixed_write_under_a_token_read_in_the_same_call_is_made_once(
    write: Callable[[MemcachedCache], object], lines: bytes, answer: object
) -> None:
    # the token is read during the call, so a change after it is a clear that overlaps the
    # call: the writes count as made before it (a storm of clears cannot starve a write)
    server = ScriptedServer([token_reply(b"aaa"), lines + token_reply(b"bbb"), b"unused"])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    try:
        assert write(cache) == answer
        assert cache._servers[0].token == "bbb"
        assert server.script == [b"unused"]
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"STORED\r\nSERVER_ERROR object too large for cache\r\n",
        b"STORED\r\nSTORED\r\nSTORED\r\n",  # a line too many: out of step
        b"STORED\r\nEND\r\n",
    ],
)
def test_a_batch_of_writes_raises_on_a_damaged_reply(reply: bytes) -> None:
    client = PiecesClient(reply, [])
    requests = [wire.storage_request(b"set", name, (0, b"v"), 0) for name in ("a", "b")]
    with pytest.raises((MemcacheServerError, MemcacheUnknownError)):
        wire.write(client, requests, wire.STORED)
    assert client.sock is None  # the connection is dropped


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_a_batch_answered_with_an_error_is_written_again_key_by_key(key_prefix: str) -> None:
    # the server took the first set and answered the second with an error, which leaves the
    # rest of the reply unknown: the connection is dropped and each key is sent alone
    known = token_reply(b"aaa") if key_prefix else b""
    first = [known] if key_prefix else []
    alone = [b"STORED\r\n" + known] * 3
    server = ScriptedServer([*first, b"STORED\r\nCLIENT_ERROR bad data chunk\r\n", *alone])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix=key_prefix, timeout=2)
    try:
        assert cache.set_many({"a": 1, "b": 2, "c": 3}) == ["a", "b", "c"]
        assert cache.stats()["errors"] == 1  # the batch's error, logged once
        assert cache._servers[0].down_until == 0.0
        assert server.script == [] and server.connections == 2
    finally:
        cache.close()
        server.close()
