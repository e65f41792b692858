"""``BaseCache``: the contract every backend honours.

Its payload, counting and ``get_or_set`` methods come from its base classes in ``payloads``,
``stats`` and ``single_flight``. The helpers backends and plugins import from here live in
``arguments``, ``options``, ``signing`` and ``timeouts``; this module re-exports them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, Self, TypeVar

from cacheplug.core._entering import entering
from cacheplug.core.after_fork import live_caches
from cacheplug.core.arguments import check_delta, check_key, check_mapping, checked_counter
from cacheplug.core.errors import ConfigurationError, SerializationError
from cacheplug.core.options import (
    LONGEST_SOCKET_TIMEOUT,
    check_bool,
    check_picklable,
    check_seconds,
)
from cacheplug.core.payloads import PayloadCodec
from cacheplug.core.serializer import SerializerLike, resolve_serializer, serializer_name
from cacheplug.core.signing import (
    SECRET_ENV,
    SIGNATURE_SIZE,
    SIGNED_MARK,
    CacheSigner,
    PayloadSigner,
    entry_binding,
    resolve_secret,
    signing_context,
)
from cacheplug.core.single_flight import NOT_HANDED, SingleFlight, handed_copy
from cacheplug.core.stats import CONTRACT_SAYS, ThreadTally
from cacheplug.core.timeouts import (
    LONGEST_TIMEOUT,
    Timeout,
    check_default_timeout,
    normalize_timeout,
)
from cacheplug.serializers.pickle import PickleSerializer

if TYPE_CHECKING:
    from types import TracebackType

    from cacheplug.core.cache_url import CacheURL
    from cacheplug.core.memoize import Memoized

__all__ = [
    "CONTRACT_SAYS",
    "LONGEST_SOCKET_TIMEOUT",
    "LONGEST_TIMEOUT",
    "NOT_HANDED",
    "SECRET_ENV",
    "SIGNATURE_SIZE",
    "SIGNED_MARK",
    "BaseCache",
    "CacheSigner",
    "Memoized",
    "PayloadSigner",
    "Timeout",
    "check_bool",
    "check_default_timeout",
    "check_delta",
    "check_key",
    "check_mapping",
    "check_picklable",
    "check_seconds",
    "checked_counter",
    "entry_binding",
    "handed_copy",
    "normalize_timeout",
    "signing_context",
]

P = ParamSpec("P")
R = TypeVar("R")

_NOT_GIVEN: Any = object()


class _ClassDefaultTimeout:
    """The ``default_timeout`` of a subclass that gives it as a class attribute.

    On the class it reads as the value written there; on instances it is the inherited
    property, so a reassignment is still checked and the backends' hot paths, which read
    ``_default_timeout``, still see it.
    """

    def __init__(self, given: object, inherited: Any) -> None:
        self.given = given
        self.inherited = inherited

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self.given
        return self.inherited.__get__(instance, owner)

    def __set__(self, instance: object, value: object) -> None:
        self.inherited.__set__(instance, value)


class BaseCache(SingleFlight, PayloadCodec, ABC):
    """The contract of a cacheplug cache, with cachelib-compatible semantics.

    Subclasses implement ``get``, ``set``, ``add``, ``delete``, ``has`` and ``clear``; the
    ``*_many`` calls, ``inc``/``dec``, ``get_or_set``, ``memoize`` and ``stats`` have defaults
    that engines override where they can do better::

        from cacheplug import SimpleCache

        with SimpleCache(threshold=1000, default_timeout=60) as cache:
            cache.set("user:1", {"name": "Ada"})
            cache.get("user:1")              # {'name': 'Ada'}
            cache.inc("visits")              # 1

            @cache.memoize(timeout=30)
            def slow_square(n: int) -> int:
                return n * n

    :param default_timeout: seconds (or a timedelta) an entry lives when ``set`` gets no timeout;
        0 = forever.
    :param key_prefix: prepended to every key in a shared store; ``clear`` stays under it.
    :param serializer: a registered name (``"pickle"``, ``"json"``, ``"msgpack"``) or any
        object with ``dumps``/``loads``; default: the class attribute ``serializer`` (pickle).
    :param secret: sign every stored payload with HMAC-SHA256; unsigned or tampered entries read
        as misses. Defaults to the ``CACHEPLUG_SECRET`` environment variable.
    """

    #: Serializer used when none is given; reassign on an instance or a subclass to change it.
    serializer: SerializerLike = PickleSerializer()
    #: Options this backend accepts in a URL query, beyond the shared ones, with their types.
    url_options: ClassVar[Mapping[str, type]] = {}
    #: Whether a signature covers its entry's key_prefix and key: on any store that others
    #: can write, so a genuine payload copied to another key reads as a miss there.
    _signs_entries: ClassVar[bool] = True
    #: Whether a write that answers True can be read back: get_or_set's waiters then read the
    #: result from the cache instead of each getting a copy of it.
    _keeps_entries: ClassVar[bool] = True
    #: Attributes that belong to one process (locks, counters, the signer's hash states): a
    #: pickled copy leaves them out and makes its own. Backends add their own locks.
    _process_local: ClassVar[frozenset[str]] = frozenset(
        {"_error_seq", "_by_thread", "_hits", "_misses", "_sets", "_deletes", "_error_count"}
        | {"_evictions", "_flights", "_flights_lock", "_flights_locked", "_last_logged"}
        | {"_held_back", "_signer"}
    )
    #: Where :attr:`default_timeout` keeps its seconds, which hot paths read directly; this
    #: class value serves before ``__init__`` has run (a subclass reading it for its default).
    _default_timeout: float = 300

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep ``default_timeout`` a checked property under a subclass that gives it as a
        class attribute (``default_timeout = 60``, as cachelib subclasses may).

        A plain class value would hide the property: assignments would then go unchecked to
        the instance, where hot paths reading ``_default_timeout`` never look.

        :raises TypeError: the class value is not seconds, a timedelta or None.
        """
        super().__init_subclass__(**kwargs)
        _keep_default_timeout_checked(cls)

    @property
    def default_timeout(self) -> float:
        """Seconds an entry lives when ``set`` gets no timeout; 0: forever.

        Reassignable, as in cachelib: seconds or a timedelta (read back as seconds), below 0
        for entries born expired. Anything else raises :class:`TypeError` at the assignment,
        and the value stays as it was.
        """
        return self._default_timeout

    @default_timeout.setter
    def default_timeout(self, timeout: float) -> None:
        # typed as read, so that subclasses may still declare it as a class attribute of
        # their own (mypy takes a wider setter as a different type); a timedelta works too
        self._default_timeout = check_default_timeout(timeout)

    def __init__(
        self,
        default_timeout: float | timedelta = 300,
        *,
        key_prefix: str = "",
        serializer: str | SerializerLike | None = None,
        secret: str | bytes | None = None,
    ) -> None:
        _unshadow_default_timeout(type(self))
        seconds = normalize_timeout(default_timeout, 300, "default_timeout")
        if seconds < 0:  # only a reassignment may go below 0
            raise ConfigurationError(
                f"default_timeout must be 0 (never expires) or a positive number of seconds, "
                f"got {default_timeout!r}"
            )
        self.default_timeout = seconds  # through the property: a subclass may override it
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be str, got {type(key_prefix).__name__}")
        self.key_prefix = key_prefix
        if serializer is not None:
            self.serializer = resolve_serializer(serializer)
        key = resolve_secret(secret)
        self._signer = CacheSigner(key, self.serializer) if key is not None else None
        self._start_in_process()

    def _start_in_process(self) -> None:
        """Make the state that belongs to one process (:attr:`_process_local`): for a new
        cache, and for a copy unpickled in another one."""
        # every error counted moves the sequence on (it never goes back, as _errors may);
        # each thread notes where it stood at its own last ones, told apart from others'
        self._error_seq = 0
        self._by_thread = ThreadTally()
        self._hits = self._misses = self._sets = self._deletes = 0
        self._error_count = self._evictions = 0
        self._flights: dict[str, list[Any]] = {}
        self._flights_lock = threading.Lock()
        self._flights_locked = entering(self._flights_lock)
        self._last_logged: dict[str, float] = {}
        self._held_back: dict[str, int] = {}
        live_caches[id(self)] = self

    def __bool__(self) -> bool:
        """Always true, even for an empty cache whose class defines ``__len__``: so
        ``cache or SimpleCache()`` and ``if cache:`` never take a real cache for a missing one."""
        return True

    def __getstate__(self) -> dict[str, Any]:
        """The options (and a backend's entries), for a copy in another process (a ``spawn``
        child): locks stay here, and the copy's ``stats`` start at zero.

        A secret travels in the pickle, as the options do: send it to processes of your own.
        """
        local = self._process_local
        state = {k: v for k, v in self.__dict__.items() if k not in local}
        state["_secret"] = None if self._signer is None else self._signer._secret
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        secret = state.pop("_secret", None)
        if "default_timeout" in state:  # pickled before it became a property
            state["_default_timeout"] = check_default_timeout(state.pop("default_timeout"))
        _unshadow_default_timeout(type(self))
        self._start_in_process()
        self.__dict__.update(state)
        self._signer = None if secret is None else CacheSigner(secret, self.serializer)
        self._after_fork_in_child()  # the backend's own locks, new for this process

    # -- the contract -----------------------------------------------------------------------

    @abstractmethod
    def get(self, key: str) -> Any:
        """The value stored under ``key``, or ``None`` when missing, expired or unreadable."""

    @abstractmethod
    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        """Store ``value``; ``False`` when the backend could not.

        :raises SerializationError: the serializer cannot encode ``value``.
        """

    @abstractmethod
    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        """Store ``value`` only if ``key`` is absent; ``False`` when it exists."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed and was deleted."""

    @abstractmethod
    def has(self, key: str) -> bool:
        """Whether ``key`` is present and unexpired, without reading the value."""

    @abstractmethod
    def clear(self) -> bool:
        """Remove every entry of this cache (only those under ``key_prefix`` when set)."""

    def get_many(self, *keys: str) -> list[Any]:
        """The values of ``keys`` in order, ``None`` for each miss."""
        for key in keys:  # all of them first: a call that raises looks nothing up
            check_key(key)
        return [self.get(key) for key in keys]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        """``{key: value}`` for ``keys``, ``None`` for each miss."""
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> list[str]:
        """Store every item; the keys that were stored.

        Every key is checked and every value encoded before anything is stored, so a bad one
        stores nothing. This default then calls ``set`` per item, which encodes again: a
        backend with a batch operation overrides it.
        """
        check_mapping(mapping)
        normalize_timeout(timeout, self.default_timeout)  # a bad one raises, also with no items
        serializer = self.serializer
        for key, value in mapping.items():
            check_key(key)
            self._serialize(value, serializer)
        return [key for key, value in mapping.items() if self.set(key, value, timeout)]

    def delete_many(self, *keys: str) -> list[str]:
        """Delete ``keys``; the keys that existed and were deleted."""
        for key in keys:  # a bad key raises before anything is deleted, as on the engines
            check_key(key)
        return [key for key in keys if self.delete(key)]

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` to the integer under ``key`` (a missing key counts as 0).

        The new value, or ``None`` on a backend error. This default is atomic within one
        process only, and it rewrites the entry with ``default_timeout`` (the abstract methods
        cannot read a remaining lifetime, as cachelib's default cannot); the contract keeps an
        existing counter's expiry, so every backend with expiry overrides it, the built-in ones
        with their engine's own atomic increment.

        :raises TypeError: ``delta`` or the stored value is not an integer (the value stays).
        :raises OverflowError: the serializer cannot store the result (the value stays).
        """
        check_delta(delta)
        flight = self._single_flight(key)
        try:
            next(flight)
            current = self.get(key)
            if current is None and self.has(key):
                checked_counter(key, current)  # a stored None is no counter: TypeError
            value = delta if current is None else checked_counter(key, current) + delta
            try:
                ok = self.set(key, value)
            except SerializationError as err:
                raise self._uncountable(key, value) from err
        finally:
            next(flight, None)
        return value if ok else None

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Subtract ``delta``; see :meth:`inc`."""
        check_delta(delta)
        return self.inc(key, -delta)

    def close(self) -> None:
        """Release connections and other resources; the default holds none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- beyond cachelib -----------------------------------------------------------------------

    def memoize(
        self, timeout: Timeout = None, *, key_prefix: str | None = None
    ) -> Callable[[Callable[P, R]], Memoized[P, R]]:
        """Decorate a function so its results are cached per argument list.

        The key is built from the function's module, qualified name and arguments bound to its
        signature (so ``f(1, b=2)`` and ``f(1, 2)`` share an entry). The wrapper has
        ``invalidate(*args, **kwargs)``, ``cache_key(*args, **kwargs)`` and ``uncached``.
        Arguments need a ``repr`` that shows what they are: one that shows a memory address
        (``object``'s default, functions) raises ``TypeError`` at the call, since a later object
        at that address would be served the cached result. Methods: give the class a
        ``__repr__`` (a dataclass has one).

        An ``async def`` function gets an async wrapper that awaits it and caches its result,
        with the same keys; tasks of one event loop missing the same key await one call, and
        its exception reaches each of them. The cache calls themselves are synchronous and
        block the event loop while they run: fine in memory or on a local disk, while an
        engine's network round trips are better run in a thread by the caller.

        :raises TypeError: at decoration, ``func`` is a generator function (sync or async):
            its generator can be iterated only once and cannot be stored.
        """
        normalize_timeout(timeout, self.default_timeout)

        def decorate(func: Callable[P, R]) -> Memoized[P, R]:
            from cacheplug.core.memoize import memoized

            return memoized(self, func, timeout, key_prefix)

        return decorate

    # -- for backend authors ---------------------------------------------------------------------

    @classmethod
    def from_url_spec(cls, url: CacheURL, options: dict[str, Any]) -> Self:
        """Build an instance from a parsed URL and its coerced options.

        The default passes ``options`` as keyword arguments and accepts no host, path or
        credentials; engines override this to map those onto their constructor.

        :raises ConfigurationError: the URL has parts this backend does not take.
        """
        if url.hosts or url.path.strip("/") or url.username or url.password is not None:
            raise ConfigurationError(
                f"{url.scheme}:// takes no host, path or credentials, got {url.redacted()!r}; "
                f"write {url.scheme}://?option=value"
            )
        return cls(**options)

    def _after_fork_in_child(self) -> None:
        """Drop the locks inherited from the parent, which its other threads may hold.

        Backends with locks of their own extend this; the entries stay. An unpickled copy
        calls it too, for locks of its own.
        """
        self._flights = {}
        self._flights_lock = threading.Lock()
        self._flights_locked = entering(self._flights_lock)

    def _shown_key_prefix(self) -> str:
        """How :meth:`__repr__` shows ``key_prefix``."""
        return repr(self.key_prefix)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(default_timeout={self.default_timeout!r}, "
            f"key_prefix={self._shown_key_prefix()}, "
            f"serializer={serializer_name(self.serializer)!r}"
            f"{', signed=True' if self._signer else ''})"
        )


#: The property every class value of ``default_timeout`` is put in front of.
_DEFAULT_TIMEOUT_PROPERTY = vars(BaseCache)["default_timeout"]


def _keep_default_timeout_checked(cls: type) -> None:
    """Put the checked property back in front of a plain ``default_timeout`` value that
    ``cls`` itself holds (see :meth:`BaseCache.__init_subclass__`); else do nothing.

    :raises TypeError: the class value is not seconds, a timedelta or None.
    """
    given = vars(cls).get("default_timeout", _NOT_GIVEN)
    if given is _NOT_GIVEN or hasattr(type(given), "__get__"):
        return  # none, or a descriptor of the class's own (a property, as Memcached's)
    if given is not None:  # None: no opinion, as the constructor reads it
        type.__setattr__(
            cls,
            "_default_timeout",
            check_default_timeout(given, f"{cls.__qualname__}.default_timeout"),
        )
    inherited = next(
        (
            vars(base)["default_timeout"]
            for base in cls.__mro__[1:]
            if "default_timeout" in vars(base)
        ),
        _DEFAULT_TIMEOUT_PROPERTY,  # BaseCache.default_timeout = 60 replaced it there
    )
    if isinstance(inherited, _ClassDefaultTimeout):
        inherited = inherited.inherited
    type.__setattr__(cls, "default_timeout", _ClassDefaultTimeout(given, inherited))


def _unshadow_default_timeout(cls: type) -> None:
    """Before a cache of ``cls`` is made: a value assigned to ``default_timeout`` on a class
    already made (``SimpleCache.default_timeout = 60``), which ``__init_subclass__`` never saw,
    gets the checked property back in front of it, as a subclass's class value has.

    Else the instance's reassignments would land unchecked in its ``__dict__``, unseen by the
    hot paths, which read ``_default_timeout``. A metaclass could catch the assignment itself,
    but would conflict with a plugin's own (``ABCMeta`` subclasses).
    """
    for klass in cls.__mro__:
        if "default_timeout" in vars(klass):  # the one instances see
            _keep_default_timeout_checked(klass)
            return


def __getattr__(name: str) -> Any:
    # Memoized, exported here before it moved to core/memoize.py, which imports this module
    if name == "Memoized":
        from cacheplug.core.memoize import Memoized

        return Memoized
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
