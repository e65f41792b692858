"""``memoize``: the wrappers :meth:`BaseCache.memoize` returns, and how they build keys."""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from operator import itemgetter
from types import CodeType, FunctionType, MethodType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from cacheplug.core.base import normalize_timeout

if TYPE_CHECKING:
    import asyncio

    from cacheplug.core.base import BaseCache, Timeout

__all__ = ["AsyncMemoized", "Memoized", "memoized"]

P = ParamSpec("P")
R = TypeVar("R")

# CPython's default repr ends in the object's address, which a later object can reuse
_ADDRESS_REPR = re.compile(r" at 0x[0-9a-fA-F]+>")


def _address_shown(value: object, seen: set[int]) -> str | None:
    """The first address-bearing repr inside ``value``; text inside str or bytes does not count."""
    kind = type(value)
    if kind is str or kind is bytes or id(value) in seen:
        return None
    if kind in (list, tuple, set, frozenset, dict):
        seen.add(id(value))
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for item in items:  # type: ignore[attr-defined]
            found = _address_shown(item, seen)
            if found is not None:
                return found
        return None
    shown = repr(value)
    if _ADDRESS_REPR.search(shown) is None:
        return None
    return shown if len(shown) <= 120 else f"{shown[:60]}...{shown[-50:]}"


_SHOWN_ITEM_BY_ITEM = frozenset({list, tuple, dict, set, frozenset})


def _stable_repr(value: object, open_ids: set[int]) -> str:
    """``repr(value)``, with the items of sets and dicts in sorted order.

    Equal sets and dicts then give one text whatever their order, and sets of strings the same
    text in every process (their order follows the per-process string hash); list and tuple
    texts stay their repr. ``open_ids``: the containers being shown, for self-references.
    """
    kind = type(value)
    if kind not in _SHOWN_ITEM_BY_ITEM:
        return repr(value)
    if id(value) in open_ids:
        return "..."
    open_ids.add(id(value))
    try:
        if kind is dict:
            pairs = sorted(
                f"{_stable_repr(k, open_ids)}: {_stable_repr(v, open_ids)}"
                for k, v in value.items()  # type: ignore[attr-defined]
            )
            return "{" + ", ".join(pairs) + "}"
        parts = [_stable_repr(item, open_ids) for item in value]  # type: ignore[attr-defined]
        if kind is list:
            return "[" + ", ".join(parts) + "]"
        if kind is tuple:
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        body = "{" + ", ".join(sorted(parts)) + "}" if parts else ""
        return (body or "set()") if kind is set else f"frozenset({body})"
    finally:
        open_ids.discard(id(value))


# the most keys of recent calls each memoized function remembers, and their longest text
_REMEMBERED_KEYS = 128
_REMEMBERED_TEXT = 160
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
_all_plain = _PLAIN.issuperset
_blake2b = hashlib.blake2b


def _plain_items_text(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> str | None:
    """``_stable_repr(value)`` for a list, tuple or dict made only of plain values; else None."""
    if type(value) is dict:
        if _all_plain(map(type, value)) and _all_plain(map(type, value.values())):
            return "{" + ", ".join(sorted([f"{k!r}: {v!r}" for k, v in value.items()])) + "}"
    elif _all_plain(map(type, value)):
        return repr(value)  # items in order, as _stable_repr shows them
    return None


def _immutable_plain(value: object) -> bool:
    """Whether ``value``'s key text can never change: a plain value or a tuple of them."""
    kind = type(value)
    return kind in _PLAIN or (kind is tuple and _all_plain(map(type, value)))  # type: ignore[call-overload]


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _Binder:
    """Binds calls to one signature as ``Signature.bind`` + ``apply_defaults`` do, faster.

    Calls that fail to bind, or that are unusual (a positional-only name passed by keyword),
    go to ``Signature.bind`` itself.
    """

    def __init__(self, signature: inspect.Signature) -> None:
        self._signature = signature
        params = list(signature.parameters.values())
        kinds = [param.kind for param in params]
        names = [param.name for param in params]
        order = sorted(range(len(params)), key=names.__getitem__)
        #: the parameter names, sorted, as the key text lists them
        self.names = tuple(names[i] for i in order)
        # the repr of the sorted (name, value) list, with %s for the values' texts (a name
        # holds no %) and %r for the values themselves when their repr is their text
        self.template = "[" + ", ".join(f"({name!r}, %s)" for name in self.names) + "]"
        self.repr_template = self.template.replace("%s", "%r")
        self._reorder: Callable[[Sequence[Any]], Sequence[Any]] | None = None
        if len(order) > 1 and order != sorted(order):
            self._reorder = itemgetter(*order)
        self._defaults = tuple(
            () if kind is inspect.Parameter.VAR_POSITIONAL else param.default
            for param, kind in zip(params, kinds, strict=True)
        )
        self._positional = sum(kind in _POSITIONAL for kind in kinds)
        where = {kind: i for i, kind in enumerate(kinds)}  # of *args and **kwargs: one each
        self._var_positional = where.get(inspect.Parameter.VAR_POSITIONAL)
        self._var_keyword = where.get(inspect.Parameter.VAR_KEYWORD)
        self._by_keyword = {n: i for i, n in enumerate(names) if kinds[i] in _BY_KEYWORD}
        self._positional_only = frozenset(
            n
            for n, kind in zip(names, kinds, strict=True)
            if kind is inspect.Parameter.POSITIONAL_ONLY
        )
        self._required = tuple(
            i
            for i, param in enumerate(params)
            if param.default is inspect.Parameter.empty
            and kinds[i] not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        )
        # fewest positional arguments a keyword-free call needs to be bound by slicing alone
        self._fewest = max(self._required, default=-1) + 1
        if (
            self._var_positional is not None
            or self._var_keyword is not None
            or any(kinds[i] is inspect.Parameter.KEYWORD_ONLY for i in self._required)
        ):
            self._fewest = sys.maxsize  # never: such calls take the general path

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[Any] | None:
        """The bound values of a call, in sorted name order; None when the call cannot bind."""
        count = len(args)
        values: Sequence[Any] | None
        if not kwargs and self._fewest <= count <= self._positional:
            values = args + self._defaults[count:] if count < len(self._defaults) else args
        else:
            values = self._bind_keywords(args, kwargs)
            if values is None:
                return self._bind_slowly(args, kwargs)
        return values if self._reorder is None else self._reorder(values)

    def _bind_slowly(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | None:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        return [bound.arguments[name] for name in self.names]

    def _bind_keywords(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | None:
        """Bound values in signature order; None when ``Signature.bind`` must decide."""
        filled = len(args)  # parameters given positionally
        positional = self._positional
        if filled <= positional:
            values = [*args, *self._defaults[filled:]]
        elif self._var_positional is None:
            return None
        else:
            values = [*args[:positional], *self._defaults[positional:]]
            values[self._var_positional] = args[positional:]
            filled = positional
        by_keyword = self._by_keyword
        extra = {}
        for name, value in kwargs.items():
            i = by_keyword.get(name)
            if i is None:
                if self._var_keyword is None or name in self._positional_only:
                    return None
                extra[name] = value
            elif i < filled:  # given twice
                return None
            else:
                values[i] = value
        if self._var_keyword is not None:
            values[self._var_keyword] = extra
        if filled < self._fewest:  # a required parameter may have no value
            for i in self._required:
                if values[i] is inspect.Parameter.empty:
                    return None
        return values


def _code_fingerprint(code: CodeType) -> str:
    """Text that tells apart code objects doing different things, the same in every process."""
    consts = [
        _code_fingerprint(const) if isinstance(const, CodeType) else repr(const)
        for const in code.co_consts
    ]
    return repr((code.co_code.hex(), code.co_names, code.co_varnames, code.co_freevars, consts))


def _short_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _function_name(func: object) -> str:
    """Module and qualified name, the same in every process; a lambda's code tells it apart."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    code = getattr(func, "__code__", None)
    if qualname.endswith("<lambda>") and isinstance(code, CodeType):
        # every lambda of a module has this qualname
        return f"{module}.{qualname}#{_short_digest(_code_fingerprint(code))}"
    return f"{module}.{qualname}"


def _closure_text(func: object) -> str:
    """What the variables a nested function closes over hold, where it can be named.

    ``make_greeter("hi")`` and ``make_greeter("bye")`` return functions of one qualified name
    that must not share results. Values shown only by an address are left out.
    """
    shown = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet: the function itself, when it recurses
            continue
        if isinstance(value, FunctionType):
            shown.append(_function_name(value))
            continue
        try:
            if _address_shown(value, set()) is None:
                shown.append(_stable_repr(value, set()))
        except Exception:  # a repr that fails names nothing, as an address does not
            continue
    return repr(shown) if shown else ""


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
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"cannot memoize {_function_name(func)}: it is a generator function, and the "
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
        self._signature = inspect.signature(func)
        self._binder = _Binder(self._signature)
        prefix = f"memoize:{_function_name(func)}"
        closure = _closure_text(func)
        if closure:
            prefix += f"~{_short_digest(closure)}"
        self._prefix = key_prefix if key_prefix is not None else prefix
        # key text -> key, of recent calls: the digest costs more than the text
        self._keys: dict[str, str] = {}
        # the key of a call without arguments, when no default can change its text
        self._bare_key: str | None = None
        bare = self._binder.bind((), {})
        if bare is not None and all(map(_immutable_plain, bare)):
            self._bare_key = self._key((), {})

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of one call.

        :raises TypeError: an argument's repr shows a memory address (the default
            ``object.__repr__``, functions): a later object at that address would be served
            this call's result, so there is no safe key.
        """
        return self._key(args, kwargs)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if not args and not kwargs and self._bare_key is not None:
            return self._bare_key
        binder = self._binder
        values = binder.bind(args, kwargs)
        if values is None:
            arguments = (args, sorted(kwargs.items()))
            text = _stable_repr(arguments, set())
            self._check_stable("the arguments", arguments, text)
        elif _all_plain(map(type, values)):
            text = binder.repr_template % tuple(values)
        else:
            text = binder.template % tuple(map(self._shown, binder.names, values))
        key = self._keys.get(text)
        if key is None:
            key = f"{self._prefix}:{_blake2b(text.encode(), digest_size=16).hexdigest()}"
            if len(text) <= _REMEMBERED_TEXT:
                if len(self._keys) >= _REMEMBERED_KEYS:
                    self._keys.clear()
                self._keys[text] = key
        return key

    def _shown(self, name: str, value: object) -> str:
        """The key text of the bound value of parameter ``name``."""
        kind = type(value)
        if kind in _PLAIN:
            return repr(value)
        # dict items come out sorted: f(a=1, b=2) and f(b=2, a=1) into **kwargs are one call
        if kind is list or kind is tuple or kind is dict:
            part = _plain_items_text(value) or _stable_repr(value, set())  # type: ignore[arg-type]
        elif kind in _SHOWN_ITEM_BY_ITEM:
            part = _stable_repr(value, set())
        else:
            part = repr(value)
        if " at 0x" in part:
            self._check_stable(f"argument {name!r}", value, part)
        return part

    def _check_stable(self, what: str, value: object, shown: str) -> None:
        if " at 0x" not in shown or _ADDRESS_REPR.search(shown) is None:
            return
        address = _address_shown(value, set())
        if address is not None:  # not merely text that looks like an address
            raise TypeError(
                f"cannot memoize {self.__module__}.{self.__qualname__}(): {what} is shown as "
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

    def __get__(self, instance: object, owner: type | None = None) -> Any:
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


class _BoundMemoized:
    """A memoized method bound to its instance."""

    def __init__(self, memoized: Memoized[Any, Any], instance: object) -> None:
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._memoized._call((self._instance, *args), kwargs)

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
    if inspect.iscoroutinefunction(target):
        return AsyncMemoized(cache, func, timeout, key_prefix)
    return Memoized(cache, func, timeout, key_prefix)


class _Flight:
    """One call of an async memoized function that other tasks of its event loop wait for."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.value: Any = None
        self.error: Exception | None = None
        self.ended = False  # False when the call was cancelled: a waiter must call again


class AsyncMemoized(Memoized[P, R]):
    """An ``async def`` function whose results are cached; made by :meth:`BaseCache.memoize`.

    Calling it returns a coroutine. Tasks of one event loop missing the same key await one
    call; the others get its result (read back from the cache, as a private copy) or its
    exception. When that call is cancelled, a waiting task calls the function in its place.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # (event loop, key) -> the call in progress; futures belong to one loop
        self._flights: dict[tuple[asyncio.AbstractEventLoop, str], _Flight] = {}
        target: Any = self.uncached
        while isinstance(target, functools.partial):
            target = target.func
        code = getattr(target, "__code__", None)
        if isinstance(code, CodeType):
            # what inspect.iscoroutinefunction(self) reads, as frameworks check it
            self.__code__ = code
            self.__defaults__ = getattr(target, "__defaults__", None)
            self.__kwdefaults__ = getattr(target, "__kwdefaults__", None)

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import asyncio

        key = self._key(args, kwargs)
        cache = self.cache
        flight_key = (asyncio.get_running_loop(), key)
        while True:
            errors = cache._errors
            value = cache.get(key)
            if value is not None:
                return value
            flight = self._flights.get(flight_key)
            if flight is None:
                break
            await asyncio.shield(flight.done)  # a waiter's cancellation leaves the call alone
            if flight.error is not None:
                raise flight.error  # counted as the miss of this call's lookup
            if cache._errors == errors:  # the lookup below counts this call instead
                cache._misses -= 1
            if flight.ended:
                value = cache.get(key)
                return flight.value if value is None else value
        return await self._lead(flight_key, args, kwargs)

    async def _lead(
        self,
        flight_key: tuple[asyncio.AbstractEventLoop, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call the function for every task of this loop that misses the same key."""
        cache = self.cache
        normalize_timeout(self.timeout, cache.default_timeout)  # raises before the call
        flight = self._flights[flight_key] = _Flight(flight_key[0].create_future())
        try:
            value = await cast(Any, self.uncached)(*args, **kwargs)
            if value is not None:
                cache.set(flight_key[1], value, self.timeout)
            flight.value, flight.ended = value, True
        except Exception as err:
            flight.error = err
            raise
        finally:
            # cancelled (or otherwise stopped): neither ended nor an error, so a waiter calls again
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
            flight.done.set_result(None)
        return value
