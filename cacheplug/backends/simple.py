"""``SimpleCache``: the in-memory reference backend (schemes ``simple`` and ``memory``)."""

from __future__ import annotations

import heapq
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from hmac import compare_digest
from typing import TYPE_CHECKING, Any, ClassVar

from cacheplug.core._entering import entering
from cacheplug.core.arguments import check_delta, check_key, check_mapping, checked_counter
from cacheplug.core.base import BaseCache
from cacheplug.core.errors import ConfigurationError, SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import SerializerLike
from cacheplug.core.signing import SIGNED_MARK
from cacheplug.core.timeouts import LONGEST_TIMEOUT, Timeout, normalize_timeout
from cacheplug.serializers.pickle import PickleSerializer

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["SimpleCache"]

# With the default pickle serializer, values made only of these immutable types are kept as
# they are (or as a shallow copy of their container): nobody can observe the skipped pickling.
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_all_scalars = _SCALARS.issuperset
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
_NEVER = 0.0
# How an entry's payload turns back into the value.
_RAW = 0  # the value itself, immutable
_SHALLOW = 1  # a private container of immutables; readers get a copy
_NESTED = 2  # (a private dict or list, the keys of its flat containers): copied two levels deep
_SIGNED = 3  # (signature, the serializer's bytes): apart, so a read verifies without slicing
# The serializer's bytes, from here up. A read counts _SERIALIZED down to _DUE, and the read that
# finds _DUE makes the entry _NESTED if it can, else _SETTLED: looking at the value costs about
# two unpicklings, which an entry read only a few times would never win back.
_SETTLED = 4
_DUE = 5
_SERIALIZED = _DUE + 7


def _stored_form(signed: tuple[bytes, bytes]) -> bytes:
    """A ``_SIGNED`` entry's payload as an engine stores it, for the base class to decode."""
    return SIGNED_MARK + signed[0] + signed[1]


_Entry = tuple[float, int, Any]


def _scalars_only(mapping: dict[Any, Any]) -> bool:
    """Whether every key and value of ``mapping`` is of an immutable scalar type."""
    # one loop over the items: cheaper than two map(type, ...) passes on small dicts;
    # SimpleCache.set inlines it
    for key, item in mapping.items():
        if type(item) not in _SCALARS or (type(key) is not str and type(key) not in _SCALARS):
            return False
    return True


def _nested_form(value: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """``(value, keys)`` when ``value``, a dict or list freshly unpickled, holds only scalars and
    flat containers of scalars, none twice; ``keys`` name its mutable containers. Else None.

    Copying such a value two levels deep reads the same as unpickling it again, in about half
    the time; a container held twice would come back as two, so such values stay pickled.
    """
    kind = type(value)
    if kind is dict:
        items: Any = value.items()
    elif kind is list:
        items = enumerate(value)
    else:
        return None
    inner = []
    for k, item in items:
        if kind is dict and type(k) is not str and type(k) not in _SCALARS:
            return None
        t = type(item)
        if t in _SCALARS:
            continue
        if t is dict:
            if not _scalars_only(item):
                return None
        elif t is list or t is set:
            if not _all_scalars(map(type, item)):
                return None
        elif t is tuple or t is frozenset:
            if _all_scalars(map(type, item)):
                continue  # immutable: shared by every copy
            return None
        else:
            return None
        inner.append(k)
    if len(inner) > 1 and len({id(value[k]) for k in inner}) < len(inner):
        return None
    return value, tuple(inner)


def _nested_copy(form: tuple[Any, tuple[Any, ...]]) -> Any:
    """A copy of a ``_NESTED`` entry's value, none of its mutable containers shared."""
    template, inner = form
    value = template.copy()
    for k in inner:
        value[k] = value[k].copy()
    return value


class SimpleCache(BaseCache):
    """A thread-safe in-memory cache for one process.

    At most ``threshold`` entries: when a new key arrives in a full cache, expired entries go
    first, then the least recently used one. Values are stored serialized, so mutating an
    object after ``set`` does not change the cached copy. Every operation is O(1) amortized.

    :param threshold: the most entries the cache holds; 0 means the default, 500, as in
        cachelib.
    :param default_timeout: seconds an entry lives when ``set`` gets no timeout; 0 = forever.
    :param ignore_delete_many_errors: accepted for cachelib compatibility; ``delete_many``
        never raises.
    :param clock: the time source for expiry (seconds, monotonic); tests inject a fake one.
    """

    url_options: ClassVar[Mapping[str, type]] = {"threshold": int}
    # only this process writes its memory: nothing to move between keys, so the MAC spares
    # hashing the key on every signed get and set
    _signs_entries: ClassVar[bool] = False
    _process_local: ClassVar[frozenset[str]] = BaseCache._process_local | {"_lock", "_locked"}

    def __init__(
        self,
        threshold: int = 500,
        default_timeout: float = 300,
        ignore_delete_many_errors: bool = True,
        *,
        serializer: str | SerializerLike | None = None,
        key_prefix: str = "",
        secret: str | bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self._threshold = _checked_threshold(threshold)
        if type(ignore_delete_many_errors) is not bool:  # e.g. a serializer given third
            raise TypeError(
                "SimpleCache's third argument is cachelib's ignore_delete_many_errors, a bool, "
                f"got {type(ignore_delete_many_errors).__name__}; pass serializer= by keyword"
            )
        self.ignore_delete_many_errors = ignore_delete_many_errors
        self._clock = clock
        self._lock = threading.RLock()
        self._locked = entering(self._lock)  # for with statements; get and set use the lock
        # key -> (absolute expiry or _NEVER, codec, payload)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        # (expiry, key) of entries that expire; stale records are dropped lazily.
        self._expiries: list[tuple[float, str]] = []

    @property
    def threshold(self) -> int:
        """The most entries the cache holds; assigning a lower one evicts down to it at once."""
        return self._threshold

    @threshold.setter
    def threshold(self, threshold: int) -> None:
        checked = _checked_threshold(threshold)
        if "_cache" not in self.__dict__:  # a subclass assigning it before __init__ ran
            self._threshold = checked
            return
        with self._locked:
            # evicted first: a call cut short while evicting leaves the old, higher threshold
            self._make_room(checked)
            self._threshold = checked

    # -- encoding ---------------------------------------------------------------------------

    def _pack(self, value: Any) -> tuple[int, Any]:
        """``(codec, payload)`` for storing ``value``."""
        kind = type(value)
        if type(self.serializer) is PickleSerializer:
            if kind in _SCALARS:
                return _RAW, value
            if kind is dict:
                if _scalars_only(value):
                    return _SHALLOW, value.copy()
            elif kind in _CONTAINERS and _all_scalars(map(type, value)):
                if kind is tuple or kind is frozenset:
                    return _RAW, value
                return _SHALLOW, value.copy()
        # Deeper builtins are pickled too: marshal would be faster, but it silently turns
        # bytearray, array.array or numpy arrays inside a container into bytes.
        if value is None:  # kept as itself, so get sees a stored None (a miss) under the lock
            self._sealed(value)  # yet a serializer refusing None still raises
            return _RAW, None
        return self._sealed(value)

    def _sealed(self, value: Any) -> tuple[int, Any]:
        """``(codec, payload)`` of ``value`` through the serializer, signed with a secret."""
        serializer = self.serializer  # read once: the MAC must name the one that encoded
        data = self._serialize(value, serializer)
        if self._signer is None:
            return _SERIALIZED, data
        return _SIGNED, (self._signer.sign(data, serializer), data)

    def _verified(self, key: str, payload: tuple[bytes, bytes]) -> Any:
        """The value of a signed entry; a miss, logged and counted, when it does not verify."""
        signature, data = payload
        signer, serializer = self._signer, self.serializer
        if (
            signer is not None
            and type(serializer) is PickleSerializer
            and compare_digest(signature, signer.sign(data, serializer))
        ):
            try:
                return pickle.loads(data)
            except Exception:
                pass
        # the base class says what is wrong, as for any stored payload
        return self._decode_or_miss(key, _stored_form(payload))

    def _expiry(self, timeout: Timeout) -> float | None:
        """Absolute expiry for ``timeout``; ``None`` when the entry is born expired."""
        if timeout is None:
            timeout = self._default_timeout  # the property's seconds, without its call
        elif type(timeout) is not int or timeout > LONGEST_TIMEOUT:
            timeout = normalize_timeout(timeout, self._default_timeout)
        if timeout > 0:
            return self._clock() + timeout
        return _NEVER if timeout == 0 else None

    # -- storage, under the lock --------------------------------------------------------------

    def _put(self, key: str, entry: _Entry) -> None:
        self._place(key, entry, self._cache.get(key))

    def _place(self, key: str, entry: _Entry, old: _Entry | None) -> None:
        """Store ``entry`` at the most recently used end; ``old`` is what ``key`` holds now."""
        cache = self._cache
        if old is None and len(cache) >= self._threshold:
            self._make_room(self._threshold - 1)
        # An old heap record bounds the new expiry from below unless there was none or the new
        # expiry is earlier; _make_room re-queues a record that fires too early. Queued before
        # the entry is stored: a call cut short between them leaves a record that is dropped
        # lazily, never an entry that the expired-first eviction cannot see.
        expires = entry[0]
        if expires and (old is None or not old[0] or expires < old[0]):
            heapq.heappush(self._expiries, (expires, key))
        if old is None:
            cache[key] = entry
        else:
            # overwrite + move_to_end: half the cost of pop + insert, which relinks a new node
            cache[key] = entry
            cache.move_to_end(key)
        if len(self._expiries) > 2 * len(cache) + 64:
            self._compact_expiries()
        self._sets += 1

    def _compact_expiries(self) -> None:
        """Rebuild the expiry heap from the entries, dropping stale records."""
        heap = [(e[0], k) for k, e in self._cache.items() if e[0]]
        heapq.heapify(heap)
        self._expiries = heap  # whole or not at all, for a call cut short

    def _make_room(self, size: int) -> None:
        """Evict down to ``size`` entries: expired ones first, then the least recently used."""
        cache, heap = self._cache, self._expiries
        if heap and heap[0][0] <= self._clock():
            now = self._clock()
            while heap and heap[0][0] <= now and len(cache) > size:
                # the record goes only after its entry: a call cut short in between leaves a
                # stale record, never an expiring entry without one
                key = heap[0][1]
                entry = cache.get(key)
                if entry is not None and entry[0] and entry[0] <= now:
                    del cache[key]
                    self._evictions += 1
                if entry is not None and entry[0] and entry[0] > now:  # expires later: queued again
                    heapq.heapreplace(heap, (entry[0], key))
                else:  # evicted, deleted, or now never expires
                    heapq.heappop(heap)
        while len(cache) > size:
            cache.popitem(last=False)
            self._evictions += 1

    def _live(self, key: str) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is not None and entry[0] and entry[0] <= self._clock():
            del self._cache[key]
            return None
        return entry

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        if type(key) is not str:
            check_key(key)
        lock = self._lock
        # acquire() inside the try, released after it: a with-block costs this path ~25%, and
        # a signal handled as acquire() returns must not raise before the try (lock left held)
        try:
            lock.acquire()
            entry = self._cache.get(key)
            if entry is None:
                self._misses += 1
            elif entry[0] and entry[0] <= self._clock():
                del self._cache[key]
                self._misses += 1
                entry = None
            elif entry[2] is None:  # a stored None reads like a miss: counted as one, not a use
                self._misses += 1
                entry = None
            else:
                self._cache.move_to_end(key)
                self._hits += 1
                if entry[1] > _DUE:  # one read fewer to go; stays in its place
                    self._cache[key] = (entry[0], entry[1] - 1, entry[2])
        except BaseException:
            _release_if_held(lock)
            raise
        lock.release()
        if entry is None:
            return None
        codec = entry[1]
        if codec == _SHALLOW:
            return entry[2].copy()
        if codec == _RAW:
            return entry[2]
        if codec == _NESTED:
            return _nested_copy(entry[2])
        if codec > _SIGNED:
            if type(self.serializer) is PickleSerializer:
                try:
                    value = pickle.loads(entry[2])
                except Exception:
                    value = self._decode_or_miss(key, entry[2])  # logs and counts it
                else:
                    if codec == _DUE and value is not None:
                        return self._settle(key, entry, value)
            else:
                value = self._decode_or_miss(key, entry[2])
        else:
            value = self._verified(key, entry[2])
        if value is None:  # unreadable, or a serialized None: a miss after all
            with self._locked:
                self._hits -= 1
                self._misses += 1
        return value

    def _settle(self, key: str, entry: _Entry, value: Any) -> Any:
        """``value``, read from a ``_DUE`` ``entry``: the entry now keeps it as ``_NESTED`` when
        it can be copied so, else as ``_SETTLED`` bytes, not looked at again."""
        form = _nested_form(value)
        if form is None:
            settled: _Entry = (entry[0], _SETTLED, entry[2])
        else:
            settled = (entry[0], _NESTED, form)
            value = _nested_copy(form)
        with self._locked:
            if self._cache.get(key) is entry:  # not replaced meanwhile; keeps its place
                self._cache[key] = settled
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if type(key) is not str:
            check_key(key)
        # _default_timeout: the property's seconds, without its call (a tenth of this path)
        if timeout is None and self._default_timeout > 0:  # else _expiry: 0, or reassigned < 0
            expires: float | None = self._clock() + self._default_timeout
        else:
            expires = self._expiry(timeout)
        # the commonest values, without the call of _pack that would find the same
        if type(self.serializer) is not PickleSerializer:
            codec, payload = self._pack(value)
        elif type(value) in _SCALARS:
            codec, payload = _RAW, value
        elif type(value) is dict:
            # _scalars_only, inlined: the call would cost this path ~5%
            for k, item in value.items():
                if type(item) not in _SCALARS or (type(k) is not str and type(k) not in _SCALARS):
                    if self._signer is not None:
                        codec, payload = self._sealed(value)
                        break
                    try:
                        codec, payload = _SERIALIZED, pickle.dumps(value, self.serializer.protocol)
                    except Exception:
                        codec, payload = self._sealed(value)  # raises the error that says why
                    break
            else:
                codec, payload = _SHALLOW, value.copy()
        else:
            codec, payload = self._pack(value)
        lock = self._lock
        try:  # as in get
            lock.acquire()
            cache = self._cache
            old = cache.get(key)
            if expires is None:
                if old is not None:
                    del cache[key]
                self._sets += 1
            elif old is not None and expires and old[0] and old[0] <= expires:
                # an overwrite that expires no earlier: nothing to evict, its heap record holds
                cache[key] = (expires, codec, payload)
                cache.move_to_end(key)
                self._sets += 1
            else:
                self._place(key, (expires, codec, payload), old)
        except BaseException:
            _release_if_held(lock)
            raise
        lock.release()
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if type(key) is not str:
            check_key(key)
        expires = self._expiry(timeout)
        codec, payload = self._pack(value)
        with self._locked:
            if self._live(key) is not None:
                return False
            if expires is None:
                self._sets += 1
            else:
                self._put(key, (expires, codec, payload))
        return True

    def delete(self, key: str) -> bool:
        if type(key) is not str:
            check_key(key)
        with self._locked:
            existed = self._live(key) is not None
            if existed:
                del self._cache[key]
                self._deletes += 1
        return existed

    def has(self, key: str) -> bool:
        if type(key) is not str:
            check_key(key)
        with self._locked:
            return self._live(key) is not None

    def clear(self) -> bool:
        with self._locked:
            self._cache.clear()
            self._expiries.clear()
        return True

    def get_many(self, *keys: str) -> list[Any]:
        for key in keys:  # all of them first: a call that raises counts no lookup
            if type(key) is not str:
                check_key(key)
        with self._locked:
            return [self.get(key) for key in keys]

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        check_mapping(mapping)
        items = list(mapping.items())
        for key, _ in items:
            if type(key) is not str:
                check_key(key)
        expires = self._expiry(timeout)
        packed = [(key, self._pack(value)) for key, value in items]
        with self._locked:
            for key, (codec, payload) in packed:
                if expires is None:  # born expired: counted, as set counts it
                    self._cache.pop(key, None)
                    self._sets += 1
                else:
                    self._put(key, (expires, codec, payload))
        return [key for key, _ in packed]

    def inc(self, key: str, delta: int = 1) -> int | None:
        if type(key) is not str:
            check_key(key)
        check_delta(delta)
        with self._locked:
            entry = self._live(key)
            if entry is None:
                value = delta
                expires = self._expiry(None)
            else:
                expires = entry[0]
                codec, payload = entry[1], entry[2]
                if codec < _NESTED:  # kept as it is: only its type is read
                    current = payload
                elif codec == _NESTED:
                    current = payload[0]
                else:
                    blob = _stored_form(payload) if codec == _SIGNED else payload
                    try:  # not _decode_or_miss: a stored None is not an unreadable entry
                        current = self._decode(blob, key)
                    except SerializationError as err:
                        raise TypeError(
                            f"cannot increment {key!r}: its stored value is unreadable ({err})"
                        ) from err
                value = checked_counter(key, current) + delta
            if type(self.serializer) is not PickleSerializer:
                self._encode_count(key, value)  # kept as it is, but only if it could be stored
            if expires is None:  # a default_timeout reassigned below 0: born expired, as in set
                self._sets += 1
            else:
                self._put(key, (expires, _RAW, value))
        return value

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._lock = threading.RLock()
        self._locked = entering(self._lock)

    def __getstate__(self) -> dict[str, Any]:
        """The options and the live entries, each with the seconds it has left (a monotonic
        clock's zero differs between processes and machines); see :class:`BaseCache`."""
        with self._locked:
            state = super().__getstate__()
            now = self._clock()
            state["_cache"] = OrderedDict(
                (key, (entry[0] - now if entry[0] else _NEVER, entry[1], entry[2]))
                for key, entry in self._cache.items()
                if not entry[0] or entry[0] > now
            )
        state["_expiries"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        now = self._clock()
        self._cache = OrderedDict(
            (key, (now + entry[0] if entry[0] else _NEVER, entry[1], entry[2]))
            for key, entry in self._cache.items()
        )
        self._compact_expiries()

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._cache)

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        stats["size"] = len(self._cache)
        return stats

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, threshold={self.threshold})"


def _checked_threshold(threshold: object) -> int:
    if type(threshold) is not int or threshold < 0:
        raise ConfigurationError(
            f"threshold must be an int >= 1 (or 0 for the default, 500), got {threshold!r}"
        )
    return threshold or 500


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("simple", SimpleCache)
    register("memory", SimpleCache)


def _release_if_held(lock: Any) -> None:
    """Release ``lock`` if this thread holds it: a call cut short (a signal handler raising)
    either while it waited for the lock, not held then, or after taking it."""
    # an RLock this thread already held before never waits, so held means taken by the call
    if lock._is_owned():
        lock.release()
