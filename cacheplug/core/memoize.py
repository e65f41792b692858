"""``memoize``: the wrappers :meth:`BaseCache.memoize` returns (keys: ``_memoize_keys``)."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
from collections.abc import Callable
from functools import wraps
from types import CodeType, MethodType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from cacheplug.core._memoize_elided import UnkeyableArgument
from cacheplug.core._memoize_keys import (
    ADDRESS_REPR,
    DEFAULT_SHOWN,
    PLAIN,
    REMEMBERED_KEYS,
    REMEMBERED_TEXT,
    SHOWN_ITEM_BY_ITEM,
    Binder,
    address_shown,
    all_plain,
    bound_object,
    called_function,
    closure_text,
    function_name,
    immutable_plain,
    item_text,
    partial_parts,
    plain_items_text,
    short_digest,
    stable_repr,
)
from cacheplug.core.single_flight import NOT_HANDED, handed_copy
from cacheplug.core.timeouts import normalize_timeout

if TYPE_CHECKING:
    import asyncio
    from types import TracebackType

    from cacheplug.core.base import BaseCache
    from cacheplug.core.timeouts import Timeout

__all__ = ["AsyncMemoized", "Memoized", "memoized"]

_blake2b = hashlib.blake2b

P = ParamSpec("P")
R = TypeVar("R")


#: The signature memoize binds a callable to when it has none of its own.
_ANY_ARGUMENTS = inspect.Signature(
    [
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


class Memoized(Generic[P, R]):
    """A function whose results are cached; made by :meth:`BaseCache.memoize`."""

    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(
        self,
        cache: BaseCache,
        func: Callable[P, R],
        timeout: Timeout,
        key_prefix: str | None,
    ) -> None:
        # memoize written above @staticmethod / @classmethod: wrap the function they hold
        binding: str | None = None
        if isinstance(func, (staticmethod, classmethod)):
            binding = type(func).__name__
            func = func.__func__
        runs = called_function(func)
        if inspect.isgeneratorfunction(runs) or inspect.isasyncgenfunction(runs):
            raise TypeError(
                f"cannot memoize {function_name(func)}: it is a generator function, and the "
                "generator it returns can be iterated only once and cannot be stored; memoize a "
                "function that returns a list of the items instead"
            )
        # first: wraps copies the attributes of ``func``, and a memoized function's own (its
        # cache, prefix...) must not replace this one's
        wraps(func)(self)
        self._binding = binding
        self.cache = cache
        self.uncached = func
        self.timeout = timeout
        # a partial's arguments are keyed as the call's own, at each call (they may change)
        target, bound_args, bound_keywords = partial_parts(func)
        self._bound: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        if bound_args or bound_keywords:
            self._bound = (bound_args, bound_keywords)
            if address_shown(self._bound, set()) is not None:
                raise TypeError(
                    f"cannot memoize {function_name(func)}: the arguments it binds are shown by "
                    "a memory address, which a later object can reuse and be served these "
                    "results; bind values whose repr shows what identifies them"
                )
        try:
            self._signature = inspect.signature(target)
        except ValueError:  # a builtin without one (max): keyed on its arguments as given
            self._signature = _ANY_ARGUMENTS
        self._binder = Binder(self._signature)
        # defaults by name: one whose repr shows an address is keyed as the default
        self._defaults = {
            param.name: param.default
            for param in self._signature.parameters.values()
            if param.default is not inspect.Parameter.empty
        }
        # what its calls work on without passing it: keyed as it is at each call
        self._subject = bound_object(target)
        self._subject_is = "the object it is bound to"
        name = function_name(target)
        if self._subject is target:  # a callable object: named by its class
            name, self._subject_is = function_name(type(target)), "the callable object"
        prefix = f"memoize:{name}"
        if self._subject is not None:
            shown = address_shown(self._subject, set())
            if shown is not None:
                raise _unstable_subject(func, target, shown)
            if immutable_plain(self._subject) or isinstance(self._subject, type):
                # its text never changes: in the prefix, once
                prefix += f"@{short_digest(stable_repr(self._subject, set()))}"
                self._subject = None
        closure = closure_text(target)
        if closure:
            prefix += f"~{short_digest(closure)}"
        self._prefix = key_prefix if key_prefix is not None else prefix
        # key text -> key, of recent calls: the digest costs more than the text
        self._keys: dict[str, str] = {}
        # the key of a call without arguments, when no default can change its text
        self._bare_key: str | None = None
        bound_args, bound_keywords = self._bound or ((), {})
        bare = self._binder.bind(bound_args, bound_keywords)
        if self._subject is None and bare is not None and all(map(immutable_plain, bare)):
            self._bare_key = self._key((), {})

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of one call.

        :raises TypeError: an argument's repr shows a memory address (the default
            ``object.__repr__``, functions): a later object at that address would be served
            this call's result, so there is no safe key; or it leaves out part of the
            argument (``...``), which then cannot be pickled to key all of it.
        """
        return self._key(args, kwargs)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if not args and not kwargs and self._bare_key is not None:
            return self._bare_key
        if self._bound is not None:
            args, kwargs = self._bound[0] + args, {**self._bound[1], **kwargs}
        binder = self._binder
        values = binder.bind(args, kwargs)
        if values is None:
            arguments = (args, sorted(kwargs.items()))
            try:
                text = stable_repr(arguments, set())
            except UnkeyableArgument as err:
                raise self._unkeyable("one of the arguments", err) from err.__cause__
            self._check_stable("the arguments", arguments, text)
        elif all_plain(map(type, values)):
            try:
                text = binder.repr_template % tuple(values)
            except ValueError:  # an int too long for a repr
                text = binder.template % tuple(map(self._shown, binder.names, values))
        else:
            text = binder.template % tuple(map(self._shown, binder.names, values))
        if self._subject is not None:
            shown = self._shown("", self._subject, self._subject_is)
            text = f"{len(shown)}:{shown}{text}"
        key = self._keys.get(text)
        if key is None:
            # surrogatepass: a repr may hold a lone surrogate (a name read with surrogateescape)
            digest = _blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
            key = f"{self._prefix}:{digest.hexdigest()}"
            if len(text) <= REMEMBERED_TEXT:
                if len(self._keys) >= REMEMBERED_KEYS:
                    self._keys.clear()
                self._keys[text] = key
        return key

    def _shown(self, name: str, value: object, what: str = "") -> str:
        """The key text of the bound value of parameter ``name`` (``what``: of another)."""
        kind = type(value)
        if kind in PLAIN:
            try:
                return repr(value)
            except ValueError:  # an int too long for a repr
                return item_text(value, set())
        try:
            # dict items come out sorted: f(a=1, b=2) and f(b=2, a=1) into **kwargs are one call
            if kind is list or kind is tuple or kind is dict:
                part = plain_items_text(value) or stable_repr(value, set())  # type: ignore[arg-type]
            elif kind in SHOWN_ITEM_BY_ITEM:
                part = stable_repr(value, set())
            else:
                part = item_text(value, set())
        except UnkeyableArgument as err:
            raise self._unkeyable(what or f"argument {name!r}", err) from err.__cause__
        if " at 0x" in part and ADDRESS_REPR.search(part) is not None:
            if name in self._defaults and value is self._defaults[name]:
                return DEFAULT_SHOWN
            self._check_stable(what or f"argument {name!r}", value, part)
        return part

    def _unkeyable(self, what: str, err: UnkeyableArgument) -> TypeError:
        """The error refusing a call where ``what`` holds a value that ``err`` names."""
        return TypeError(
            f"cannot memoize {function_name(self.uncached)}(): {what} holds {err.shown}, "
            "whose repr leaves out part of it (an ellipsis, or an array library's summary), and "
            f"it cannot be pickled to key all of it ({err.reason}); memoize a function "
            "taking what identifies all of it instead (an id, a version or a digest of your "
            "own), or give its class a __repr__ that shows all of it"
        )

    def _check_stable(self, what: str, value: object, shown: str) -> None:
        if " at 0x" not in shown or ADDRESS_REPR.search(shown) is None:
            return
        address = address_shown(value, set())
        if address is not None:  # not merely text that looks like an address
            raise TypeError(
                f"cannot memoize {function_name(self.uncached)}(): {what} is shown as "
                f"{address}, a memory address that a later object can reuse and be served "
                "this call's result; give its class a __repr__ that shows what identifies it "
                "(a dataclass has one), or pass that identity instead"
            )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._call(args, kwargs)
        return result

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The result of one call, cached; what calling this or a bound method runs."""
        return self.cache.get_or_set(
            self._key(args, kwargs), lambda: self.uncached(*args, **kwargs), self.timeout
        )

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the cached result of one call; whether there was one."""
        return self.cache.delete(self._key(args, kwargs))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Memoized[..., R]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _BoundMemoized[R]: ...
    def __get__(
        self, instance: object, owner: type | None = None
    ) -> Memoized[..., R] | _BoundMemoized[R]:
        # typed on the class as itself taking any arguments (a class method's first comes
        # bound), on an instance as bound even where it returns itself (a staticmethod): their
        # calls give R either way
        if self._binding is None:
            return self if instance is None else _BoundMemoized(self, instance)
        if self._binding == "staticmethod":
            return self
        return _BoundMemoized(self, owner if owner is not None else type(instance))

    def __repr__(self) -> str:
        return f"<memoized {self._prefix} on {self.cache!r}>"

    def __reduce__(self) -> str:
        # by reference, as pickle sends functions (to process pools), not with the cache's locks
        return self.__qualname__


def _unstable_subject(func: object, target: object, shown: str) -> TypeError:
    """The error refusing to memoize ``func``, whose calls work on an object shown by the
    address ``shown``: ``target`` itself (a callable object) or the object it is bound to."""
    if target is bound_object(target):
        return TypeError(
            f"cannot memoize {function_name(func)}: it is shown by a memory address, which a "
            "later object can reuse and be served these results; give its class a __repr__ "
            "that shows what identifies it"
        )
    return TypeError(
        f"cannot memoize {function_name(func)} bound to {shown}: a memory address, which a "
        "later object can reuse and be served these results; give its class a __repr__ that "
        "shows what identifies it, or memoize the method in the class body"
    )


class _BoundMemoized(Generic[R]):
    """A memoized method bound to its instance."""

    def __init__(self, memoized: Memoized[Any, R], instance: object) -> None:
        self._memoized = memoized
        self._instance = instance
        self.__doc__ = memoized.__doc__
        self.__module__ = memoized.__module__

    def __getattr__(self, name: str) -> Any:
        # __name__, __qualname__...: the method's, as a bound method shows them
        if name == "_memoized":  # not set yet
            raise AttributeError(name)
        return getattr(self._memoized, name)

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self.uncached

    @property
    def __self__(self) -> object:
        """The instance (or class) it is bound to, as a bound method's."""
        return self._instance

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        result: R = self._memoized._call((self._instance, *args), kwargs)
        return result

    @property
    def uncached(self) -> Callable[..., Any]:
        """The method itself, bound, without the cache."""
        return MethodType(self._memoized.uncached, self._instance)

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (self._instance, self._memoized.__name__)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._memoized.cache_key(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self._memoized.invalidate(self._instance, *args, **kwargs)


def memoized(
    cache: BaseCache, func: Callable[P, R], timeout: Timeout, key_prefix: str | None
) -> Memoized[P, R]:
    """The wrapper :meth:`BaseCache.memoize` puts around ``func``: async for ``async def``."""
    target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
    # a callable object's async __call__ too, which iscoroutinefunction misses before 3.12
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(called_function(target)):
        return AsyncMemoized(cache, func, timeout, key_prefix)
    return Memoized(cache, func, timeout, key_prefix)


class _Flight:
    """One call of an async memoized function that other tasks of its event loop wait for."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.value: Any = None
        self.error: Exception | None = None
        # as the call raised it: each waiter raising the shared error would add its frames
        self.traceback: TracebackType | None = None
        self.ended = False  # False when the call was cancelled: a waiter must call again
        self.waiters = 0  # tasks that found it: the result is copied for them as it ends


#: The async calls the running code is part of: the task making each, and the tasks it starts
#: (they copy its context), which would wait on their own caller forever.
_OPEN_FLIGHTS: contextvars.ContextVar[frozenset[_Flight]] = contextvars.ContextVar(
    "cacheplug_open_flights", default=frozenset()
)


class AsyncMemoized(Memoized[P, R]):
    """An ``async def`` function whose results are cached; made by :meth:`BaseCache.memoize`.

    Calling it returns a coroutine. Tasks of one event loop missing the same key await one
    call; the others get its result (read back from the cache, or, when the cache did not keep
    it, a deep copy made as the call ended: never the first caller's object) or its exception.
    A kept result gone from the cache meanwhile, or a cancelled call: a waiting task calls the
    function in its place.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # (event loop, key) -> the call in progress; futures belong to one loop
        self._flights: dict[tuple[asyncio.AbstractEventLoop, str], _Flight] = {}
        target: Any = called_function(self.uncached)
        code = getattr(target, "__code__", None)
        if isinstance(code, CodeType):
            # what inspect.iscoroutinefunction(self) reads, as frameworks check it
            self.__code__ = code
            self.__defaults__ = getattr(target, "__defaults__", None)
            self.__kwdefaults__ = getattr(target, "__kwdefaults__", None)
            if not isinstance(getattr(self, "__name__", None), str):  # a partial, an object
                called = partial_parts(self.uncached)[0]
                self.__name__ = getattr(called, "__name__", None) or type(called).__name__

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import asyncio

        key = self._key(args, kwargs)
        cache = self.cache
        flight_key = (asyncio.get_running_loop(), key)
        while True:
            seq = cache._error_seq
            value = cache.get(key)
            if value is not None:
                return value
            counted = cache._lookup_errors(seq)  # before other tasks of this thread count theirs
            flight = self._flights.get(flight_key)
            if flight is None:
                break
            if flight in _OPEN_FLIGHTS.get():
                # the call uses its own key again (a retry by recursion, in its own task or one
                # it awaits): waiting would hang
                value = await cast(Any, self.uncached)(*args, **kwargs)
                if value is not None:
                    cache.set(key, value, self.timeout)
                return value
            flight.waiters += 1
            await asyncio.shield(flight.done)  # a waiter's cancellation leaves the call alone
            if flight.error is not None:
                # counted as the miss of this call's lookup
                raise flight.error.with_traceback(flight.traceback)
            cache._take_back_lookup(counted)  # the lookup below counts this call
            if flight.ended:
                value = cache.get(key)
                if value is not None:
                    return value
                # gone from the cache (evicted, a failed write): never the shared object
                value = handed_copy(flight.value)
                if value is not NOT_HANDED:
                    return value
                # cannot be copied: this task calls the function itself
        return await self._lead(flight_key, args, kwargs)

    async def _lead(
        self,
        flight_key: tuple[asyncio.AbstractEventLoop, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call the function for every task of this loop that misses the same key."""
        cache = self.cache
        seconds = normalize_timeout(self.timeout, cache.default_timeout)  # raises before the call
        flight = _Flight(flight_key[0].create_future())
        flights = self._flights
        inside = None
        # A signal handler may raise as any call returns: the flight is stored inside the try,
        # and the finally releases its waiters first, with no call before.
        try:
            flights[flight_key] = flight
            inside = _OPEN_FLIGHTS.set(_OPEN_FLIGHTS.get() | {flight})
            value = await cast(Any, self.uncached)(*args, **kwargs)
            kept = cache._store_result(flight_key[1], value, self.timeout, seconds)
            if flight.waiters:
                # copied now, as the sync flight does: the caller may change its object before
                # the waiters run; a kept result they read back (gone meanwhile: they call)
                flight.value = NOT_HANDED if kept else handed_copy(value)
            flight.ended = True
        except Exception as err:
            flight.error, flight.traceback = err, err.__traceback__
            raise
        finally:
            # cancelled (or otherwise stopped): neither ended nor an error, so a waiter calls again
            if flight_key in flights and flights[flight_key] is flight:
                del flights[flight_key]
            flight.done.set_result(None)
            if inside is not None:  # else a flight no longer stored stays in the set: harmless
                _OPEN_FLIGHTS.reset(inside)
        return value
