"""Mutation test of cacheplug.testing: each backend breaking one promise of docs/contract.md
must fail the contract suite, and the correct backend it was made from must pass it.

One nested pytest session runs the whole contract on every backend below (as a plugin's
repository would), and each test here reads the outcome for one of them. A mutant the suite
lets through is marked ``xfail(strict=True)`` with what slips.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cacheplug import BaseCache
from cacheplug.core.arguments import check_delta, check_key, checked_counter
from cacheplug.core.timeouts import normalize_timeout

Timeout = float | timedelta | None

#: the operations a read-only store refuses
WRITE_OPERATIONS = frozenset({"set", "add", "delete", "clear", "inc", "set_many", "delete_many"})


class Ticker:
    """Seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Vault:
    """One in-memory store (name -> payload, expiry) that several caches can share."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bytes, float | None]] = {}
        self.ticker = Ticker()
        self.unreachable = False
        self.read_only = False

    @contextlib.contextmanager
    def _while(self, flag: str) -> Iterator[None]:
        setattr(self, flag, True)
        try:
            yield
        finally:
            setattr(self, flag, False)

    def outage(self) -> contextlib.AbstractContextManager[None]:
        return self._while("unreachable")

    def refusing_writes(self) -> contextlib.AbstractContextManager[None]:
        return self._while("read_only")


class VaultDownError(OSError):
    """What the vault's 'driver' raises when it cannot serve an operation."""


class VaultCache(BaseCache):
    """A correct backend on a :class:`Vault`; every mutant below overrides one piece of it."""

    def __init__(self, vault: Vault, default_timeout: float | timedelta = 300, **kw: Any) -> None:
        super().__init__(default_timeout, **kw)
        self.vault = vault
        self.closed = 0

    # -- helpers ---------------------------------------------------------------------------------

    def _failed(self, operation: str) -> bool:
        """Whether the vault refuses ``operation`` now (counted and logged when it does)."""
        if self.vault.unreachable or (self.vault.read_only and operation in WRITE_OPERATIONS):
            self._backend_error(operation, VaultDownError(f"vault refused {operation}"))
            return True
        return False

    def _deadline(self, timeout: Timeout) -> float | None:
        seconds = normalize_timeout(timeout, self.default_timeout)
        return None if seconds == 0 else self.vault.ticker() + seconds

    def _expired(self, deadline: float | None) -> bool:
        return deadline is not None and deadline <= self.vault.ticker()

    def _name(self, key: str) -> str:
        """The vault's name for ``key``."""
        return self.key_prefix + key

    def _cleared(self, name: str) -> bool:
        """Whether ``clear`` removes the vault's row ``name``."""
        return name.startswith(self.key_prefix)

    def _row(self, key: str) -> tuple[bytes, float | None] | None:
        """The live row of ``key``, or ``None`` (an expired row is not dropped: reads only)."""
        row = self.vault.rows.get(self._name(key))
        return None if row is None or self._expired(row[1]) else row

    def _write(self, key: str, payload: bytes, deadline: float | None) -> None:
        if self._expired(deadline):
            self.vault.rows.pop(self._name(key), None)
        else:
            self.vault.rows[self._name(key)] = (payload, deadline)

    # -- the contract ----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        check_key(key)
        if self._failed("get"):
            return None
        row = self._row(key)
        if row is None:
            self._misses += 1
            return None
        value = self._decode_or_miss(key, row[0])
        if value is None:  # a stored None or an unreadable entry
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        deadline, payload = self._deadline(timeout), self._encode(value, key)
        if self._failed("set"):
            return False
        self._write(key, payload, deadline)
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        deadline, payload = self._deadline(timeout), self._encode(value, key)
        if self._failed("add") or self._row(key) is not None:
            return False
        self._write(key, payload, deadline)
        self._sets += 1
        return True

    def delete(self, key: str) -> bool:
        check_key(key)
        if self._failed("delete"):
            return False
        existed = self._row(key) is not None
        self.vault.rows.pop(self._name(key), None)
        self._deletes += existed
        return existed

    def has(self, key: str) -> bool:
        check_key(key)
        return not self._failed("has") and self._row(key) is not None

    def clear(self) -> bool:
        if self._failed("clear"):
            return False
        for name in [name for name in self.vault.rows if self._cleared(name)]:
            del self.vault.rows[name]
        return True

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        if not callable(getattr(mapping, "items", None)):
            raise TypeError(f"set_many takes a dict, got {type(mapping).__name__}")
        deadline = self._deadline(timeout)
        payloads = {}
        for key, value in mapping.items():  # everything encoded before anything is stored
            check_key(key)
            payloads[key] = self._encode(value, key)
        if self._failed("set_many"):
            return []
        for key, payload in payloads.items():
            self._write(key, payload, deadline)
        self._sets += len(payloads)
        return list(payloads)

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_key(key)
        check_delta(delta)
        if self._failed("inc"):
            return None
        flight = self._single_flight(key)  # one process, one vault: this lock makes it atomic
        try:
            next(flight)
            row = self._row(key)
            if row is None:
                value, deadline = delta, self._deadline(None)
            else:
                value = checked_counter(key, self._decode_or_miss(key, row[0])) + delta
                deadline = row[1]
            self._write(key, self._encode_count(key, value), deadline)
        finally:
            next(flight, None)
        return value

    def close(self) -> None:
        self.closed += 1


# -- mutants: each breaks one promise -------------------------------------------------------------


class GetReturnsExpired(VaultCache):
    def _row(self, key: str) -> tuple[bytes, float | None] | None:
        return self.vault.rows.get(self.key_prefix + key)

    def has(self, key: str) -> bool:
        return super().has(key) and not self._expired(self.vault.rows[self.key_prefix + key][1])


class HasTrueForExpired(VaultCache):
    def has(self, key: str) -> bool:
        check_key(key)
        return not self._failed("has") and self.key_prefix + key in self.vault.rows


class TimeoutZeroExpires(VaultCache):
    def _deadline(self, timeout: Timeout) -> float | None:
        seconds = normalize_timeout(timeout, self.default_timeout)
        return self.vault.ticker() + (seconds or self.default_timeout)


class NegativeTimeoutStores(VaultCache):
    def _deadline(self, timeout: Timeout) -> float | None:
        seconds = normalize_timeout(timeout, self.default_timeout)
        return None if seconds <= 0 else self.vault.ticker() + seconds


class RoundsFloatTimeoutsUp(VaultCache):
    """cachelib's way: a fractional timeout rounded up to whole seconds."""

    def _deadline(self, timeout: Timeout) -> float | None:
        seconds = normalize_timeout(timeout, self.default_timeout)
        return None if seconds == 0 else self.vault.ticker() + -(-seconds // 1)


class AddOverwrites(VaultCache):
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return self.set(key, value, timeout)


class AddRefusesOverExpired(VaultCache):
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if self.key_prefix + key in self.vault.rows:
            return False
        return super().add(key, value, timeout)


class AddAcceptsBadTimeout(VaultCache):
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        try:
            normalize_timeout(timeout, self.default_timeout)
        except TypeError:
            timeout = None
        return super().add(key, value, timeout)


class DeleteMissingAnswersTrue(VaultCache):
    def delete(self, key: str) -> bool:
        super().delete(key)
        return not self._failed("delete")


class DeleteExpiredAnswersTrue(VaultCache):
    """cachelib's SimpleCache: True for an expired entry it has not pruned yet."""

    def delete(self, key: str) -> bool:
        check_key(key)
        if self._failed("delete"):
            return False
        existed = self.vault.rows.pop(self.key_prefix + key, None) is not None
        self._deletes += existed
        return existed


class ClearAnswersFalse(VaultCache):
    def clear(self) -> bool:
        super().clear()
        return False


class ClearLeavesKeys(VaultCache):
    def clear(self) -> bool:
        return not self.vault.unreachable


class ClearFalseWhenNothingToClear(VaultCache):
    """cachelib's RedisCache: False when no key has the prefix."""

    def clear(self) -> bool:
        had = any(name.startswith(self.key_prefix) for name in self.vault.rows)
        return super().clear() and had


class IncStartsAtOnePlusDelta(VaultCache):
    def inc(self, key: str, delta: int = 1) -> int | None:
        if not self.has(key):
            self.set(key, 1)
        return super().inc(key, delta)


class IncReturnsStr(VaultCache):
    def inc(self, key: str, delta: int = 1) -> Any:
        value = super().inc(key, delta)
        return None if value is None else str(value)


class IncReturnsFloat(VaultCache):
    def inc(self, key: str, delta: int = 1) -> Any:
        value = super().inc(key, delta)
        return None if value is None else float(value)


class IncStoresFloat(VaultCache):
    def _encode(self, value: Any, key: str, prefix: str | None = None) -> bytes:
        if type(value) is int:
            value = float(value)
        return super()._encode(value, key, prefix)


class DecAdds(VaultCache):
    def dec(self, key: str, delta: int = 1) -> int | None:
        return self.inc(key, delta)


class IncAddsToFloats(VaultCache):
    def inc(self, key: str, delta: int = 1) -> int | None:
        row = self._row(key)
        current = None if row is None else self._decode_or_miss(key, row[0])
        if type(current) is float:
            self.set(key, current + delta)
            return current + delta  # type: ignore[return-value]
        return super().inc(key, delta)


class IncCountsStoredNoneFromZero(VaultCache):
    """cachelib's way: ``get(key) or 0``."""

    def inc(self, key: str, delta: int = 1) -> int | None:
        row = self._row(key)
        if row is not None and self._decode_or_miss(key, row[0]) is None:
            self.vault.rows.pop(self.key_prefix + key)
        return super().inc(key, delta)


class StoredNoneIsMissing(VaultCache):
    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if value is None:
            check_key(key)
            normalize_timeout(timeout, self.default_timeout)
            self.vault.rows.pop(self.key_prefix + key, None)
            return True
        return super().set(key, value, timeout)


class GetManySorted(VaultCache):
    def get_many(self, *keys: str) -> list[Any]:
        return [self.get(key) for key in sorted(set(keys))]


class GetManyDropsMisses(VaultCache):
    def get_many(self, *keys: str) -> list[Any]:
        return [value for value in super().get_many(*keys) if value is not None]


class GetDictDropsMisses(VaultCache):
    def get_dict(self, *keys: str) -> dict[str, Any]:
        return {k: v for k, v in super().get_dict(*keys).items() if v is not None}


class SetManyAnswersNothing(VaultCache):
    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        super().set_many(mapping, timeout)
        return []


class SetManyAnswersKeysDuringOutage(VaultCache):
    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        super().set_many(mapping, timeout)
        return list(mapping)


class SetManyStoresUntilABadValue(VaultCache):
    """set_many as one set after another: a bad value stops it half-way."""

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        return [key for key, value in mapping.items() if self.set(key, value, timeout)]


class DeleteManyAnswersEveryKey(VaultCache):
    def delete_many(self, *keys: str) -> list[str]:
        super().delete_many(*keys)
        return list(keys)


class KeepsTheObject(VaultCache):
    """Stores the object itself: a mutation after set (or of what get returned) shows."""

    objects: ClassVar[dict[bytes, Any]] = {}

    def _encode(self, value: Any, key: str, prefix: str | None = None) -> bytes:
        payload = super()._encode(value, key, prefix)
        self.objects[payload] = value
        return payload

    def _decode_or_miss(self, key: str, payload: bytes | memoryview, prefix: Any = None) -> Any:
        if bytes(payload) in self.objects:
            return self.objects[bytes(payload)]
        return super()._decode_or_miss(key, payload, prefix)


class IgnoresKeyPrefix(VaultCache):
    def __init__(self, vault: Vault, *args: Any, key_prefix: str = "", **kw: Any) -> None:
        super().__init__(vault, *args, **kw)


class CountsNoHits(VaultCache):
    def get(self, key: str) -> Any:
        hits = self._hits
        value = super().get(key)
        self._hits = hits
        return value


class CountsNoErrors(VaultCache):
    def _backend_error(self, operation: str, err: Exception) -> None:
        errors = self._errors
        super()._backend_error(operation, err)
        self._errors = errors


class AcceptsNonStrKeysInHas(VaultCache):
    def has(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return super().has(key)


class AcceptsNonStrKeysInAdd(VaultCache):
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return super().add(str(key), value, timeout)


class AcceptsNonStrKeysInInc(VaultCache):
    def inc(self, key: str, delta: int = 1) -> int | None:
        return super().inc(str(key), delta)


class AcceptsNonStrKeysInGetMany(VaultCache):
    def get_many(self, *keys: str) -> list[Any]:
        return [self.get(key) if isinstance(key, str) else None for key in keys]


class AcceptsBadTimeouts(VaultCache):
    def _deadline(self, timeout: Timeout) -> float | None:
        if not isinstance(timeout, (int, float, timedelta)) or isinstance(timeout, bool):
            timeout = None
        return super()._deadline(timeout)


class IgnoresSerializerReassignment(VaultCache):
    def __init__(self, vault: Vault, *args: Any, **kw: Any) -> None:
        super().__init__(vault, *args, **kw)
        self._first_serializer = self.serializer

    def _encode(self, value: Any, key: str, prefix: str | None = None) -> bytes:
        current, self.serializer = self.serializer, self._first_serializer
        try:
            return super()._encode(value, key, prefix)
        finally:
            self.serializer = current

    def _decode_or_miss(self, key: str, payload: bytes | memoryview, prefix: Any = None) -> Any:
        current, self.serializer = self.serializer, self._first_serializer
        try:
            return super()._decode_or_miss(key, payload, prefix)
        finally:
            self.serializer = current


class GetOrSetWithoutSingleFlight(VaultCache):
    def get_or_set(self, key: str, factory: Callable[[], Any], timeout: Timeout = None) -> Any:
        value = self.get(key)
        if value is None:
            value = factory()
            self.set(key, value, timeout)
        return value


class MemoizeIgnoresKeywords(VaultCache):
    """Keys memoized calls on their positional arguments only."""

    def memoize(
        self, timeout: Timeout = None, *, key_prefix: str | None = None
    ) -> Callable[[Callable[..., Any]], Any]:
        def decorate(func: Callable[..., Any]) -> Any:
            def key(*args: Any, **kwargs: Any) -> str:
                return f"memo:{func.__qualname__}:{args!r}"

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.get_or_set(key(*args), lambda: func(*args, **kwargs), timeout)

            wrapper.invalidate = lambda *a, **kw: self.delete(key(*a))  # type: ignore[attr-defined]
            return wrapper

        return decorate


class CloseNotIdempotent(VaultCache):
    def close(self) -> None:
        super().close()
        if self.closed > 1:
            raise RuntimeError("already closed")


class ExitDoesNotClose(VaultCache):
    def __exit__(self, *exc_info: Any) -> None:
        pass


class CountsAHitBeforeDecoding(VaultCache):
    """Counts a hit for every row found: a stored None or an unreadable entry is a 'hit'."""

    def get(self, key: str) -> Any:
        misses = self._misses
        value = super().get(key)
        if self._misses > misses and self.has(key):
            self._misses, self._hits = self._misses - 1, self._hits + 1
        return value


class IncContinuesAnExpiredCounter(VaultCache):
    """inc reads the row whatever its expiry (an SQL SELECT that forgot the expiry test)."""

    reading_expired = False

    def inc(self, key: str, delta: int = 1) -> int | None:
        self.reading_expired = True
        try:
            return super().inc(key, delta)
        finally:
            self.reading_expired = False

    def _row(self, key: str) -> tuple[bytes, float | None] | None:
        if self.reading_expired:
            return self.vault.rows.get(self._name(key))
        return super()._row(key)


class IncOverflowIsASerializationError(VaultCache):
    """Encodes counts with _encode: a count json or msgpack cannot hold is a SerializationError."""

    def _encode_count(self, key: str, value: int) -> bytes:
        return self._encode(value, key)


class AddWithANegativeTimeoutStoresForever(VaultCache):
    """add drops a negative timeout (as SET NX with no expiry would): the entry never expires."""

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if normalize_timeout(timeout, self.default_timeout) < 0:
            timeout = 0
        return super().add(key, value, timeout)


@contextlib.contextmanager
def _unsigned(cache: BaseCache) -> Iterator[None]:
    """Inside, ``cache`` encodes as if it had no secret."""
    signer, cache._signer = cache._signer, None
    try:
        yield
    finally:
        cache._signer = signer


class AddStoresUnsigned(VaultCache):
    """add stores its payload unsigned: a cache with a secret reads it back as a miss."""

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        with _unsigned(self):
            return super().add(key, value, timeout)


class SetManyStoresUnsigned(VaultCache):
    """set_many stores its payload unsigned: a cache with a secret reads it back as a miss."""

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        with _unsigned(self):
            return super().set_many(mapping, timeout)


class IncStoresUnsigned(VaultCache):
    """inc stores its payload unsigned: a cache with a secret reads it back as a miss."""

    def inc(self, key: str, delta: int = 1) -> int | None:
        with _unsigned(self):
            return super().inc(key, delta)


class KeysIgnoreCase(VaultCache):
    """Names rows case-insensitively, as an SQL key column with COLLATE NOCASE does."""

    def _name(self, key: str) -> str:
        return super()._name(key).casefold()


class ClearMatchesItsPrefixAsAGlob(VaultCache):
    """Clears names matching the glob ``key_prefix*`` (Redis MATCH or SQLite GLOB, unescaped)."""

    def _cleared(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.key_prefix + "*")


class ClearMatchesItsPrefixAsALikePattern(VaultCache):
    """Clears names ``LIKE key_prefix || '%'`` unescaped: ``_`` and ``%`` match any, and
    SQLite's LIKE ignores ASCII case."""

    def _cleared(self, name: str) -> bool:
        wildcards = {"%": ".*", "_": "."}
        pattern = "".join(wildcards.get(c) or re.escape(c) for c in self.key_prefix) + ".*"
        return re.fullmatch(pattern, name, re.IGNORECASE | re.DOTALL) is not None


#: each mutant the contract suite misses -> what slips through
MISSED: dict[str, str] = {}  # every mutant fails the contract

MUTANTS: list[type[VaultCache]] = [
    cls
    for cls in list(vars().values())
    if isinstance(cls, type) and issubclass(cls, VaultCache) and cls is not VaultCache
]


# -- one contract run over every backend ---------------------------------------------------------

CONTRACT_MODULE = """
import pytest
from cacheplug.testing import CacheContract
import test_kit_mutants as kit


class Vaulted(CacheContract):
    backend = kit.VaultCache
    shared_store = True

    @pytest.fixture
    def vault(self):
        return kit.Vault()

    @pytest.fixture
    def cache_factory(self, vault):
        def make(**kwargs):
            kwargs.setdefault("serializer", "{serializer}")
            return self.backend(vault, **kwargs)

        yield make

    @pytest.fixture
    def advance(self, vault):
        return vault.ticker.advance

    @pytest.fixture
    def outage(self, vault):
        return vault.outage

    @pytest.fixture
    def write_outage(self, vault):
        return vault.refusing_writes
"""


class Outcomes:
    """Pytest plugin: per test class of the contract run, the tests that failed or errored."""

    def __init__(self) -> None:
        self.failed: dict[str, set[str]] = {}
        self.passed: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        cls, _, test = report.nodeid.split("::", 1)[1].partition("::")
        if report.failed:
            self.failed.setdefault(cls, set()).add(test)
        elif report.when == "call" and report.passed:
            self.passed[cls] = self.passed.get(cls, 0) + 1
        elif report.skipped:
            self.skipped[cls] = self.skipped.get(cls, 0) + 1


def _run_contract(folder: Path, serializer: str, backends: list[type[VaultCache]]) -> Outcomes:
    module = CONTRACT_MODULE.replace("{serializer}", serializer) + "".join(
        f"\n\nclass Test{cls.__name__}(Vaulted):\n    backend = kit.{cls.__name__}\n"
        for cls in backends
    )
    path = folder / f"test_contract_{serializer}.py"
    path.write_text(module)
    (folder / "pytest.ini").write_text("[pytest]\n")
    outcomes = Outcomes()
    pytest.main(
        [str(path), "-q", "-p", "no:cacheprovider", "--rootdir", str(folder), "-W", "ignore"],
        plugins=[outcomes],
    )
    return outcomes


@pytest.fixture(scope="module")
def pickle_run(tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    return _run_contract(tmp_path_factory.mktemp("pickle"), "pickle", [VaultCache, *MUTANTS])


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_the_correct_backend_passes_the_whole_contract(
    serializer: str, pickle_run: Outcomes, tmp_path: Path
) -> None:
    outcomes = (
        pickle_run if serializer == "pickle" else _run_contract(tmp_path, serializer, [VaultCache])
    )
    assert outcomes.failed.get("TestVaultCache", set()) == set()
    assert outcomes.skipped.get("TestVaultCache", 0) == 0
    assert outcomes.passed["TestVaultCache"] > 60


def _mutant_params() -> Iterator[Any]:
    for cls in MUTANTS:
        missed = MISSED.get(cls.__name__)
        marks = [pytest.mark.xfail(strict=True, reason=missed)] if missed else []
        yield pytest.param(cls, id=cls.__name__, marks=marks)


@pytest.mark.parametrize("mutant", list(_mutant_params()))
def test_the_contract_catches_the_mutant(mutant: type[VaultCache], pickle_run: Outcomes) -> None:
    assert f"Test{mutant.__name__}" in pickle_run.passed, "the mutant's tests did not run"
    failed = pickle_run.failed.get(f"Test{mutant.__name__}", set())
    assert failed, f"{mutant.__name__} passed the whole contract: {mutant.__doc__ or ''}"
