"""cacheplug.testing as a plugin author uses it: a correct backend passes, broken ones fail.

The backends live here, outside the package; each run of the contract happens in a pytest
session of its own (``pytester``), as it would in the plugin's own repository.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from plugin_dists import installed_in_place

from cacheplug import BaseCache
from cacheplug.core.arguments import check_delta, check_key, checked_counter
from cacheplug.core.plugins import register_plugin, reset_plugins
from cacheplug.core.timeouts import normalize_timeout

pytest_plugins = ["pytester"]

EXAMPLE_PLUGIN_SRC = Path(__file__).parents[1] / "examples" / "cacheplug-example-plugin" / "src"
PLUGINS_DOC = Path(__file__).parents[1] / "docs" / "plugins.md"

Timeout = float | timedelta | None


class FakeClock:
    """Seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: what DictCache names its writes when it reports an error
WRITES = frozenset({"set", "add", "delete", "clear", "inc"})


class DictStore:
    """One in-memory store several caches can share.

    ``outage()`` makes it unreachable, ``read_only()`` refuses writes only.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, float | None]] = {}
        self.clock = FakeClock()
        self.lock = threading.Lock()
        self.down = False
        self.refusing_writes = False

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down = True
        try:
            yield
        finally:
            self.down = False

    @contextlib.contextmanager
    def read_only(self) -> Iterator[None]:
        self.refusing_writes = True
        try:
            yield
        finally:
            self.refusing_writes = False


class StoreDownError(ConnectionError):
    """What the store's 'driver' raises while it is down."""


class DictCache(BaseCache):
    """A correct minimal backend: payloads in a shared dict, expiry on an injectable clock."""

    def __init__(
        self,
        store: DictStore,
        default_timeout: float | timedelta = 300,
        *,
        key_prefix: str = "",
        serializer: Any = None,
        secret: str | bytes | None = None,
    ) -> None:
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self.store = store

    # -- what a driver would do ---------------------------------------------------------------

    def _reach(self, operation: str = "get") -> None:
        if self.store.down:
            raise StoreDownError("store unreachable")
        if self.store.refusing_writes and operation in WRITES:
            raise StoreDownError("store is read-only")

    def _unreachable(self, operation: str) -> bool:
        try:
            self._reach(operation)
        except StoreDownError as err:
            self._backend_error(operation, err)
            return True
        return False

    def _expiry(self, timeout: Timeout) -> float | None:
        seconds = normalize_timeout(timeout, self.default_timeout)
        return None if seconds == 0 else self.store.clock() + seconds

    def _live(self, name: str) -> tuple[Any, float | None] | None:
        entry = self.store.entries.get(name)
        if entry is not None and entry[1] is not None and entry[1] <= self.store.clock():
            del self.store.entries[name]
            return None
        return entry

    def _payload(self, value: Any, key: str) -> Any:
        return self._encode(value, key)

    def _value(self, key: str, payload: Any) -> Any:
        return self._decode_or_miss(key, payload)

    # -- the contract -------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        check_key(key)
        if self._unreachable("get"):
            return None
        with self.store.lock:
            entry = self._live(self.key_prefix + key)
        if entry is None:
            self._misses += 1
            return None
        value = self._value(key, entry[0])
        if value is None:  # a stored None or an unreadable entry
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        expiry, payload = self._expiry(timeout), self._payload(value, key)
        if self._unreachable("set"):
            return False
        with self.store.lock:
            self.store.entries[self.key_prefix + key] = (payload, expiry)
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        expiry, payload = self._expiry(timeout), self._payload(value, key)
        if self._unreachable("add"):
            return False
        with self.store.lock:
            if self._live(self.key_prefix + key) is not None:
                return False
            self.store.entries[self.key_prefix + key] = (payload, expiry)
        self._sets += 1
        return True

    def delete(self, key: str) -> bool:
        check_key(key)
        if self._unreachable("delete"):
            return False
        with self.store.lock:
            existed = self._live(self.key_prefix + key) is not None
            self.store.entries.pop(self.key_prefix + key, None)
        self._deletes += existed
        return existed

    def has(self, key: str) -> bool:
        check_key(key)
        if self._unreachable("has"):
            return False
        with self.store.lock:
            return self._live(self.key_prefix + key) is not None

    def clear(self) -> bool:
        if self._unreachable("clear"):
            return False
        with self.store.lock:
            for name in [name for name in self.store.entries if name.startswith(self.key_prefix)]:
                del self.store.entries[name]
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_key(key)
        check_delta(delta)
        if self._unreachable("inc"):
            return None
        with self.store.lock:
            return self._add_to_counter(key, delta)

    def _add_to_counter(self, key: str, delta: int) -> int:
        entry = self._live(self.key_prefix + key)
        if entry is None:
            value, expiry = delta, self._expiry(None)
        else:
            value, expiry = checked_counter(key, self._value(key, entry[0])) + delta, entry[1]
        self.store.entries[self.key_prefix + key] = (self._encode_count(key, value), expiry)
        return value


# -- one mistake each ---------------------------------------------------------------------------


class IgnoresTimeouts(DictCache):
    def _expiry(self, timeout: Timeout) -> float | None:
        normalize_timeout(timeout, self.default_timeout)
        return None


class AddOverwrites(DictCache):
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return self.set(key, value, timeout)


class RacyInc(DictCache):
    """Reads, then writes: two threads may read the same value and lose an increment."""

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_delta(delta)
        with self.store.lock:
            entry = self._live(self.key_prefix + key)
        current = 0 if entry is None else checked_counter(key, self._value(key, entry[0]))
        os.sched_yield()  # as a round trip to a store would: other threads run in between
        with self.store.lock:
            self.store.entries[self.key_prefix + key] = (
                self._payload(current + delta, key),
                entry[1] if entry else self._expiry(None),
            )
        return current + delta


class ReturnsTheStoredObject(DictCache):
    def _payload(self, value: Any, key: str) -> Any:
        self._encode(value, key)  # still refuses what cannot be serialized
        return value

    def _value(self, key: str, payload: Any) -> Any:
        return payload


class IgnoresItsSecret(DictCache):
    def __init__(self, store: DictStore, *args: Any, secret: Any = None, **kwargs: Any) -> None:
        super().__init__(store, *args, **kwargs)  # secret= accepted, then dropped


class RaisesOnOutage(DictCache):
    def get(self, key: str) -> Any:
        self._reach()
        return super().get(key)


class ClearsOtherPrefixes(DictCache):
    def clear(self) -> bool:
        with self.store.lock:
            self.store.entries.clear()
        return True


# -- running the contract as a plugin's repository would ------------------------------------------

CONTRACT_MODULE = """
import pytest
from cacheplug.testing import CacheContract
import test_testing_kit


@pytest.fixture(params={serializers!r})
def serializer(request):
    return request.param


class Backend(CacheContract):
    backend = None
    shared_store = True

    @pytest.fixture
    def store(self):
        return test_testing_kit.DictStore()

    @pytest.fixture
    def cache_factory(self, store, serializer):
        def make(**kwargs):
            kwargs.setdefault("serializer", serializer)
            return self.backend(store, **kwargs)

        yield make

    @pytest.fixture
    def advance(self, store):
        return store.clock.advance

    @pytest.fixture
    def outage(self, store):
        return store.outage

    @pytest.fixture
    def write_outage(self, store):
        return store.read_only
"""

CONTRACT_CLASS = """

class Test{name}(Backend):
    backend = test_testing_kit.{name}
"""


def _run_contract(
    pytester: pytest.Pytester, backends: list[type[DictCache]], serializers: list[str]
) -> pytest.RunResult:
    module = CONTRACT_MODULE.format(serializers=serializers) + "".join(
        CONTRACT_CLASS.format(name=backend.__name__) for backend in backends
    )
    pytester.makepyfile(test_contract=module)
    return pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-rfEs")


def test_a_correct_backend_passes_the_whole_contract(pytester: pytest.Pytester) -> None:
    result = _run_contract(pytester, [DictCache], ["pickle", "json", "msgpack"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("skipped", 0) == 0, result.stdout.str()
    assert outcomes["passed"] > 150


#: each broken backend, a contract test it must fail, and words its failure message must say
BROKEN = {
    IgnoresTimeouts: ("test_entry_expires_after_timeout", "did not expire after its timeout"),
    AddOverwrites: ("test_add_does_not_overwrite", "add on an existing key must return False"),
    RacyInc: ("test_concurrent_inc_loses_nothing", "concurrent inc lost updates"),
    ReturnsTheStoredObject: ("test_value_is_a_copy", "changed the cached copy"),
    RaisesOnOutage: (
        "test_outage_answers_with_the_contract_values_and_recovers",
        "during an outage: get raised StoreDownError: store unreachable",
    ),
    ClearsOtherPrefixes: (
        "test_prefixes_isolate_caches_on_one_store",
        "clear removed keys of another key_prefix",
    ),
    IgnoresItsSecret: (
        "test_a_cache_with_a_secret_misses_entries_it_did_not_sign",
        "an entry signed with another secret was read",
    ),
}


def test_each_broken_backend_fails_the_contract_saying_why(pytester: pytest.Pytester) -> None:
    result = _run_contract(pytester, list(BROKEN), ["pickle"])
    output = result.stdout.str()
    sections = _failure_sections(output, "pickle")
    missed = _missed_failures(sections, {b.__name__: why for b, why in BROKEN.items()})
    assert not missed, "\n".join(missed) + "\n" + output
    # and pytest shows the values too: the contract's asserts are rewritten like a test's own
    unreadable = sections["TestReturnsTheStoredObject.test_unreadable_entry_is_a_miss"]
    assert "assert {'a': 1} is None" in unreadable, unreadable


def test_without_the_optional_fixtures_only_the_documented_skips(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_contract="""
import pytest
from cacheplug.testing import CacheContract
from test_testing_kit import DictStore, DictCache


class TestBackend(CacheContract):
    @pytest.fixture
    def cache_factory(self):
        yield lambda **kwargs: DictCache(DictStore(), **kwargs)
"""
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()
    reasons = set(re.findall(r"^SKIPPED \[\d+\] \S+: (.+?)(?: \(|$)", result.stdout.str(), re.M))
    assert reasons == {
        "expiry over time is not tested: no advance fixture",
        "engine outages are not tested: no outage fixture",
        "write outages are not tested: no write_outage fixture",
        "key_prefix isolation is not tested: set shared_store = True when two caches from "
        "cache_factory see the same data",
        "signing is not tested across caches: set shared_store = True when two caches from "
        "cache_factory see the same data",
    }, result.stdout.str()


# -- partial outages on a real engine: SQLite with another connection holding the write lock ------

SQLITE_CONTRACT_MODULE = """
import contextlib
import sqlite3

import pytest
from cacheplug.testing import CacheContract
from cacheplug_example.sqlite import SQLiteCache
from test_testing_kit import FakeClock

READS = ("get", "has")


class RaisesOnLockedWrite(SQLiteCache):
    def _run(self, operation, failed, work):
        if operation in READS:
            return super()._run(operation, failed, work)
        with self._lock:
            return work(self._db)


class ReadsNothingAfterAFailedWrite(SQLiteCache):
    # takes a refused write for a dead engine: reads miss until a write succeeds
    dead = False

    def _run(self, operation, failed, work):
        if self.dead and operation in READS:
            return failed
        errors = self._errors
        answer = super()._run(operation, failed, work)
        if operation not in READS:
            self.dead = self._errors > errors
        return answer


class DropsExpiredEntriesAsItReads(SQLiteCache):
    def get(self, key):
        name = self.key_prefix + key
        with self._lock:
            row = self._db.execute(
                "SELECT expires FROM cacheplug_entries WHERE key = ?", (name,)
            ).fetchone()
            if row is not None and row[0] is not None and row[0] <= self._clock():
                self._db.execute("DELETE FROM cacheplug_entries WHERE key = ?", (name,))
        return super().get(key)


class CountsNoRefusedWrite(SQLiteCache):
    def _backend_error(self, operation, err):
        if operation in READS:
            super()._backend_error(operation, err)


class Locked(CacheContract):
    backend = SQLiteCache

    @pytest.fixture
    def clock(self):
        return FakeClock()

    @pytest.fixture
    def cache_factory(self, tmp_path, clock):
        caches = []

        def make(**kwargs):
            path = tmp_path / "cache.db"
            caches.append(self.backend(path, clock=clock, busy_timeout=0.01, **kwargs))
            return caches[-1]

        yield make
        for cache in caches:
            cache.close()

    @pytest.fixture
    def advance(self, clock):
        return clock.advance

    @pytest.fixture
    def write_outage(self, tmp_path):
        @contextlib.contextmanager
        def locked():
            other = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                other.execute("ROLLBACK")
                other.close()

        return locked
"""

#: each SQLite backend with a write-outage mistake, the test it fails and what the failure says
SQLITE_BROKEN = {
    "RaisesOnLockedWrite": (
        "test_write_outage_refuses_writes_and_reads_go_on",
        "during a write outage: set raised OperationalError: database is locked",
    ),
    "ReadsNothingAfterAFailedWrite": (
        "test_write_outage_refuses_writes_and_reads_go_on",
        "after writes refused in a write outage (a refused write changes nothing, and reads go "
        "on): get returned None, expected 'before'",
    ),
    "DropsExpiredEntriesAsItReads": (
        "test_write_outage_reads_expired_entries_as_missing",
        "expired entries during a write outage: get raised OperationalError: database is locked",
    ),
    "CountsNoRefusedWrite": (
        "test_write_outage_refuses_writes_and_reads_go_on",
        "9 refused writes counted 0 errors",
    ),
}


def _failure_sections(output: str, param: str = "") -> dict[str, str]:
    """``{"TestName.test_name": its failure report}`` from a pytest run's output."""
    # the report's sections: "____ TestName.test_name[param] ____" and the lines under it
    suffix = re.escape(f"[{param}]") if param else ""
    parts = re.split(rf"^_+ (Test\w+\.\w+){suffix} _+$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _missed_failures(sections: dict[str, str], expected: dict[str, tuple[str, str]]) -> list[str]:
    """Each ``{backend: (test, message)}`` that passed its test or failed it saying otherwise."""
    missed = []
    for backend, (test, message) in expected.items():
        report = sections.get(f"Test{backend}.{test}")
        if report is None:
            missed.append(f"{backend} passed {test}")
        elif not re.search(rf"^E\s+AssertionError: .*{re.escape(message)}", report, re.M):
            missed.append(f"{backend} failed {test} without saying {message!r}")
    return missed


def test_write_outages_on_a_locked_sqlite_catch_each_mistake(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(EXAMPLE_PLUGIN_SRC)
    classes = "".join(
        f"\n\nclass Test{name}(Locked):\n    backend = {name}\n"
        for name in ["SQLiteCache", *SQLITE_BROKEN]
    )
    pytester.makepyfile(test_locked=SQLITE_CONTRACT_MODULE + classes)
    result = pytester.runpytest_inprocess(
        "-q", "-p", "no:cacheprovider", "-rfEs", "-k", "write_outage"
    )
    output = result.stdout.str()
    sections = _failure_sections(output)
    assert not [name for name in sections if name.startswith("TestSQLiteCache.")], output
    assert result.parseoutcomes()["passed"] >= 2, output
    missed = _missed_failures(sections, SQLITE_BROKEN)
    assert not missed, "\n".join(missed) + "\n" + output


def _plugins_doc_contract_example() -> str:
    """The test module docs/plugins.md step 6 shows a plugin author, as written there."""
    step = PLUGINS_DOC.read_text().split("## 6. Test against the contract", 1)[1]
    return step.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def example_plugin(pytester: pytest.Pytester) -> Iterator[None]:
    pytester.syspathinsert(EXAMPLE_PLUGIN_SRC)  # as if the example were installed
    reset_plugins()
    if not installed_in_place(EXAMPLE_PLUGIN_SRC):  # else its entry point registers it
        register_plugin(importlib.import_module("cacheplug_example.plugin"), name="example")
    yield
    reset_plugins()


@pytest.mark.usefixtures("example_plugin")
def test_the_plugins_doc_example_runs_the_contract_as_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sqlite=_plugins_doc_contract_example())
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-rfEs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] > 150
    skipped = set(re.findall(r"^SKIPPED \[\d+\] \S+: (.+?) \(", result.stdout.str(), re.M))
    assert skipped <= {"engine outages are not tested: no outage fixture"}, result.stdout.str()


def test_contract_docstring_documents_every_fixture_a_subclass_provides() -> None:
    from cacheplug.testing import CacheContract

    doc = CacheContract.__doc__ or ""
    provided = [
        name
        for name, value in vars(CacheContract).items()
        if type(value).__name__ == "FixtureFunctionDefinition"
        or hasattr(value, "_pytestfixturefunction")
        if name != "cache"
    ]
    assert sorted(provided) == ["advance", "cache_factory", "outage", "write_outage"], provided
    for name in [*provided, "shared_store = True", "Example::"]:
        assert f"``{name}``" in doc or name in doc, f"CacheContract's docstring omits {name}"
