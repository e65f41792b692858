"""``SQLiteCache``: a cache in one SQLite file that every process opening it shares."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from cacheplug import BaseCache, ConfigurationError
from cacheplug.core.arguments import check_delta, check_key, checked_counter
from cacheplug.core.timeouts import Timeout, normalize_timeout

if TYPE_CHECKING:
    from cacheplug.core.serializer import SerializerLike
    from cacheplug.core.url import CacheURL

__all__ = ["SQLiteCache"]

T = TypeVar("T")

_SCHEMA = """CREATE TABLE IF NOT EXISTS cacheplug_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL  -- absolute wall-clock time; NULL: never
)"""
_LIVE = "key = ? AND (expires IS NULL OR expires > ?)"
_PURGE_EVERY = 1000  # writes between two sweeps of expired rows


class SQLiteCache(BaseCache):
    """A cache stored in an SQLite database file (or in memory, private to the instance).

    Processes opening the same file share entries; ``add`` and ``inc`` run in one write
    transaction, so they are atomic across processes too. Expiry times are wall-clock
    (``time.time``), so processes sharing a file must agree on the time.

    :param path: the database file; ``":memory:"`` keeps the entries in this instance only.
    :param busy_timeout: seconds to wait for another process's write lock before an operation
        counts as a backend error.
    :param clock: the wall-clock time source; tests inject a fake one.
    """

    url_options: ClassVar[Mapping[str, type]] = {"busy_timeout": float}

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        default_timeout: float = 300,
        serializer: str | SerializerLike | None = None,
        key_prefix: str = "",
        *,
        secret: str | bytes | None = None,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            # WAL lets readers run beside a writer; NORMAL skips an fsync per write, which
            # a cache, unlike a database of record, can afford.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise ConfigurationError(f"cannot open SQLite cache {self.path!r}: {err}") from err

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> SQLiteCache:
        """``sqlite:///absolute/path.db`` or ``sqlite://`` (in memory)."""
        if url.hosts or url.username or url.password is not None:
            raise ConfigurationError(
                f"sqlite:// takes a file path, not a host: write sqlite:///absolute/path.db "
                f"or sqlite:// for an in-memory cache, got {url.redacted()!r}"
            )
        return cls(url.path or ":memory:", **options)

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, operation: str, failed: T, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` under the lock, or ``failed`` after logging an engine error."""
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as err:
                self._backend_error(operation, err)
                return failed

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _expires(self, timeout: Timeout) -> float | None:
        """The absolute expiry for ``timeout``: ``None`` = never, in the past = already expired."""
        seconds = normalize_timeout(timeout, self.default_timeout)
        return None if seconds == 0 else self._clock() + seconds

    def _store(
        self, db: sqlite3.Connection, key: str, payload: bytes, expires: float | None
    ) -> None:
        """Write ``key``'s row, or remove it when ``expires`` has passed; one set either way."""
        if expires is not None and expires <= self._clock():
            db.execute("DELETE FROM cacheplug_entries WHERE key = ?", (key,))
        else:
            db.execute(
                "INSERT OR REPLACE INTO cacheplug_entries (key, value, expires) VALUES (?, ?, ?)",
                (key, payload, expires),
            )
        self._sets += 1
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            db.execute("DELETE FROM cacheplug_entries WHERE expires <= ?", (self._clock(),))

    # -- the contract -------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        check_key(key)
        full = self.key_prefix + key

        def work(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                f"SELECT value FROM cacheplug_entries WHERE {_LIVE}", (full, self._clock())
            ).fetchone()
            return None if row is None else bytes(row[0])

        payload = self._run("get", None, work)
        value = None if payload is None else self._decode_or_miss(key, payload)
        # a stored None and an unreadable entry read as None: misses too, as stats() says
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        expires = self._expires(timeout)
        payload = self._encode(value, key)

        def work(db: sqlite3.Connection) -> bool:
            self._store(db, self.key_prefix + key, payload, expires)
            return True

        return self._run("set", False, work)

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        expires = self._expires(timeout)
        payload = self._encode(value, key)
        full = self.key_prefix + key

        def work(db: sqlite3.Connection) -> bool:
            with self._transaction(db):
                if db.execute(
                    f"SELECT 1 FROM cacheplug_entries WHERE {_LIVE}", (full, self._clock())
                ).fetchone():
                    return False
                self._store(db, full, payload, expires)
            return True

        return self._run("add", False, work)

    def delete(self, key: str) -> bool:
        check_key(key)
        full = self.key_prefix + key

        def work(db: sqlite3.Connection) -> bool:
            with self._transaction(db):
                live = db.execute(
                    f"DELETE FROM cacheplug_entries WHERE {_LIVE}", (full, self._clock())
                )
                existed = live.rowcount > 0
                db.execute("DELETE FROM cacheplug_entries WHERE key = ?", (full,))  # expired one
            if existed:
                self._deletes += 1
            return existed

        return self._run("delete", False, work)

    def has(self, key: str) -> bool:
        check_key(key)
        full = self.key_prefix + key
        return self._run(
            "has",
            False,
            lambda db: (
                db.execute(
                    f"SELECT 1 FROM cacheplug_entries WHERE {_LIVE}", (full, self._clock())
                ).fetchone()
                is not None
            ),
        )

    def clear(self) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            if self.key_prefix:
                db.execute(
                    "DELETE FROM cacheplug_entries WHERE substr(key, 1, ?) = ?",
                    (len(self.key_prefix), self.key_prefix),
                )
            else:
                db.execute("DELETE FROM cacheplug_entries")
            return True

        return self._run("clear", False, work)

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_key(key)
        check_delta(delta)
        full = self.key_prefix + key

        def work(db: sqlite3.Connection) -> int:
            with self._transaction(db):
                row = db.execute(
                    f"SELECT value, expires FROM cacheplug_entries WHERE {_LIVE}",
                    (full, self._clock()),
                ).fetchone()
                if row is None:
                    value, expires = delta, self._expires(None)
                else:
                    current = self._decode_or_miss(key, bytes(row[0]))
                    value, expires = checked_counter(key, current) + delta, row[1]
                self._store(db, full, self._encode_count(key, value), expires)
            return value

        return self._run("inc", None, work)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, path={self.path!r})"
