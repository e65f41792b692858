"""``FileSystemCache``: one file per key in a directory shared by threads and processes.

Scheme ``file`` (``file:///var/cache/myapp?threshold=10000``).

This module holds the backend class (its options, the contract, reading and writing entries)
and its plugin hook; next to it, ``_filesystem_options`` checks the options and the URL,
``_filesystem_dirs`` prepares the directory, ``_filesystem_files`` holds the entry format and the
system calls on files, ``_filesystem_locks`` the threads' turns and the ``flock`` waits,
``_filesystem_lockfile`` a prefix's lock file (held, and repaired), ``_filesystem_tally`` the
entry count kept in it, and ``_filesystem_listing`` what lists the directory (counting, pruning,
``clear``).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

from cacheplug.backends._filesystem_dirs import prepared_dir
from cacheplug.backends._filesystem_files import (
    DISK_FULL,
    ENTRY_FAULTS,
    HEADER,
    MAGIC,
    NEVER,
    OUT_OF_RESOURCES,
    READ_FLAGS,
    TEMP_TOKEN_BYTES,
    Entry,
    discard,
    open_fd,
    read_rest,
    replace_entry,
    sync_directory,
    write_temp,
)
from cacheplug.backends._filesystem_listing import (
    drop_dead_entries,
    entry_names,
    prune,
    unlink_own_files,
)
from cacheplug.backends._filesystem_lockfile import locked
from cacheplug.backends._filesystem_locks import holding
from cacheplug.backends._filesystem_options import (
    HashMethod,
    checked_mode,
    checked_threshold,
    options_from_url,
    resolved_hash,
)
from cacheplug.backends._filesystem_tally import keep_tally, read_tally, write_tally
from cacheplug.core._entering import entering
from cacheplug.core.arguments import check_delta, check_key, check_mapping, checked_counter
from cacheplug.core.base import BaseCache
from cacheplug.core.errors import ConfigurationError, SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.options import check_bool, check_seconds
from cacheplug.core.timeouts import Timeout, normalize_timeout

if TYPE_CHECKING:
    from cacheplug.core.cache_url import CacheURL
    from cacheplug.core.hookspecs import RegisterFn
    from cacheplug.core.serializer import SerializerLike

__all__ = ["FileSystemCache"]

_NS_HEX = 16  # hex digits of the key_prefix tag in file names
# options that were plain attributes, found so in older pickles
_NOW_PROPERTIES = frozenset({"cache_dir", "mode", "hash_method", "fsync"})


class _Namespace(NamedTuple):
    """Where the entries and the lock file of one ``key_prefix`` live."""

    prefix: str
    head: str  # entry names start with it
    lock_path: str
    path_head: str  # entry paths start with it: the directory joined with ``head``


class FileSystemCache(BaseCache):
    """A cache keeping one file per key in ``cache_dir``, a drop-in for cachelib's.

    Writes go to a temp file in the same directory, then ``os.replace`` it over the entry, so a
    reader or a crash never sees half a value. Several threads and processes may share the
    directory: every rename and unlink, and all of ``inc``, ``dec`` and ``add``, happen under an
    ``flock`` on the prefix's lock file (``.cacheplug-<prefix tag>.lock``); reads take no lock.
    A writer waits at most ``lock_timeout`` for a lock another holds (a process stopped or
    hung inside its write), then answers as in an outage (``False``, ``None``), logged. So does
    a call that cannot read an entry for want of descriptors or memory, or on an I/O error: that
    is the file system failing, and never reads as a missing entry to replace or prune. Only
    an entry failing so while others read fine is one file's fault: pruning passes over it, and
    drops such entries first when it must drop some, so one bad file blocks no write.
    A lock file this process may not write (another user's, say root's) is replaced, once its
    holder is done when it can be read. File names are ``cp-<prefix tag>-<key hash>``:
    ``clear`` removes only such files (with a ``key_prefix``, only that prefix's) and its own
    lock file, never anything else.

    At most ``threshold`` entries per ``key_prefix``: a full cache drops expired entries, then the
    least recently written ones, until a tenth of ``threshold`` is free. The entry count lives in
    the prefix's lock file, kept under its ``flock`` by every writer, and a directory listing
    corrects it once per an eighth of the directory's files plus 64 new entries and whenever
    it says full, so ``set`` never reads the whole directory. Caches sharing a directory and a
    prefix should share ``threshold``.

    A cache pickles (for a ``spawn`` child, say) as its options and directory: the copy shares
    the entries, with locks and ``stats`` of its own.

    :param cache_dir: the directory, created with its parents when missing.
    :param threshold: the most entries this cache keeps; 0 = no limit.
    :param default_timeout: seconds an entry lives when ``set`` gets no timeout; 0 = forever.
    :param mode: permission bits of the entry files, at most ``0o777``; default ``0o600``.
    :param hash_method: turns keys into file names: a ``hashlib`` constructor or its name.
    :param ignore_delete_many_errors: accepted for cachelib compatibility; ``delete_many``
        never raises.
    :param fsync: flush every write, and the directory after its rename, to disk (slower;
        survives power loss).
    :param lock_timeout: seconds (default 5) a write waits for the lock, or a repair of it,
        that another thread or process holds; ``None`` waits as long as it is held.
    :param clock: wall-clock seconds for expiry; tests inject a fake one.
    :raises ConfigurationError: ``cache_dir`` is not a directory or not writable, or an option is
        out of range.
    """

    # pickled, a cache leaves these behind: lock files, listing hints and the hash are remade
    _process_local: ClassVar[frozenset[str]] = BaseCache._process_local | {
        "_lock_fds",
        "_lock_fds_guard",
        "_lock_fds_guarded",
        "_listed",
        "_full_disk_until",
        "_namespace",
        "_hash",
    }

    _namespace: _Namespace | None  # derived from the options on first use
    #: whether this cache wrote new entries without a threshold, so without counting them
    _uncounted = False

    url_options: ClassVar[Mapping[str, type]] = {
        "threshold": int,
        "mode": str,
        "hash_method": str,
        "fsync": bool,
        "lock_timeout": float,
    }

    def __init__(  # noqa: PLR0917 (cachelib's positional order)
        self,
        cache_dir: str | os.PathLike[str],
        threshold: int = 500,
        default_timeout: float = 300,
        mode: int | None = None,
        hash_method: HashMethod | str = hashlib.sha256,
        ignore_delete_many_errors: bool = True,
        *,
        key_prefix: str = "",
        serializer: str | SerializerLike | None = None,
        secret: str | bytes | None = None,
        fsync: bool = False,
        lock_timeout: float | None = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if sys.platform == "win32":
            raise ConfigurationError("FileSystemCache needs POSIX file locks (Linux, macOS, BSD)")
        # descriptors of lock files held or being locked by this process's threads: the ident
        # of the thread each belongs to
        self._lock_fds: dict[int, int] = {}
        self._lock_fds_guard = threading.Lock()
        self._lock_fds_guarded = entering(self._lock_fds_guard)
        self._listed = 0  # files in the directory at this cache's last listing
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self.threshold = threshold
        self.mode = mode
        self.hash_method = hash_method
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self.ignore_delete_many_errors = ignore_delete_many_errors
        self._clock = clock
        self.cache_dir = cache_dir

    @property
    def cache_dir(self) -> str:
        """The directory of the entries, absolute; reassigned, it is prepared as the constructor
        prepares it, and the cache moves there in full (the entries it leaves stay)."""
        return self._cache_dir

    @cache_dir.setter
    def cache_dir(self, cache_dir: str | os.PathLike[str]) -> None:
        path, created_mode, self._dir_mode = prepared_dir(cache_dir, self._mode)
        # A umask takes group and other bits as a rule and may change at any time, so such modes
        # get an fchmod on every write. No sane umask takes the owner's bits: an owner-only mode
        # that the probe file got exactly (no ACL or odd umask in the way) needs no fchmod.
        self._mode_as_created = created_mode if self._mode & ~0o700 == 0 else -1
        self._cache_dir = path
        self._namespace = None
        self._listed = 0
        self._full_disk_until = 0.0  # no listing for room on a full disk before this

    @property
    def hash_method(self) -> HashMethod | str:
        """Turns keys into file names; reassigned, it is checked as the constructor checks it,
        and the cache moves to the names it gives: entries named by the old one are another
        cache's to it, as another ``key_prefix``'s are to a cache with one."""
        return self._hash_method

    @hash_method.setter
    def hash_method(self, method: HashMethod | str) -> None:
        hashed = resolved_hash(method)
        hex_len = len(hashed(b"").hexdigest())
        entry = rf"cp-[0-9a-f]{{{_NS_HEX}}}-[0-9a-f]{{{hex_len}}}"
        self._entry_name = re.compile(entry)
        self._temp_name = re.compile(rf"{entry}\.[0-9a-f]{{{2 * TEMP_TOKEN_BYTES}}}\.tmp")
        self._hash = hashed
        self._hash_method = method
        self._namespace = None

    @property
    def fsync(self) -> bool:
        """Whether every write is flushed to disk; reassigned, it must be a bool."""
        return self._fsync

    @fsync.setter
    def fsync(self, fsync: bool) -> None:
        self._fsync = check_bool("fsync", fsync)

    @property
    def threshold(self) -> int:
        """The most entries per ``key_prefix``, 0 = no limit; reassigned, it is checked as the
        constructor checks it, and the next write of a new key beyond it prunes below it."""
        return self._threshold

    @threshold.setter
    def threshold(self, threshold: int) -> None:
        checked = checked_threshold(threshold)
        if checked and not getattr(self, "_threshold", checked):
            self._uncounted = True  # no limit until now: its new entries went uncounted
        self._threshold = checked

    @property
    def mode(self) -> int:
        """Permission bits of the entry and lock files; reassigned, it is checked as the
        constructor checks it, and files written afterwards get it (the directory keeps its own).
        """
        return self._mode

    @mode.setter
    def mode(self, mode: int | None) -> None:
        self._mode = checked_mode(mode)

    @property
    def lock_timeout(self) -> float | None:
        """Seconds a write waits for a lock another writer holds before it fails as an outage;
        ``None`` waits as long as the holder holds it."""
        return self._lock_timeout

    @lock_timeout.setter
    def lock_timeout(self, seconds: float | None) -> None:
        if seconds is not None:
            holds = "to wait as long as another writer holds it"
            seconds = check_seconds("lock_timeout", seconds, above=True, none=holds)
        self._lock_timeout = seconds

    def _lock_deadline(self) -> float | None:
        """When a wait for a lock that starts now gives up, on ``time.monotonic``'s clock."""
        seconds = self._lock_timeout
        return None if seconds is None else time.monotonic() + seconds

    @property
    def key_prefix(self) -> str:
        """Prepended to every key; reassigned, the cache moves to that prefix's files and lock."""
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"key_prefix must be str, got {type(prefix).__name__}")
        self._key_prefix = prefix
        self._namespace = None  # derived on first use: needs the hash

    def _names(self) -> _Namespace:
        names = self._namespace
        if names is None:
            prefix = self._key_prefix
            tag = self._hash(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:_NS_HEX]
            lock = os.path.join(self.cache_dir, f".cacheplug-{tag}.lock")
            head = f"cp-{tag}-"
            names = _Namespace(prefix, head, lock, os.path.join(self.cache_dir, head))
            self._namespace = names
        return names

    @property
    def _ns_head(self) -> str:
        return self._names().head

    @property
    def _lock_path(self) -> str:
        return self._names().lock_path

    @property
    def _own_head(self) -> str:
        """Start of the names ``clear`` removes: every prefix's entries when there is none."""
        names = self._names()
        return names.head if names.prefix else "cp-"

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> Self:
        """``file:///absolute/dir?threshold=…&mode=…&hash_method=…&fsync=…&lock_timeout=…``;
        a ``cache_dir`` keyword wins over the URL's directory (which may then be left out).

        :raises ConfigurationError: a host, credentials or a relative path in the URL, or a
            ``mode`` that is not octal text.
        """
        options = options_from_url(url, options)
        return cls(**options) if "cache_dir" in options else cls(url.path, **options)

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        check_key(key)
        try:
            entry = self._read(self._path(key), header_only=False)
        except OSError as err:
            self._backend_error("get", err)
            return None
        value = None
        if entry is not None and not self._expired(entry[0]):
            value = self._decode_or_miss(key, entry[1])
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(
        self, key: str, value: Any, timeout: Timeout = None, mgmt_element: bool = False
    ) -> bool:
        """Store ``value``; with cachelib's ``mgmt_element`` (its bookkeeping entries), without
        expiry whatever ``timeout`` says, as cachelib stores them."""
        return self._write("set", *self._prepare(key, value, 0 if mgmt_element else timeout))

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        check_mapping(mapping)
        normalize_timeout(timeout, self._default_timeout)  # a bad one raises, also with no items
        # every value is encoded before any file is written, so a bad one stores nothing
        prepared = [(key, self._prepare(key, value, timeout)) for key, value in mapping.items()]
        return [key for key, entry in prepared if self._write("set_many", *entry)]

    def _write(self, operation: str, path: str, expires: float | None, payload: bytes) -> bool:
        """Store (or, born expired, remove) one entry; False on a file-system error."""
        try:
            if expires is None:
                holding(locked(self), self._remove, path)
                self._sets += 1  # born expired: a write, as on every backend
            else:
                self._store(path, expires, payload)
        except OSError as err:
            self._backend_error(operation, err)
            return False
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        path, expires, payload = self._prepare(key, value, timeout)
        try:
            return holding(locked(self), self._add_locked, path, expires, payload)
        except OSError as err:
            self._backend_error("add", err)
            return False

    def _add_locked(self, lock: int, path: str, expires: float | None, payload: bytes) -> bool:
        if self._is_live(path):
            return False
        if expires is not None:
            self._store(path, expires, payload, lock)
        else:
            self._sets += 1  # born expired: a write, as on every backend
        return True

    def delete(self, key: str, mgmt_element: bool = False) -> bool:
        """Whether ``key`` existed and was deleted; cachelib's ``mgmt_element`` changes nothing."""
        check_key(key)
        path = self._path(key)
        try:
            deleted = holding(locked(self), self._delete_locked, path)
        except OSError as err:
            self._backend_error("delete", err)
            return False
        self._deletes += deleted  # an expired entry's file goes too, but it no longer existed
        return deleted

    def _delete_locked(self, lock: int, path: str) -> bool:
        try:
            live = self._is_live(path)
        except OSError as err:
            if err.errno in OUT_OF_RESOURCES:  # this process's want: retried, it may read
                raise
            # The file fails reads (a bad sector), and would until replaced: removing it needs
            # no read. Whether it was live is unknown, so the answer is the damaged entry's.
            self._unreadable(path, f"{err.strerror or err} while deleting")
            live = False
        return self._remove(lock, path) and live

    def has(self, key: str) -> bool:
        check_key(key)
        try:
            return self._is_live(self._path(key))
        except OSError as err:
            self._backend_error("has", err)
            return False

    def clear(self) -> bool:
        try:
            return holding(locked(self), self._clear_locked)
        except OSError as err:
            self._backend_error("clear", err)
            return False

    def _clear_locked(self, lock: int) -> bool:
        ok = unlink_own_files(self)
        # Unlinked by its holder, the lock file breaks no lock (waiters on it retry, see
        # _filesystem_lockfile), and a prefix used once (`cacheplug check`) leaves nothing behind.
        try:
            os.unlink(self._lock_path)
        except OSError:
            write_tally(lock, -1, 0)
        return ok

    def inc(self, key: str, delta: int = 1) -> int | None:
        check_key(key)
        check_delta(delta)
        path = self._path(key)
        try:
            return holding(locked(self), self._inc_locked, key, path, delta)
        except OSError as err:
            self._backend_error("inc", err)
            return None

    def _inc_locked(self, lock: int, key: str, path: str, delta: int) -> int:
        entry = self._read(path, header_only=False)
        if entry is None or self._expired(entry[0]):
            value = delta
            expires = self._expiry(None)
        else:
            expires = entry[0]
            try:
                current = self._decode(entry[1], key)
            except SerializationError as err:
                raise TypeError(
                    f"cannot increment {key!r}: its stored value is unreadable"
                ) from err
            value = checked_counter(key, current) + delta
        payload = self._encode_count(key, value)  # raises before the entry is touched
        if expires is None:  # a default_timeout reassigned below 0: born expired, as in set
            self._remove(lock, path)
            self._sets += 1
        else:
            self._store(path, expires, payload, lock)
        return value

    def __repr__(self) -> str:
        return (
            f"{super().__repr__()[:-1]}, cache_dir={self.cache_dir!r}, threshold={self.threshold}, "
            f"lock_timeout={self._lock_timeout!r})"
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock_fds = {}  # the base then makes the lock that guards them, as after a fork
        # pickled before these options became properties
        state = {f"_{k}" if k in _NOW_PROPERTIES else k: v for k, v in state.items()}
        super().__setstate__(state)
        self._listed = 0
        self._full_disk_until = 0.0
        self._namespace = None
        # a hash_method name resolves to a partial of hashlib.new, which pickle refuses
        self._hash = resolved_hash(self.hash_method)

    # -- files ------------------------------------------------------------------------------------

    def _prepare(self, key: str, value: Any, timeout: Timeout) -> tuple[str, float | None, bytes]:
        """Entry path, absolute expiry and encoded payload, checked before any file is touched."""
        check_key(key)
        expires = self._expiry(timeout)
        return self._path(key), expires, self._encode(value, key)

    def _path(self, key: str) -> str:
        names = self._names()
        digest: str = self._hash((names.prefix + key).encode("utf-8", "surrogatepass")).hexdigest()
        return names.path_head + digest  # os.path.join of the directory and the name, once

    def _expiry(self, timeout: Timeout) -> float | None:
        """Absolute expiry for ``timeout``; ``None`` when the entry is born expired."""
        seconds = normalize_timeout(timeout, self._default_timeout)
        if seconds > 0:
            return self._clock() + seconds
        return NEVER if seconds == 0 else None

    def _expired(self, expires: float) -> bool:
        return expires != NEVER and expires <= self._clock()

    def _read(self, path: str, *, header_only: bool) -> Entry | None:
        """``(expiry, payload, mtime)`` of the entry at ``path``; ``None`` if missing or unreadable.

        With ``header_only`` the payload is left unread (and empty).

        :raises OSError: the file system failed, not this file (no descriptor or memory left,
            an I/O error): an outage, never to be taken for a missing entry.
        """
        try:
            fd = open_fd(path, READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno not in ENTRY_FAULTS:
                raise
            self._unreadable(path, err.strerror or str(err))
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._unreadable(path, "not a regular file")
                return None
            size = info.st_size
            if header_only:
                data = os.read(fd, HEADER.size)
            else:
                data = os.read(fd, size + 1)
                if len(data) != size:
                    data = read_rest(fd, data, size)
        except OSError as err:
            if err.errno not in ENTRY_FAULTS:
                raise
            self._unreadable(path, err.strerror or str(err))
            return None
        finally:
            os.close(fd)
        if len(data) < HEADER.size or data[:4] != MAGIC:
            self._unreadable(path, "not a cacheplug entry (truncated or foreign)")
            return None
        # a view, not a slice: a large value is then held once, not twice, until decoded
        return HEADER.unpack_from(data)[1], memoryview(data)[HEADER.size :], info.st_mtime

    def _unreadable(self, path: str, reason: str) -> None:
        self._count_unreadable()
        self._log("unreadable", "unreadable cache file %r read as a miss: %s", path, reason)

    def _is_live(self, path: str) -> bool:
        entry = self._read(path, header_only=True)
        return entry is not None and not self._expired(entry[0])

    def _store(self, path: str, expires: float, payload: bytes, lock: int | None = None) -> None:
        """Write an entry atomically, within ``threshold``; ``lock``: the held lock file, if any.

        :raises OSError: the file system refused.
        """
        data = HEADER.pack(MAGIC, expires) + payload
        if lock is not None:
            self._commit_new(lock, path, data)
            return
        try:
            tmp = write_temp(path, data, self._mode, self._mode_as_created, self._fsync)
        except OSError as err:
            # the directory is gone (taking the lock brings it back), or the disk is full
            if not isinstance(err, FileNotFoundError) and err.errno not in DISK_FULL:
                raise
            holding(locked(self), self._commit_new, path, data)
            return
        try:
            holding(locked(self), self._commit, tmp, path)
        except BaseException:
            discard(tmp)  # the lock could not be taken
            raise

    def _commit_new(self, lock: int, path: str, data: bytes) -> None:
        """Write ``data`` to a temp file and move it over ``path``, making room first."""
        self._commit(lock, self._write_temp_making_room(lock, path, data), path)

    def _commit(self, lock: int, tmp: str, path: str) -> None:
        """Move ``tmp`` over ``path``, making room first for a new entry; ``tmp`` never stays."""
        try:
            if not self._threshold or os.path.lexists(path):
                replace_entry(tmp, path)
            else:
                count, added = read_tally(lock)
                # The tally drifts when a writer dies or files vanish: a listing repairs it. It
                # reads the whole directory, other prefixes' files too: once per an eighth of that.
                listed = max(count, self._listed)
                if (
                    count < 0
                    or count >= self._threshold
                    or added > listed // 8 + 64
                    or self._uncounted
                ):
                    names = entry_names(self)
                    count, added = len(names), 0
                    if count >= self._threshold:
                        count = prune(self, names)
                    self._uncounted = False
                # Counted before the rename: a writer killed in between leaves the count one
                # above the files (the next listing sooner), never below (the directory
                # beyond threshold).
                keep_tally(lock, count + 1, added + 1)
                try:
                    replace_entry(tmp, path)
                except BaseException:
                    if os.path.lexists(tmp):  # else renamed, and a signal came after it
                        keep_tally(lock, count, added)
                    raise
        except BaseException:
            discard(tmp)
            raise
        if self._fsync:  # the rename is durable only once the directory is on disk too
            sync_directory(self.cache_dir)
        self._sets += 1

    def _write_temp_making_room(self, lock: int, path: str, data: bytes) -> str:
        """``write_temp``, tried again on a full disk once this prefix's dead entries are gone."""
        try:
            return write_temp(path, data, self._mode, self._mode_as_created, self._fsync)
        except OSError as err:
            if err.errno not in DISK_FULL or not drop_dead_entries(self, lock):
                raise
        return write_temp(path, data, self._mode, self._mode_as_created, self._fsync)

    def _remove(self, lock: int, path: str) -> bool:
        """Unlink an entry; whether there was one."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            os.rmdir(path)  # planted there, uncounted: taken away when empty, as a write does
            return False
        count, added = read_tally(lock)
        if count > 0:
            keep_tally(lock, count - 1, added)  # the entry is gone whatever it says
        return True

    def _after_fork_in_child(self) -> None:
        """Close the child's copies of lock files the parent's threads hold.

        A copy keeps the ``flock`` held as long as it is open: the child would wait for itself
        forever, and the parent for the child.
        """
        super()._after_fork_in_child()
        self._lock_fds_guard = threading.Lock()
        self._lock_fds_guarded = entering(self._lock_fds_guard)
        for fd in self._lock_fds:
            with suppress(OSError):
                os.close(fd)
        self._lock_fds = {}


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("file", FileSystemCache)
