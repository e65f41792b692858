"""The contract suite: the tests every cacheplug backend passes.

Subclass :class:`CacheContract` in your test module and provide a ``cache_factory`` fixture:
a callable taking keyword arguments (``key_prefix``, ``serializer``, ``default_timeout``) and
returning a new, empty cache on the same store each time::

    import pytest
    from cacheplug.testing import CacheContract
    from mypackage import MyCache

    class TestMyCache(CacheContract):
        @pytest.fixture
        def cache_factory(self):
            caches = []

            def make(**kwargs):
                cache = MyCache(**kwargs)
                caches.append(cache)
                return cache

            yield make
            for cache in caches:
                cache.clear()
                cache.close()

Optional: override ``advance`` (a fixture returning ``advance(seconds)``) when the backend takes
an injectable clock, so expiry is tested without sleeping; override ``outage`` (a fixture returning
a context manager factory: inside ``with outage():`` the caches cannot reach their store, after it
they can again) so the answers during an engine outage and the recovery are tested; override
``write_outage`` the same way when the store can refuse writes while it still answers reads (a
locked or full file, a read-only replica); set ``shared_store = True`` when two caches from the
factory see the same data (prefix isolation and signing across caches are then tested too).
Every factory must pass ``secret=`` on: the suite checks signed caches.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from cacheplug.core.base import BaseCache
from cacheplug.core.errors import SerializationError

__all__ = ["CacheContract", "CacheFactory"]

CacheFactory = Callable[..., BaseCache]

#: Values every built-in serializer round-trips exactly.
PORTABLE_VALUES: list[Any] = [
    "text",
    "",
    "ünïcødé ✓",
    0,
    -17,
    2**40,
    3.25,
    True,
    False,
    [1, "two", 3.0, [4]],
    {"id": 7, "name": "Ada", "tags": ["x", "y"], "nested": {"ok": True}},
]


#: (key_prefix, a neighbour's key_prefix that it matches when read as a pattern)
_PATTERN_PREFIXES: list[tuple[str, str]] = [
    ("a_", "ab"),  # SQL LIKE: any one character
    ("a%", "ab"),  # SQL LIKE: any characters
    ("a*", "ab"),  # glob (SQLite GLOB, Redis MATCH, fnmatch): any characters
    ("a?", "ab"),  # glob: any one character
    ("a[b]", "ab"),  # glob: a character class
    ("a[", "ab"),  # glob: an unclosed class
    ("a\\", "a*"),  # an escape character (LIKE ... ESCAPE, glob)
    ("app:", "APP:"),  # SQLite's LIKE ignores ASCII case
]


class _BrokenLoads:
    """A serializer that writes fine and can never read back."""

    name = "broken-loads"

    def dumps(self, value: Any) -> bytes:
        return b"not a payload anyone can read"

    def loads(self, data: bytes) -> Any:
        raise ValueError("unreadable on purpose")


#: name of a call -> (the call, the answer it owes)
_Expected = dict[str, tuple[Callable[[], Any], Any]]


def _wrong_answers(expected: _Expected) -> list[str]:
    """What each call did that its expected answer (value and type) does not match."""
    wrong: list[str] = []
    for name, (call, answer) in expected.items():
        try:
            got = call()
        except Exception as err:  # the point of the outage tests: none may escape
            wrong.append(f"{name} raised {type(err).__name__}: {err}")
        else:
            if got != answer or type(got) is not type(answer):
                wrong.append(f"{name} returned {got!r}, expected {answer!r}")
    return wrong


def _assert_recovers(cache: BaseCache) -> None:
    """After an outage, ``cache`` stores and reads again by itself."""
    # Engines may skip a failed server for a while: wait, bounded, for the first success.
    deadline, pause = time.monotonic() + 30, threading.Event()
    while not cache.set("key", "after"):
        assert time.monotonic() < deadline, "the cache did not recover after the outage"
        pause.wait(0.01)
    assert cache.get("key") == "after", "the cache did not recover after the outage"


class CacheContract:
    """The behaviour every backend owes its users; subclass it and provide ``cache_factory``.

    Fixtures and attributes a subclass provides (``cache_factory`` is required; each other one
    left out is a skip that says so):

    - ``cache_factory``: returns ``make(**kwargs)``, which builds a new, empty cache with
      ``kwargs`` (``serializer=``, ``key_prefix=``, ``default_timeout=``, ``secret=``...) on
      each call; close what it built after the ``yield``.
    - ``advance``: returns ``advance(seconds)``, moving the clock the factory's caches read.
    - ``outage``: returns a context-manager factory; inside ``with outage():`` the caches
      cannot reach their store, and after it they must recover by themselves.
    - ``write_outage``: the same for a partial outage, where the store refuses every write,
      deletes included, but still answers reads (SQLite locked by another writer, a read-only
      replica, a read-only file system). Each write must then give its outage answer,
      logged; reads must keep answering as before: entries written before the outage read
      back, and a refused write changed nothing. Provide it beside ``outage`` or instead of it.
    - ``shared_store = True``: two caches from the factory see the same data (tests key
      prefixes, and that a cache with a ``secret`` misses entries it did not sign).

    Example::

        class TestMyCache(CacheContract):
            shared_store = True

            @pytest.fixture
            def cache_factory(self, tmp_path, clock):
                caches = []

                def make(**kwargs):
                    caches.append(MyCache(tmp_path / "db", clock=clock, **kwargs))
                    return caches[-1]

                yield make
                for cache in caches:
                    cache.close()

            @pytest.fixture
            def advance(self, clock):
                return clock.advance
    """

    #: Two caches from ``cache_factory`` share one store (enables the key_prefix tests).
    shared_store = False

    @pytest.fixture
    def cache_factory(self) -> Iterator[CacheFactory]:
        raise NotImplementedError("provide a cache_factory fixture in your subclass")

    @pytest.fixture
    def cache(self, cache_factory: CacheFactory) -> BaseCache:
        return cache_factory()

    @pytest.fixture
    def advance(self) -> Callable[[float], None]:
        pytest.skip(
            "expiry over time is not tested: no advance fixture (override it to return "
            "advance(seconds) when the backend takes an injectable clock)"
        )

    @pytest.fixture
    def outage(self) -> Callable[[], contextlib.AbstractContextManager[object]]:
        pytest.skip(
            "engine outages are not tested: no outage fixture (override it to return a "
            "context manager factory inside which the caches cannot reach their store)"
        )

    @pytest.fixture
    def write_outage(self) -> Callable[[], contextlib.AbstractContextManager[object]]:
        pytest.skip(
            "write outages are not tested: no write_outage fixture (override it to return a "
            "context manager factory inside which the store refuses writes and answers reads)"
        )

    def _needs_shared_store(self, untested: str) -> None:
        """Skip, saying ``untested``, unless two caches from the factory share one store."""
        if not self.shared_store:
            pytest.skip(
                f"{untested}: set shared_store = True when two caches from cache_factory see "
                "the same data"
            )

    # -- get / set -------------------------------------------------------------------------

    def test_get_missing_key_is_none(self, cache: BaseCache) -> None:
        assert cache.get("missing") is None

    @pytest.mark.parametrize("value", PORTABLE_VALUES, ids=repr)
    def test_set_then_get_round_trips(self, cache: BaseCache, value: Any) -> None:
        assert cache.set("key", value) is True
        got = cache.get("key")
        assert got == value, f"get returned {got!r} after set({value!r})"
        assert type(got) is type(value), f"a {type(value).__name__} came back as {got!r}"

    def test_set_overwrites(self, cache: BaseCache) -> None:
        cache.set("key", "old")
        assert cache.set("key", "new") is True
        assert cache.get("key") == "new"

    def test_value_is_a_copy(self, cache: BaseCache) -> None:
        value = {"items": [1, 2]}
        cache.set("key", value)
        value["items"].append(3)
        got = cache.get("key")
        assert got == {"items": [1, 2]}, "mutating a value after set changed the cached copy"
        got["items"].append(4)
        assert cache.get("key") == {"items": [1, 2]}, (
            "mutating what get returned changed the cached copy: get must return a copy"
        )

    def test_keys_differing_only_in_case_or_form_are_distinct(self, cache: BaseCache) -> None:
        # a case-insensitive collation, a trimmed or a normalised key would merge these
        keys = ["key", "Key", "KEY", "key ", "caf\u00e9", "cafe\u0301"]
        for number, key in enumerate(keys):
            cache.set(key, number)
        got = dict(zip(keys, cache.get_many(*keys), strict=True))
        assert got == {key: number for number, key in enumerate(keys)}, (
            f"keys that differ only in case, a trailing space or Unicode form share entries: "
            f"read back {got!r}; keys are str compared exactly"
        )
        assert cache.delete("Key") is True
        assert cache.get_many(*keys) == [0, None, 2, 3, 4, 5], "delete('Key') removed another key"

    def test_non_str_key_is_type_error(self, cache: BaseCache) -> None:
        counted = ("hits", "misses", "sets", "deletes", "errors", "evictions")
        before = {name: cache.stats()[name] for name in counted}
        for call in (
            lambda: cache.set(1, "v"),  # type: ignore[arg-type]
            lambda: cache.get(b"k"),  # type: ignore[arg-type]
            lambda: cache.delete(None),  # type: ignore[arg-type]
            lambda: cache.add(1, "v"),  # type: ignore[arg-type]
            lambda: cache.has(1),  # type: ignore[arg-type]
            lambda: cache.inc(1),  # type: ignore[arg-type]
            lambda: cache.dec(b"k"),  # type: ignore[arg-type]
            lambda: cache.get_many("k", 1),  # type: ignore[arg-type]
            lambda: cache.get_dict(1),  # type: ignore[arg-type]
            lambda: cache.set_many({1: "v"}),  # type: ignore[dict-item]
            lambda: cache.delete_many("k", 1),  # type: ignore[arg-type]
            lambda: cache.get_or_set(1, lambda: "v"),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError, match="key must be str"):
                call()
        after = {name: cache.stats()[name] for name in counted}
        assert after == before, (
            f"calls that raised for a non-str key counted in stats(): {before} -> {after}; "
            "check every key before looking any up"
        )
        assert cache.has("1") is False, "a non-str key was stored under its str()"

    def test_unencodable_value_raises_and_keeps_old_value(self, cache: BaseCache) -> None:
        cache.set("key", "kept")
        with pytest.raises(SerializationError):
            cache.set("key", threading.Lock())
        assert cache.get("key") == "kept"
        with pytest.raises(SerializationError):
            cache.set_many({"new": 1, "key": threading.Lock(), "last": 3})
        assert cache.get_many("new", "key", "last") == [None, "kept", None], (
            "set_many stored items of a call that raised: encode every value first"
        )

    def test_serialization_error_is_a_pickle_error(self, cache: BaseCache) -> None:
        import pickle

        with pytest.raises(pickle.PickleError):
            cache.set("key", threading.Lock())

    def test_unreadable_entry_is_a_miss(self, cache: BaseCache) -> None:
        cache.serializer = _BrokenLoads()
        cache.set("key", {"a": 1})
        errors_before = cache.stats()["errors"]
        assert cache.get("key") is None
        assert cache.stats()["errors"] == errors_before + 1
        assert cache.has("key") is True  # has never reads the value

    # -- add / delete / has / clear --------------------------------------------------------------

    def test_add_stores_missing_key(self, cache: BaseCache) -> None:
        assert cache.add("key", "first") is True
        assert cache.get("key") == "first"

    def test_add_does_not_overwrite(self, cache: BaseCache) -> None:
        cache.set("key", "first")
        assert cache.add("key", "second") is False, "add on an existing key must return False"
        assert cache.get("key") == "first", "add overwrote an existing key"

    def test_delete_reports_whether_key_existed(self, cache: BaseCache) -> None:
        cache.set("key", "v")
        assert cache.delete("key") is True
        assert cache.get("key") is None
        assert cache.delete("key") is False

    def test_has(self, cache: BaseCache) -> None:
        assert cache.has("key") is False
        cache.set("key", 0)
        assert cache.has("key") is True

    def test_a_stored_none_is_present(self, cache: BaseCache) -> None:
        assert cache.set("key", None) is True
        assert cache.get("key") is None
        assert cache.has("key") is True, "has is False for a stored None"
        assert cache.add("key", "other") is False, "add overwrote a stored None"
        with pytest.raises(TypeError):
            cache.inc("key")  # None is not a counter
        assert (cache.has("key"), cache.get("key")) == (True, None), "inc changed a stored None"

    def test_clear_removes_everything(self, cache: BaseCache) -> None:
        cache.set_many({"a": 1, "b": 2})
        assert cache.clear() is True
        assert cache.get_many("a", "b") == [None, None]
        assert cache.has("a") is False
        assert cache.clear() is True, "clear of an empty cache must return True"

    def test_prefixes_isolate_caches_on_one_store(self, cache_factory: CacheFactory) -> None:
        self._needs_shared_store("key_prefix isolation is not tested")
        left, right = cache_factory(key_prefix="left:"), cache_factory(key_prefix="right:")
        left.set("key", "L")
        right.set("key", "R")
        assert (left.get("key"), right.get("key")) == ("L", "R"), "key_prefix does not isolate"
        assert left.clear() is True
        assert left.get("key") is None
        assert right.get("key") == "R", "clear removed keys of another key_prefix"
        assert left.clear() is True, "clear with no key under its key_prefix must return True"

    def test_clear_takes_its_key_prefix_literally(self, cache_factory: CacheFactory) -> None:
        self._needs_shared_store("key_prefix isolation is not tested")
        wrong: list[str] = []
        for prefix, neighbour in _PATTERN_PREFIXES:
            mine, theirs = cache_factory(key_prefix=prefix), cache_factory(key_prefix=neighbour)
            theirs.set("key", "theirs")
            mine.set("key", "mine")
            assert mine.clear() is True
            if theirs.get("key") != "theirs":
                wrong.append(f"clear() under {prefix!r} removed a key under {neighbour!r}")
            if mine.has("key"):
                wrong.append(f"clear() under {prefix!r} left its own key")
            theirs.clear()
        assert not wrong, (
            "; ".join(wrong) + ": a key_prefix is text, not a pattern (escape it for SQL LIKE "
            "or GLOB, Redis MATCH..., and compare case-sensitively)"
        )

    # -- signing (secret=) -------------------------------------------------------------------------

    def test_a_cache_with_a_secret_reads_back_what_it_stored(
        self, cache_factory: CacheFactory
    ) -> None:
        cache = cache_factory(secret="contract-secret")
        value = {"a": [1, "x"], "b": None}
        assert cache.set("key", value) is True
        assert cache.get("key") == value, "a cache with a secret did not read its own entry"
        assert cache.get_many("key", "missing") == [value, None]
        assert cache.get_dict("key") == {"key": value}
        assert cache.add("key", 0) is False

    def test_a_cache_with_a_secret_reads_back_what_each_write_stored(
        self, cache_factory: CacheFactory
    ) -> None:
        cache = cache_factory(secret="contract-secret")
        assert cache.add("added", {"by": "add"}) is True
        assert sorted(cache.set_many({"many": ["set_many"], "more": 2})) == ["many", "more"]
        assert cache.inc("counted", 5) == 5
        expected = {
            "added": ("add", {"by": "add"}),
            "many": ("set_many", ["set_many"]),
            "more": ("set_many", 2),
            "counted": ("inc", 5),
        }
        wrong = [
            f"{write} stored {key!r}, read back as {got!r}"
            for (key, (write, value)), got in zip(
                expected.items(), cache.get_many(*expected), strict=True
            )
            if got != value
        ]
        assert not wrong, (
            "a cache with a secret did not read back its own entries: "
            + "; ".join(wrong)
            + " (every write must sign its payload: encode with self._encode)"
        )
        assert cache.inc("counted") == 6, "inc did not read back the counter it signed"

    def test_a_cache_with_a_secret_misses_entries_it_did_not_sign(
        self, cache_factory: CacheFactory
    ) -> None:
        self._needs_shared_store("signing is not tested across caches")
        signed = cache_factory(secret="contract-secret")
        cache_factory(secret="another-secret").set("theirs", {"a": 1})
        cache_factory().set("unsigned", {"a": 1})
        assert signed.get("theirs") is None, "an entry signed with another secret was read"
        assert signed.get("unsigned") is None, "an unsigned entry was read by a signed cache"
        assert signed.get_many("theirs", "unsigned") == [None, None]

    # -- timeouts ---------------------------------------------------------------------------------

    def test_negative_timeout_is_already_expired(self, cache: BaseCache) -> None:
        cache.set("key", "old")
        assert cache.set("key", "new", timeout=-1) is True
        assert cache.get("key") is None, "an entry set with a negative timeout did not expire"
        assert cache.has("key") is False

    def test_add_with_a_negative_timeout_is_already_expired(self, cache: BaseCache) -> None:
        sets = cache.stats()["sets"]
        assert cache.add("key", "v", timeout=-1) is True, (
            "add of a missing key with a negative timeout must return True, as set does"
        )
        assert cache.get("key") is None, "an entry added with a negative timeout did not expire"
        assert cache.has("key") is False, "has is True for an entry added already expired"
        assert cache.stats()["sets"] == sets + 1, (
            "add with a negative timeout is a write that removes the key: count it in sets"
        )
        cache.set("kept", "old")
        assert cache.add("kept", "new", timeout=-1) is False, "add on an existing key answered True"
        assert cache.get("kept") == "old", "add with a negative timeout removed an existing key"

    # ids name the values without an address, the same in every process (pytest-xdist)
    @pytest.mark.parametrize(
        "timeout",
        ["60", object(), True, [1], float("nan"), float("inf"), -float("inf")],
        ids=["'60'", "object()", "True", "[1]", "nan", "inf", "-inf"],
    )
    def test_bad_timeout_is_type_error(self, cache: BaseCache, timeout: Any) -> None:
        cache.set("key", "kept")
        for call in (
            lambda: cache.set("key", "lost", timeout=timeout),
            lambda: cache.add("new", "stored", timeout=timeout),
            lambda: cache.set_many({"key": "lost", "new": "stored"}, timeout=timeout),
            lambda: cache.get_or_set("new", lambda: "stored", timeout=timeout),
        ):
            with pytest.raises(TypeError, match="timeout"):
                call()
        assert cache.get_many("key", "new") == ["kept", None]

    def test_float_timeout_accepted(self, cache: BaseCache) -> None:
        assert cache.set("key", "v", timeout=30.5) is True
        assert cache.get("key") == "v"

    def test_an_int_timeout_too_long_for_a_clock_means_very_long(self, cache: BaseCache) -> None:
        for key, method in (("s", cache.set), ("a", cache.add)):
            assert method(key, "v", timeout=10**400) is True
            assert cache.get(key) == "v"
        assert cache.set_many({"m": "v"}, timeout=10**400) == ["m"]
        assert cache.get("m") == "v"
        assert cache.set("s", "gone", timeout=-(10**400)) is True
        assert cache.get("s") is None

    def test_timedelta_timeout_accepted(self, cache: BaseCache) -> None:
        assert cache.set("key", "v", timeout=timedelta(minutes=5)) is True
        assert cache.get("key") == "v"
        assert cache.set("key", "gone", timeout=timedelta(seconds=-1)) is True
        assert cache.get("key") is None

    def test_entry_expires_after_timeout(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        # (timeout, still there after, gone after): fractions are exact, not rounded up to the
        # next whole second; each "still there" leaves at least 0.1 s, as an engine's advance
        # shortens TTLs on a server whose own clock keeps running meanwhile
        for timeout, live, gone in (
            (10, 9.0, 11.0),
            (timedelta(seconds=10), 9.0, 11.0),
            (2.5, 2.0, 2.9),
            (timedelta(milliseconds=200), 0.1, 0.9),
        ):
            cache.set("key", "v", timeout=timeout)
            advance(live)
            assert cache.get("key") == "v", f"an entry expired before its timeout {timeout!r}"
            advance(gone - live)
            assert cache.get("key") is None, (
                f"an entry did not expire after its timeout {timeout!r}"
            )
            assert cache.has("key") is False, "has is True for an expired entry"
            assert cache.delete("key") is False, "delete of an expired entry must return False"

    def test_default_timeout_applies(
        self, cache_factory: CacheFactory, advance: Callable[[float], None]
    ) -> None:
        cache = cache_factory(default_timeout=5)
        cache.set("key", "v")
        advance(6)
        assert cache.get("key") is None

    def test_timeout_zero_never_expires(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set("key", "v", timeout=0)
        advance(10 * 365 * 24 * 3600)
        assert cache.get("key") == "v"

    def test_set_many_and_add_honour_their_timeout(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set_many({"many": 1}, timeout=5)
        cache.add("added", 2, timeout=5)
        advance(6)
        assert cache.get_many("many", "added") == [None, None]

    def test_add_over_expired_entry_succeeds(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set("key", "old", timeout=1)
        advance(2)
        assert cache.add("key", "new") is True
        assert cache.get("key") == "new"

    # -- counters ---------------------------------------------------------------------------------

    def test_inc_missing_key_starts_at_delta(self, cache: BaseCache) -> None:
        answers = [cache.inc("n"), cache.inc("m", 5), cache.dec("d", 3), cache.inc("n", 2)]
        assert answers == [1, 5, -3, 3]
        assert [type(answer) for answer in answers] == [int] * 4, f"inc answered {answers!r}"

    def test_inc_and_dec_existing(self, cache: BaseCache) -> None:
        cache.set("n", 10)
        assert cache.inc("n", 5) == 15
        assert cache.dec("n", 20) == -5
        assert cache.dec("n") == -6

    def test_get_after_inc_is_int(self, cache: BaseCache) -> None:
        cache.inc("n", 41)
        cache.inc("n")
        got = cache.get("n")
        assert got == 42
        assert type(got) is int

    @pytest.mark.parametrize("value", ["text", {"a": 1}, 1.5, [1]], ids=repr)
    def test_inc_non_integer_is_type_error_and_value_stays(
        self, cache: BaseCache, value: Any
    ) -> None:
        cache.set("key", value)
        with pytest.raises(TypeError):
            cache.inc("key")
        assert cache.get("key") == value

    def test_new_counter_gets_the_default_timeout(
        self, cache_factory: CacheFactory, advance: Callable[[float], None]
    ) -> None:
        cache = cache_factory(default_timeout=5)
        cache.inc("up")
        cache.dec("down")
        advance(6)
        assert cache.get_many("up", "down") == [None, None]

    def test_new_counters_under_a_default_timeout_reassigned_below_zero(
        self, cache: BaseCache
    ) -> None:
        # cachelib's users reassign default_timeout; below zero, entries are born expired: a new
        # counter answers its count and stores nothing, as set does
        cache.default_timeout = -1
        answers = (cache.inc("new"), cache.dec("other", 2))
        assert answers == (1, -2), f"inc and dec of new counters answered {answers!r}"
        assert cache.get_many("new", "other") == [None, None], "a born-expired counter was kept"

    def test_existing_counter_under_a_default_timeout_reassigned_below_zero(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set("n", 5, timeout=10)
        cache.default_timeout = -1
        assert cache.inc("n", 2) == 7, "an existing counter must keep counting"
        advance(8)
        assert cache.get("n") == 7, "inc must keep the counter's own expiry"
        advance(3)
        assert cache.get("n") is None

    def test_inc_keeps_the_expiry_of_an_existing_counter(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set("n", 1, timeout=10)
        advance(8)
        assert cache.inc("n") == 2
        assert cache.dec("n", 5) == -3
        advance(3)
        assert cache.get("n") is None

    def test_inc_on_an_expired_counter_starts_at_delta(
        self, cache: BaseCache, advance: Callable[[float], None]
    ) -> None:
        cache.set_many({"up": 5, "down": 5}, timeout=1)
        advance(2)
        answers = (cache.inc("up", 3), cache.dec("down", 2))
        assert answers == (3, -2), (
            f"inc(3) and dec(2) of expired counters answered {answers!r}: an expired counter "
            "is gone, so it starts again at delta"
        )
        assert cache.get_many("up", "down") == [3, -2]

    def test_inc_past_what_the_backend_holds_is_overflow_error_and_value_stays(
        self, cache_factory: CacheFactory
    ) -> None:
        # json and msgpack hold [-2**63, 2**64), engines signed 64 bits: both ends overflow
        for serializer in ("json", "msgpack"):
            cache = cache_factory(serializer=serializer)
            for start, delta in ((-(2**63), -1), (2**64 - 1, 1)):
                cache.set("n", start)
                try:
                    got: Any = cache.inc("n", delta)
                except Exception as err:
                    got = err
                did = (
                    f"raised {type(got).__name__} ({got})"
                    if isinstance(got, Exception)
                    else f"answered {got!r}"
                )
                assert isinstance(got, OverflowError), (
                    f"inc({delta}) of {start} with {serializer} {did}, not OverflowError "
                    "(encode counts with self._encode_count)"
                )
                assert cache.get("n") == start, "inc past what the backend holds changed the value"

    def test_inc_bad_delta_is_type_error(self, cache: BaseCache) -> None:
        with pytest.raises(TypeError, match="delta"):
            cache.inc("n", 1.5)  # type: ignore[arg-type]

    def test_concurrent_inc_loses_nothing(self, cache: BaseCache) -> None:
        threads, per_thread = 8, 200
        barrier = threading.Barrier(threads)
        # Switch threads often, or a read-then-write inc finishes its slice and looks atomic.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        failures: list[BaseException] = []

        def work() -> None:
            barrier.wait()
            try:
                for _ in range(per_thread):
                    assert cache.inc("counter") is not None
            except BaseException as err:  # reported below, not lost in the thread
                failures.append(err)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            sys.setswitchinterval(interval)
        assert failures == []
        total = cache.get("counter")
        assert total == threads * per_thread, (
            f"concurrent inc lost updates: {threads} threads x {per_thread} left {total!r}"
        )

    # -- outages ---------------------------------------------------------------------------------

    def test_outage_answers_with_the_contract_values_and_recovers(
        self,
        cache: BaseCache,
        outage: Callable[[], contextlib.AbstractContextManager[object]],
    ) -> None:
        cache.set("key", "before")
        expected: _Expected = {
            "get": (lambda: cache.get("key"), None),
            "set": (lambda: cache.set("key", "during"), False),
            "add": (lambda: cache.add("new", "during"), False),
            "delete": (lambda: cache.delete("key"), False),
            "has": (lambda: cache.has("key"), False),
            "inc": (lambda: cache.inc("n"), None),
            "dec": (lambda: cache.dec("n"), None),
            "get_many": (lambda: cache.get_many("key", "other"), [None, None]),
            "get_dict": (lambda: cache.get_dict("key"), {"key": None}),
            "set_many": (lambda: cache.set_many({"key": "during"}), []),
            "delete_many": (lambda: cache.delete_many("key"), []),
            "clear": (cache.clear, False),
        }
        errors_before = cache.stats()["errors"]
        with outage():
            wrong = _wrong_answers(expected)
        assert not wrong, "during an outage: " + "; ".join(wrong)
        assert cache.stats()["errors"] > errors_before, "outage failures are not counted"
        _assert_recovers(cache)

    def test_write_outage_refuses_writes_and_reads_go_on(
        self,
        cache: BaseCache,
        write_outage: Callable[[], contextlib.AbstractContextManager[object]],
    ) -> None:
        cache.set_many({"key": "before", "n": 5})
        reads: _Expected = {
            "get": (lambda: cache.get("key"), "before"),
            "get of a missing key": (lambda: cache.get("new"), None),
            "has": (lambda: cache.has("key"), True),
            "has of a missing key": (lambda: cache.has("new"), False),
            "get_many": (lambda: cache.get_many("key", "n", "new"), ["before", 5, None]),
            "get_dict": (lambda: cache.get_dict("key", "new"), {"key": "before", "new": None}),
        }
        writes: _Expected = {
            "set": (lambda: cache.set("key", "during"), False),
            "add": (lambda: cache.add("new", "during"), False),
            "delete": (lambda: cache.delete("key"), False),
            "inc": (lambda: cache.inc("n"), None),
            "dec": (lambda: cache.dec("n"), None),
            "inc of a missing key": (lambda: cache.inc("new"), None),
            "set_many": (lambda: cache.set_many({"key": "during", "new": "during"}), []),
            "delete_many": (lambda: cache.delete_many("key", "n"), []),
            "clear": (cache.clear, False),
        }
        errors_before = cache.stats()["errors"]
        with write_outage():
            wrong_reads = _wrong_answers(reads)
            wrong_writes = _wrong_answers(writes)
            reads_after_writes = _wrong_answers(reads)
        assert not wrong_reads, "a write outage stopped reads: " + "; ".join(wrong_reads)
        assert not wrong_writes, "during a write outage: " + "; ".join(wrong_writes)
        assert not reads_after_writes, (
            "after writes refused in a write outage (a refused write changes nothing, and "
            "reads go on): " + "; ".join(reads_after_writes)
        )
        errors = cache.stats()["errors"] - errors_before
        assert errors >= len(writes), f"{len(writes)} refused writes counted {errors} errors"
        _assert_recovers(cache)

    def test_write_outage_reads_expired_entries_as_missing(
        self,
        cache: BaseCache,
        write_outage: Callable[[], contextlib.AbstractContextManager[object]],
        advance: Callable[[float], None],
    ) -> None:
        cache.set_many({"key": "short", "n": 1}, timeout=5)
        advance(10)
        # A backend may drop an expired entry as it reads it: that write fails here.
        expired: _Expected = {
            "get": (lambda: cache.get("key"), None),
            "has": (lambda: cache.has("key"), False),
            "get_many": (lambda: cache.get_many("key", "n"), [None, None]),
            "add": (lambda: cache.add("key", "new"), False),
            "inc": (lambda: cache.inc("n"), None),
        }
        with write_outage():
            wrong = _wrong_answers(expired)
        assert not wrong, "expired entries during a write outage: " + "; ".join(wrong)
        _assert_recovers(cache)

    # -- many ------------------------------------------------------------------------------------

    def test_get_many_keeps_order_with_misses(self, cache: BaseCache) -> None:
        cache.set("a", 1)
        cache.set("c", 3)
        assert cache.get_many("a", "b", "c") == [1, None, 3]
        assert cache.get_many() == []

    def test_get_many_follows_its_arguments_with_repeats(self, cache: BaseCache) -> None:
        cache.set_many({"a": 1, "c": 3})
        assert cache.get_many("c", "b", "a", "c") == [3, None, 1, 3]

    def test_get_dict(self, cache: BaseCache) -> None:
        cache.set_many({"a": 1, "b": "two"})
        assert cache.get_dict("a", "b", "z") == {"a": 1, "b": "two", "z": None}

    def test_set_many_returns_stored_keys(self, cache: BaseCache) -> None:
        stored = cache.set_many({"a": 1, "b": [2], "c": "3"})
        assert sorted(stored) == ["a", "b", "c"]
        assert cache.get_many("a", "b", "c") == [1, [2], "3"]

    def test_delete_many_returns_deleted_keys(self, cache: BaseCache) -> None:
        cache.set_many({"a": 1, "b": 2})
        assert sorted(cache.delete_many("a", "b", "missing")) == ["a", "b"]
        assert cache.get_many("a", "b") == [None, None]

    # -- beyond cachelib ----------------------------------------------------------------------

    def test_get_or_set_calls_factory_once(self, cache: BaseCache) -> None:
        calls: list[int] = []

        def factory() -> dict[str, int]:
            calls.append(1)
            return {"v": len(calls)}

        assert cache.get_or_set("key", factory) == {"v": 1}
        assert cache.get_or_set("key", factory) == {"v": 1}
        assert len(calls) == 1

    def test_get_or_set_single_flight_across_threads(self, cache: BaseCache) -> None:
        threads = 8
        calls: list[int] = []
        barrier = threading.Barrier(threads)
        results: list[Any] = []
        misses_before = cache.stats()["misses"]

        def factory() -> str:
            calls.append(1)
            # Hold the flight open until every thread has missed once, so all of them contend;
            # bounded, as a backend may keep the others from reading or not count their misses.
            pause, deadline = threading.Event(), time.monotonic() + 2
            while cache.stats()["misses"] < misses_before + threads:
                if time.monotonic() > deadline:
                    break
                pause.wait(0.001)
            return "computed"

        def work() -> None:
            barrier.wait()
            results.append(cache.get_or_set("key", factory))

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert results == ["computed"] * threads
        assert len(calls) == 1

    def test_memoize_caches_per_arguments(self, cache: BaseCache) -> None:
        calls: list[tuple[int, int]] = []

        @cache.memoize(timeout=60)
        def add(a: int, b: int = 0) -> int:
            calls.append((a, b))
            return a + b

        assert add(1, 2) == 3
        assert add(1, b=2) == 3
        assert add(a=1, b=2) == 3
        assert add(2) == 2
        assert calls == [(1, 2), (2, 0)]
        assert add.invalidate(1, 2) is True
        assert add(1, 2) == 3
        assert calls == [(1, 2), (2, 0), (1, 2)]

    def test_memoize_on_methods(self, cache: BaseCache) -> None:
        class Repo:
            calls = 0

            def __init__(self, name: str) -> None:
                self.name = name

            def __repr__(self) -> str:
                return f"Repo({self.name!r})"

            @cache.memoize()
            def lookup(self, key: str) -> str:
                Repo.calls += 1
                return f"{self.name}:{key}"

        first, second = Repo("a"), Repo("b")
        assert first.lookup("x") == "a:x"
        assert first.lookup("x") == "a:x"
        assert second.lookup("x") == "b:x"
        assert Repo.calls == 2
        assert first.lookup.invalidate("x") is True
        assert first.lookup("x") == "a:x"
        assert Repo.calls == 3

    def test_stats_count_hits_misses_sets_deletes(self, cache: BaseCache) -> None:
        before = cache.stats()
        cache.set("key", 1)
        cache.get("key")
        cache.get("missing")
        cache.delete("key")
        after = cache.stats()
        assert after["sets"] - before["sets"] >= 1
        assert after["hits"] - before["hits"] == 1
        assert after["misses"] - before["misses"] == 1
        assert after["deletes"] - before["deletes"] == 1
        assert {"errors", "evictions"} <= set(after)

    def test_a_stored_none_and_an_unreadable_entry_count_as_misses(self, cache: BaseCache) -> None:
        cache.set_many({"none": None, "value": 1})
        before = cache.stats()
        assert cache.get("none") is None
        assert cache.get_many("none", "value") == [None, 1]
        cache.serializer = _BrokenLoads()
        cache.set("unreadable", {"a": 1})
        assert cache.get("unreadable") is None
        after = cache.stats()
        counted = {name: after[name] - before[name] for name in ("hits", "misses")}
        assert counted == {"hits": 1, "misses": 3}, (
            f"reading a stored None twice, an unreadable entry and a value counted {counted}: "
            "a lookup that returns None counts as a miss, never a hit (count it after decoding)"
        )

    def test_context_manager_closes(self, cache_factory: CacheFactory) -> None:
        cache = cache_factory()
        closes: list[int] = []
        close = cache.close

        def counted_close() -> None:
            closes.append(1)
            close()

        cache.close = counted_close  # type: ignore[method-assign]
        with cache as entered:
            assert entered is cache, "with cache as c: c must be the cache"
            assert cache.set("key", "v") is True
            assert cache.get("key") == "v"
        assert closes == [1], "leaving the with block did not call close()"

    def test_close_twice_is_harmless(self, cache_factory: CacheFactory) -> None:
        cache = cache_factory()
        cache.set("key", "v")
        cache.close()
        cache.close()

    def test_serializer_attribute_is_reassignable(self, cache: BaseCache) -> None:
        from cacheplug.core.plugins import get_serializer

        json_serializer = get_serializer("json")
        cache.serializer = json_serializer
        cache.set("key", (1, 2))
        assert cache.get("key") == [1, 2]  # JSON has no tuples: proof json wrote it
        assert cache.serializer is json_serializer
