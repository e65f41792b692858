"""MemcachedCache.inc against writes of other clients that land in the middle of it.

``inc`` used to apply memcached's ``incr`` first and take it back with a reverse ``incr`` when
the result overflowed or the entry turned out to be another client's number: a ``set`` that
came in between was changed by the take-back (lost), and other clients read the wrapped value
meanwhile. ``Interleaved`` lets another client write (or read) right after the first command
an ``inc`` sends, the real calls otherwise untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client
from servers import MemcachedServer
from test_memcached import address, raw_client
from test_memcached_edge import memcached_refuses

from cacheplug import MemcachedCache
from cacheplug.backends._memcached_counters import FLAG_COUNTER, FLAG_COUNTER_V1
from cacheplug.backends._memcached_servers import Server

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FOREIGN_FLAGS = 2  # how python-memcached and pylibmc (cachelib's clients) store an int


class Interleaved(MemcachedCache):
    """A cache whose next ``inc`` runs ``between`` right after its first command's reply."""

    between: Callable[[], object] | None = None

    def _run(self, server: Server, operation: str, call: Callable[..., Any], *args: Any) -> Any:
        answer = super()._run(server, operation, call, *args)
        between, self.between = self.between, None
        if between is not None and operation == "inc":
            between()
        return answer


@pytest.fixture
def raw(memcached_server: MemcachedServer) -> Iterator[Client]:
    memcached_server.flush()
    client = raw_client(memcached_server)
    yield client
    client.close()


@pytest.fixture(params=["", "p:"], ids=["plain", "prefixed"])
def key_prefix(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def caches(
    raw: Client, memcached_server: MemcachedServer, key_prefix: str
) -> Iterator[tuple[Interleaved, MemcachedCache]]:
    """The cache under test and another client of the same keys."""
    where = [address(memcached_server)]
    with (
        Interleaved(where, key_prefix=key_prefix) as cache,
        MemcachedCache(where, key_prefix=key_prefix) as other,
    ):
        yield cache, other


def inc_or_overflow(cache: MemcachedCache, key: str, delta: int) -> int | None:
    """``cache.inc(key, delta)``; None when it raised OverflowError."""
    try:
        return cache.inc(key, delta)
    except OverflowError:
        return None


def assert_set_kept(got: int | None, final: Any, written: int, delta: int) -> None:
    """A set that raced an inc survives: the inc came before it (and changed nothing lasting,
    having overflowed) or after it (and counted from the value it wrote)."""
    if got is None:
        assert final == written
    else:
        assert (got, final) == (written + delta, written + delta)


# start, delta: an inc that leaves the signed 64-bit range, near its ends or by a large delta
OVERFLOWS = [
    (INT64_MAX, 1),
    (INT64_MIN, -1),
    (INT64_MAX - 5, 10),
    (10, INT64_MAX),
    (-10, INT64_MIN),
    (2**62 - 1, 2**62 + 1),
]


@pytest.mark.parametrize(("start", "delta"), OVERFLOWS)
def test_an_overflowing_inc_never_shows_the_wrapped_value_nor_undoes_a_set(
    caches: tuple[Interleaved, MemcachedCache], start: int, delta: int
) -> None:
    """Another client read the wrapped-around value until the take-back came, and the
    take-back applied to a value set meanwhile (100 became 99)."""
    cache, other = caches
    assert cache.set("n", start) is True
    seen: list[Any] = []

    def read_then_set() -> None:
        seen.append(other.get("n"))
        assert other.set("n", 100) is True

    cache.between = read_then_set
    got = inc_or_overflow(cache, "n", delta)
    assert seen == [start]
    assert_set_kept(got, other.get("n"), 100, delta)


@pytest.mark.parametrize("key_prefix", [""], ids=["plain"])
@pytest.mark.parametrize("written", ["cacheplug", "foreign"])
def test_a_write_during_inc_on_another_clients_number_is_kept(
    caches: tuple[Interleaved, MemcachedCache], raw: Client, written: str
) -> None:
    """memcached increments another client's number before its flags can be checked; the
    take-back of that used to apply to whatever was written meanwhile."""
    cache, other = caches
    assert raw.set("hits", b"5", flags=FOREIGN_FLAGS) is True
    if written == "cacheplug":
        cache.between = lambda: other.set("hits", 100)
    else:
        cache.between = lambda: raw.set("hits", b"7", flags=FOREIGN_FLAGS)
    try:
        got = cache.inc("hits")
    except TypeError:
        got = None
    if written == "cacheplug":
        assert_set_kept(got, other.get("hits"), 100, 1)
    else:
        assert got is None
        assert raw.get("hits") == b"7"
        assert other.get("hits") is None  # still a foreign entry: a miss


def memcached_counts(raw: Client, name: str) -> bool:
    return not memcached_refuses(raw, name)


@pytest.mark.parametrize("key_prefix", [""], ids=["plain"])
@pytest.mark.parametrize(
    ("flags", "bias"), [(FLAG_COUNTER_V1, 2**63), (FLAG_COUNTER, 2**62)], ids=["v1", "unfenced"]
)
def test_an_earlier_releases_counter_overflowing_keeps_a_set_made_meanwhile(
    caches: tuple[Interleaved, MemcachedCache], raw: Client, flags: int, bias: int
) -> None:
    """Earlier releases stored every 64-bit integer as a counter memcached's incr counts: an
    overflow there is still taken back, and only if nobody wrote meanwhile."""
    cache, other = caches
    stored = b"%d" % ((INT64_MAX + bias) % 2**64)
    assert raw.set("old", stored, flags=flags) is True
    cache.between = lambda: other.set("old", 100)
    got = inc_or_overflow(cache, "old", 1)
    assert_set_kept(got, other.get("old"), 100, 1)
    # nobody writing: taken back, the value stays
    assert raw.set("old", stored, flags=flags) is True
    with pytest.raises(OverflowError):
        cache.inc("old")
    assert other.get("old") == INT64_MAX
    assert cache.dec("old") == INT64_MAX - 1  # and from then on stored apart
    assert not memcached_counts(raw, "old")


@pytest.mark.parametrize("key_prefix", [""], ids=["plain"])
@pytest.mark.parametrize(("start", "delta"), [(2**62 - 2, 3), (-(2**62) + 2, -3)])
def test_a_counter_counted_past_2_62_leaves_memcacheds_incr(
    caches: tuple[Interleaved, MemcachedCache], raw: Client, start: int, delta: int
) -> None:
    """Past 2**62 in size a counter is counted by compare-and-swap, so that no incr of
    memcached can carry it past the 64-bit range, where it could only be taken back."""
    cache, _ = caches
    assert cache.set("n", start) is True
    assert memcached_counts(raw, "n")
    assert cache.inc("n", delta) == start + delta
    assert not memcached_counts(raw, "n")
    assert cache.get("n") == start + delta
    assert cache.dec("n", delta) == start
    assert memcached_counts(raw, "n")
    assert raw.gets("n")[0].strip().isdigit()
    assert cache.get("n") == start


@pytest.mark.parametrize("key_prefix", [""], ids=["plain"])
def test_large_ints_are_stored_apart_from_memcacheds_counters(
    caches: tuple[Interleaved, MemcachedCache], raw: Client
) -> None:
    cache, _ = caches
    for value in (2**62, -(2**62) - 1, INT64_MAX, INT64_MIN):
        assert cache.set("big", value) is True
        assert not memcached_counts(raw, "big")
        assert cache.get("big") == value
    for value in (2**62 - 1, -(2**62), 0):
        assert cache.set("small", value) is True
        flags = raw.raw_command(b"mg small f")
        assert flags == b"HD f%d" % FLAG_COUNTER
        assert cache.get("small") == value


# -- threads ---------------------------------------------------------------------------------------

ROUNDS = 150


def race(
    prepare: Callable[[], object],
    counting: Callable[[], int | None],
    writing: Callable[[int], object],
    final: Callable[[], Any],
) -> list[tuple[int, int | None, Any]]:
    """``ROUNDS`` rounds of ``counting()`` in one thread against ``writing(round)`` in another,
    each after ``prepare()``: each round with what counting answered and ``final()`` after."""
    begin, end = threading.Barrier(2), threading.Barrier(2)
    rounds: list[tuple[int, int | None, Any]] = []
    errors: list[BaseException] = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except threading.BrokenBarrierError:
                pass  # the other thread failed: its error is reported
            except BaseException as err:  # reported below, not lost in the thread
                errors.append(err)
                begin.abort()
                end.abort()

        return run

    def counter() -> None:
        for number in range(ROUNDS):
            prepare()
            begin.wait(timeout=10)
            got = counting()
            end.wait(timeout=10)
            rounds.append((number, got, final()))

    def writer() -> None:
        for number in range(ROUNDS):
            begin.wait(timeout=10)
            writing(number)
            end.wait(timeout=10)

    threads = [threading.Thread(target=guarded(work)) for work in (counter, writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert len(rounds) == ROUNDS
    return rounds


def test_no_set_is_lost_to_overflowing_incs_of_other_threads(
    caches: tuple[Interleaved, MemcachedCache],
) -> None:
    cache, other = caches
    rounds = race(
        lambda: other.set("n", INT64_MAX),
        lambda: inc_or_overflow(cache, "n", 1),
        lambda number: other.set("n", number),
        lambda: other.get("n"),
    )
    for number, got, final in rounds:
        assert_set_kept(got, final, number, 1)


@pytest.mark.parametrize("key_prefix", [""], ids=["plain"])
def test_no_write_is_lost_to_incs_on_another_clients_number(
    caches: tuple[Interleaved, MemcachedCache], raw: Client
) -> None:
    cache, _ = caches

    def counting() -> int | None:
        try:
            return cache.inc("hits")
        except TypeError:
            return None

    rounds = race(
        lambda: raw.set("hits", b"5", flags=FOREIGN_FLAGS),
        counting,
        lambda number: raw.set("hits", b"%d" % (1000 + number), flags=FOREIGN_FLAGS),
        lambda: (raw.get("hits"), raw.raw_command(b"mg hits f")),
    )
    for number, got, final in rounds:
        assert got is None  # another client's number is never counted
        assert final == (b"%d" % (1000 + number), b"HD f%d" % FOREIGN_FLAGS)


@pytest.mark.parametrize("delta", [2**32 + 1, -(2**40), 2**62, -(2**62) - 5])
def test_deltas_past_native_delta_count_and_create(
    caches: tuple[Interleaved, MemcachedCache], delta: int
) -> None:
    """Counted by compare-and-swap, with the answers of memcached's incr."""
    cache, other = caches
    assert cache.inc("fresh", delta) == delta
    assert other.get("fresh") == delta
    assert cache.inc("fresh", -delta) == 0
    assert cache.set("n", 7) is True
    assert cache.inc("n", delta) == 7 + delta
    assert cache.dec("n", delta) == 7
    assert cache.inc("n", 1) == 8
    assert other.get("n") == 8
