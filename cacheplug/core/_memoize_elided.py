"""How ``memoize`` keys a value whose ``repr`` leaves out part of it (an ellipsis, an array
library's summary): by a digest of its pickle, which holds all of it."""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
from types import GenericAlias, UnionType
from typing import Any

__all__ = ["ELISION_MARKS", "UnkeyableArgument", "pickled_text", "shortened", "whole_text"]


def shortened(shown: str) -> str:
    """``shown`` cut to a length an error message can quote."""
    return shown if len(shown) <= 120 else f"{shown[:60]}...{shown[-50:]}"


#: What a repr shows where it leaves out part of a value: reprlib, numpy, pandas, torch and
#: xarray write "...", some libraries "…". Inside a quoted string too: a text cut short
#: ('Lorem ipsum...') reads as one that ends in dots.
ELISION_MARKS = ("...", "\u2026")

# whose reprs show all of a value though they may hold "...": builtins, where it is a value's
# own text (bytearray(b'...')) or a self-reference, and type expressions (tuple[int, ...])
_SHOWN_IN_FULL_MODULES = frozenset({"builtins", "typing"})
_TYPE_EXPRESSIONS = (GenericAlias, UnionType)


def whole_text(value: object) -> str:
    """``repr(value)``, or a digest of its pickle where that repr leaves out part of it.

    Array-likes (``__array__``: pandas, torch, xarray round floats and show a few items) and
    scipy's sparse matrices (shown by shape and count alone) are never shown by their repr;
    nor is a value whose repr holds an elision mark outside the builtins and type expressions.
    """
    kind = type(value)
    if _summarized(value, kind):
        return pickled_text(value)
    shown = repr(value)
    for mark in ELISION_MARKS:
        if mark in shown:
            if kind.__module__ in _SHOWN_IN_FULL_MODULES or isinstance(value, _TYPE_EXPRESSIONS):
                return shown
            return pickled_text(value)
    return shown


def _summarized(value: object, kind: type) -> bool:
    """Whether ``value``'s repr is a summary of its contents, shortened or not."""
    try:
        return _SUMMARIZED_KINDS[kind]
    except KeyError:
        pass
    except TypeError:  # a metaclass making its classes unhashable: not remembered
        return _summarizing(value, kind)
    if len(_SUMMARIZED_KINDS) >= _REMEMBERED_KINDS:  # classes made at run time: bounded
        _SUMMARIZED_KINDS.clear()
    summarized = _SUMMARIZED_KINDS[kind] = _summarizing(value, kind)
    return summarized


def _summarizing(value: object, kind: type) -> bool:
    """``_summarized``, worked out: the same for every instance of ``kind``."""
    # in the classes' own namespaces: a metaclass __getattr__ (Enum's on 3.11) costs more
    if any("__array__" in vars(klass) for klass in kind.__mro__):
        numpy = sys.modules.get("numpy")  # its scalars' reprs are exact (np.float64(0.1))
        return numpy is None or not issubclass(kind, numpy.generic)
    sparse = sys.modules.get("scipy.sparse")  # loaded wherever there is a sparse matrix
    return sparse is not None and bool(sparse.issparse(value))


_SUMMARIZED_KINDS: dict[type, bool] = {}
_REMEMBERED_KINDS = 128


class UnkeyableArgument(TypeError):
    """A value whose repr leaves out part of it, and which cannot be pickled to key all of it."""

    def __init__(self, value: object, reason: str) -> None:
        try:
            self.shown = shortened(repr(value))
        except Exception:  # a repr that fails: its type names it
            self.shown = f"a {type(value).__qualname__}"
        self.reason = reason
        super().__init__(
            f"{self.shown} has a repr that leaves out part of it, and it cannot be pickled to "
            f"key all of it ({reason})"
        )


class _KeyPickler(pickle.Pickler):
    """Pickles classes by module and qualified name, as keys show them, so that instances of a
    class made in a function (which pickle cannot find by name) are keyed too."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            return _class_named, (obj.__module__, obj.__qualname__)
        return NotImplemented


def _class_named(module: str, qualname: str) -> type:
    """What a pickled key names a class by; never called: a key's pickle is only hashed."""
    raise NotImplementedError(f"{module}.{qualname}")


def pickled_text(value: object) -> str:
    """A text naming ``value``'s type and a digest of its pickle, which holds all of it.

    Equal values whose pickles differ (a set of strings inside, in another process) get
    different texts: a miss, never another value's result.

    :raises UnkeyableArgument: ``value`` cannot be pickled.
    """
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    try:
        # protocol fixed: the default changes with Python versions; large arrays are handed
        # out of band (buffer_callback), so they are hashed where they are, not copied
        _KeyPickler(stream, protocol=5, buffer_callback=buffers.append).dump(value)
    except Exception as err:  # PicklingError, TypeError, AttributeError: any __reduce__
        raise UnkeyableArgument(value, f"{type(err).__name__}: {err}") from err
    digest = hashlib.blake2b(stream.getbuffer(), digest_size=16)
    for buffer in buffers:  # pickle hands out contiguous buffers only
        with buffer.raw() as view:
            digest.update(len(view).to_bytes(8, "little"))
            digest.update(view)
    kind = type(value)
    # the NUL: no repr of an object shows one, so no other value's text is this one
    return f"<pickled {kind.__module__}.{kind.__qualname__} {digest.hexdigest()}>\x00"
