"""How ``memoize`` turns a call into a cache key: the arguments bound to the signature, shown
by a ``repr`` that is the same in every process, and the function's own name and closure."""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from operator import itemgetter
from types import CodeType, FunctionType, ModuleType
from typing import Any

from cacheplug.core._memoize_elided import UnkeyableArgument, shortened, whole_text

__all__ = [
    "ADDRESS_REPR",
    "BY_KEYWORD",
    "DEFAULT_SHOWN",
    "PLAIN",
    "POSITIONAL",
    "REMEMBERED_KEYS",
    "REMEMBERED_TEXT",
    "SHOWN_ITEM_BY_ITEM",
    "Binder",
    "address_shown",
    "all_plain",
    "bound_object",
    "called_function",
    "closure_text",
    "code_fingerprint",
    "function_name",
    "immutable_plain",
    "item_text",
    "partial_parts",
    "plain_items_text",
    "short_digest",
    "stable_repr",
]

# CPython's default repr ends in the object's address, which a later object can reuse
ADDRESS_REPR = re.compile(r" at 0x[0-9a-fA-F]+>")


def address_shown(value: object, seen: set[int]) -> str | None:
    """The first address-bearing repr inside ``value``; text inside str or bytes does not count."""
    kind = type(value)
    if kind is str or kind is bytes or id(value) in seen:
        return None
    if kind in (list, tuple, set, frozenset, dict):
        seen.add(id(value))
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for item in items:  # type: ignore[attr-defined]
            found = address_shown(item, seen)
            if found is not None:
                return found
        return None
    shown = repr(value)
    if ADDRESS_REPR.search(shown) is None:
        return None
    return shortened(shown)


SHOWN_ITEM_BY_ITEM = frozenset({list, tuple, dict, set, frozenset})


def stable_repr(value: object, open_ids: set[int]) -> str:
    """``repr(value)``, with the items of sets and dicts in sorted order.

    Equal sets and dicts then give one text whatever their order, and sets of strings the same
    text in every process (their order follows the per-process string hash); list and tuple
    texts stay their repr. ``open_ids``: the containers being shown, for self-references.
    """
    kind = type(value)
    if kind not in SHOWN_ITEM_BY_ITEM:
        return item_text(value, open_ids)
    if id(value) in open_ids:
        return "..."
    open_ids.add(id(value))
    try:
        if kind is dict:
            pairs = sorted(
                f"{stable_repr(k, open_ids)}: {stable_repr(v, open_ids)}"
                for k, v in value.items()  # type: ignore[attr-defined]
            )
            return "{" + ", ".join(pairs) + "}"
        parts = [stable_repr(item, open_ids) for item in value]  # type: ignore[attr-defined]
        if kind is list:
            return "[" + ", ".join(parts) + "]"
        if kind is tuple:
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        body = "{" + ", ".join(sorted(parts)) + "}" if parts else ""
        return (body or "set()") if kind is set else f"frozenset({body})"
    finally:
        open_ids.discard(id(value))


def item_text(value: object, open_ids: set[int]) -> str:
    """``repr(value)``, or a text showing all of it where the repr elides, rounds or fails.

    numpy arrays and compiled patterns abbreviate long contents (and numpy rounds floats), so
    two different values would share one text; an int past ``sys.get_int_max_str_digits``
    has no repr; dataclasses and named tuples with their generated repr show their fields as
    ``stable_repr`` does, so a set inside them has one text in every process. Any other value
    whose repr leaves out part of it is shown by a digest of its pickle (``whole_text``).
    """
    kind = type(value)
    if kind in PLAIN:
        try:
            return repr(value)
        except ValueError:  # only an int past sys.get_int_max_str_digits has no repr
            return hex(value)  # type: ignore[arg-type]
    if kind is re.Pattern and isinstance(value, re.Pattern):
        return f"re.compile({value.pattern!r}, {value.flags!r})"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        items = stable_repr(value.tolist(), open_ids)
        if kind is numpy.ndarray:
            return f"numpy.ndarray({value.shape!r}, {value.dtype.str!r}, {items})"
        # a subclass computes otherwise (numpy.matrix) and may hold more than its items (a
        # unit, a mask), in attributes tolist leaves out
        name = f"{kind.__module__}.{kind.__qualname__}"
        attributes = stable_repr(getattr(value, "__dict__", {}), open_ids)
        return f"{name}({value.shape!r}, {value.dtype.str!r}, {items}, {attributes})"
    fields = _generated_repr_fields(value)
    if fields is None:
        return whole_text(value)
    if id(value) in open_ids:  # inside itself: its "..." stands for what is being shown
        return repr(value)
    open_ids.add(id(value))
    try:
        shown = ", ".join(f"{name}={stable_repr(item, open_ids)}" for name, item in fields)
    finally:
        open_ids.discard(id(value))
    return f"{kind.__qualname__}({shown})"


def _generated_repr_fields(value: object) -> list[tuple[str, Any]] | None:
    """The (name, value) pairs a named tuple's or dataclass's generated repr shows; else None."""
    method = type(value).__repr__
    if isinstance(value, tuple):
        if getattr(method, "__code__", None) is _NAMEDTUPLE_REPR:
            return list(zip(type(value)._fields, value, strict=True))  # type: ignore[attr-defined]
        return None
    # dataclasses wrap their generated repr (reprlib.recursive_repr); most reprs are unwrapped
    wrapped = getattr(method, "__wrapped__", None)
    if wrapped is None or getattr(wrapped, "__qualname__", None) != _DATACLASS_REPR:
        return None
    import dataclasses

    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr]  # type: ignore[arg-type]


_NAMEDTUPLE_REPR = collections.namedtuple("_Sample", "")().__repr__.__code__
_DATACLASS_REPR = "__create_fn__.<locals>.__repr__"


#: The key text of a parameter given its own default object, passed or left out, where that
#: object's repr shows an address (a ``_MISSING = object()`` sentinel): the function holds it,
#: so no other object takes its address, and every process has its own.
DEFAULT_SHOWN = "<default>\x00"


# the most keys of recent calls each memoized function remembers, and their longest text
REMEMBERED_KEYS = 128
REMEMBERED_TEXT = 160
PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
all_plain = PLAIN.issuperset


def plain_items_text(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> str | None:
    """``stable_repr(value)`` for a list, tuple or dict made only of plain values; else None."""
    if type(value) is dict:
        if all_plain(map(type, value)) and all_plain(map(type, value.values())):
            try:
                return "{" + ", ".join(sorted([f"{k!r}: {v!r}" for k, v in value.items()])) + "}"
            except ValueError:  # an int too long for a repr
                return None
    elif all_plain(map(type, value)):
        try:
            return repr(value)  # items in order, as stable_repr shows them
        except ValueError:  # an int too long for a repr
            return None
    return None


def immutable_plain(value: object) -> bool:
    """Whether ``value``'s key text can never change: a plain value or a tuple of them."""
    kind = type(value)
    return kind in PLAIN or (kind is tuple and all_plain(map(type, value)))  # type: ignore[call-overload]


POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Binder:
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
        self._positional = sum(kind in POSITIONAL for kind in kinds)
        where = {kind: i for i, kind in enumerate(kinds)}  # of *args and **kwargs: one each
        self._var_positional = where.get(inspect.Parameter.VAR_POSITIONAL)
        self._var_keyword = where.get(inspect.Parameter.VAR_KEYWORD)
        self._by_keyword = {n: i for i, n in enumerate(names) if kinds[i] in BY_KEYWORD}
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


def code_fingerprint(code: CodeType) -> str:
    """Text that tells apart code objects doing different things, the same in every process."""
    consts = [
        # stable_repr: a set literal is a frozenset constant, shown in per-process hash order
        code_fingerprint(const) if isinstance(const, CodeType) else stable_repr(const, set())
        for const in code.co_consts
    ]
    return repr((code.co_code.hex(), code.co_names, code.co_varnames, code.co_freevars, consts))


def short_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def function_name(func: object) -> str:
    """Module and qualified name, the same in every process; a lambda's code tells it apart,
    a ``functools.partial`` the arguments it binds (its repr shows an address)."""
    if isinstance(func, functools.partial):
        arguments = (func.args, sorted(func.keywords.items()))
        try:
            bound = stable_repr(arguments, set())
        except UnkeyableArgument:  # a name, for messages: its repr will do
            bound = repr(arguments)
        return f"{function_name(func.func)}{bound}"
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    code = getattr(func, "__code__", None)
    if qualname.endswith("<lambda>") and isinstance(code, CodeType):
        # every lambda of a module has this qualname
        return f"{module}.{qualname}#{short_digest(code_fingerprint(code))}"
    if isinstance(code, CodeType) and code.co_qualname != qualname:
        # functools.wraps gave it the name of the function it wraps: wrappers made by
        # different decorators do different things
        return f"{module}.{qualname}/{code.co_qualname}"
    return f"{module}.{qualname}"


def partial_parts(func: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The function a ``functools.partial`` (of a partial...) calls, and the positional and
    keyword arguments it binds; ``func``, ``()``, ``{}`` for anything else."""
    args: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    while isinstance(func, functools.partial):
        args, keywords = func.args + args, {**func.keywords, **keywords}
        func = func.func
    return func, args, keywords


def bound_object(func: object) -> object:
    """The object a call of ``func`` works on without being passed it; None for a function.

    A bound method's object, also a builtin's (``"{}!".format``, ``prices.get``, a compiled
    pattern's ``sub``, ``(1).__add__``), or a callable object itself (one without a
    ``__qualname__``); a module is no such object (``len``, ``math.sqrt``).
    """
    if not getattr(func, "__qualname__", None):
        return func
    owner = getattr(func, "__self__", None)
    return None if isinstance(owner, ModuleType) else owner


def called_function(func: object) -> object:
    """What a call of ``func`` runs: the function of a partial, a callable object's
    ``__call__``; whether it is a coroutine or generator function tells what ``func`` is."""
    func = partial_parts(func)[0]
    if isinstance(getattr(func, "__code__", None), CodeType) or not callable(func):
        return func
    return type(func).__call__


def closure_text(func: object, open_ids: set[int] | None = None) -> str:
    """What the variables a nested function closes over hold, where it can be named.

    ``make_greeter("hi")`` and ``make_greeter("bye")`` return functions of one qualified name
    that must not share results. Values shown only by an address are left out.
    """
    while isinstance(func, functools.partial):  # a partial of a closure: the closure's values
        func = func.func
    open_ids = set() if open_ids is None else open_ids
    if id(func) in open_ids:  # a function closing over itself (recursion)
        return ""
    open_ids.add(id(func))
    shown = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet: the function itself, when it recurses
            continue
        if isinstance(value, FunctionType):
            # a helper made by the same call: what it closes over tells the calls apart
            shown.append(function_name(value) + closure_text(value, open_ids))
            continue
        try:
            if address_shown(value, set()) is None:
                shown.append(stable_repr(value, set()))
        except Exception:  # a repr that fails names nothing, as an address does not
            continue
    return repr(shown) if shown else ""
