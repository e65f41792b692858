"""Review of memoize keys for arguments whose repr leaves out part of them: pandas-like frames
showing head and tail, torch-like tensors rounding floats, scipy sparse matrices, reprlib.

Each finding's test failed before its fix."""

from __future__ import annotations

import os
import reprlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from interpreter import run_python

from cacheplug import SimpleCache


class Frame:
    """Shows its first and last two rows with "..." between, as pandas does past max_rows."""

    def __init__(self, rows: Any) -> None:
        self.rows = list(rows)

    def __repr__(self) -> str:
        if len(self.rows) <= 4:
            return f"Frame({self.rows!r})"
        head, tail = self.rows[:2], self.rows[-2:]
        return f"Frame([{head[0]!r}, {head[1]!r}, ..., {tail[0]!r}, {tail[1]!r}])"


class Tensor:
    """An array-like whose repr rounds to four decimals, as torch's does."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        return np.array(self.values, dtype=dtype)

    def __repr__(self) -> str:
        return "tensor([" + ", ".join(f"{v:.4f}" for v in self.values) + "])"


class Note:
    """Shows its text cut short inside the quotes: 'Lorem ipsum...'."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Note({self.text[:8] + '...' if len(self.text) > 8 else self.text!r})"


class Shortened:
    """Shows its items through reprlib, which cuts lists after six."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"Shortened({reprlib.repr(self.items)})"


class LockedFrame(Frame):
    """A frame holding a lock: it cannot be pickled."""

    def __init__(self, rows: Any) -> None:
        super().__init__(rows)
        self.lock = threading.Lock()


def _summing() -> tuple[Callable[[Any], Any], list[Any]]:
    """A memoized function adding up its argument's items, and the arguments it really ran on."""
    ran: list[Any] = []
    cache = SimpleCache()

    @cache.memoize()
    def total(x: Any) -> Any:
        ran.append(x)
        items = getattr(x, "rows", None) or getattr(x, "values", None) or getattr(x, "items", None)
        return sum(items if items is not None else x.toarray().ravel().tolist())

    return total, ran


def test_memoize_tells_apart_arguments_whose_repr_shows_only_head_and_tail() -> None:
    total, ran = _summing()
    assert repr(Frame(range(10))) == repr(Frame([0, 1, 100, 8, 9]))
    assert total(Frame(range(10))) == 45
    assert total(Frame([0, 1, 100, 8, 9])) == 118
    assert total(Frame([0, 1, 5, 5, 5, 8, 9])) == 33
    assert total(Frame(range(10))) == 45  # an equal frame: its result, from the cache
    assert len(ran) == 3


def test_memoize_tells_apart_array_likes_whose_repr_rounds() -> None:
    total, ran = _summing()
    assert repr(Tensor([0.12341])) == repr(Tensor([0.12342]))
    assert total(Tensor([0.12341])) == 0.12341
    assert total(Tensor([0.12342])) == 0.12342
    assert total(Tensor([0.12341])) == 0.12341
    assert len(ran) == 2


def test_memoize_tells_apart_scipy_sparse_matrices_of_one_shape_and_count() -> None:
    sparse = pytest.importorskip("scipy.sparse")
    total, ran = _summing()
    a, b, again = (
        sparse.csr_matrix(np.array(rows))
        for rows in ([[1.0, 0.0], [0.0, 2.0]], [[5.0, 0.0], [0.0, 7.0]], [[1.0, 0.0], [0.0, 2.0]])
    )
    assert repr(a) == repr(b)
    assert (total(a), total(b), total(again)) == (3.0, 12.0, 3.0)
    assert len(ran) == 2


def test_memoize_tells_apart_reprs_cut_inside_a_string_or_by_reprlib() -> None:
    total, _ = _summing()

    @SimpleCache().memoize()
    def length(note: Note) -> int:
        return len(note.text)

    assert length(Note("Lorem ipsum dolor")) == 17
    assert length(Note("Lorem ipsum")) == 11
    assert total(Shortened(list(range(20)))) == 190
    assert total(Shortened(list(range(30)))) == 435


def test_memoize_tells_apart_eliding_values_inside_containers_and_dataclasses() -> None:
    @dataclass
    class Job:
        name: str
        frame: Frame

    cache = SimpleCache()

    @cache.memoize()
    def f(job: Job, frames: list[Frame], *, by: dict[str, Frame]) -> int:
        return sum(job.frame.rows) + sum(frames[0].rows) + sum(by["k"].rows)

    ten, other = Frame(range(10)), Frame([0, 1, 100, 8, 9])
    assert f(Job("j", ten), [ten], by={"k": ten}) == 135
    assert f(Job("j", other), [ten], by={"k": ten}) == 208
    assert f(Job("j", ten), [other], by={"k": ten}) == 208
    assert f(Job("j", ten), [ten], by={"k": other}) == 208


def test_memoize_shows_numpy_arrays_held_by_an_object_in_full() -> None:
    class Holder:
        """Shows its array by numpy's repr, which elides past 1000 items."""

        def __init__(self, array: np.ndarray[Any, Any]) -> None:
            self.array = array

        def __repr__(self) -> str:
            return f"Holder({self.array!r})"

    cache = SimpleCache()

    @cache.memoize()
    def f(h: Holder) -> int:
        return int(h.array.sum())

    base = np.arange(5000)
    changed = base.copy()
    changed[2500] = 0
    assert repr(Holder(base)) == repr(Holder(changed))
    assert f(Holder(base)) != f(Holder(changed))
    assert f.cache_key(Holder(base)) == f.cache_key(Holder(np.arange(5000)))


def test_memoize_refuses_an_eliding_argument_that_cannot_be_pickled() -> None:
    total, ran = _summing()
    with pytest.raises(TypeError, match=r"argument 'x' holds Frame\(\[0, 1, \.\.\..*pickled"):
        total(LockedFrame(range(10)))
    with pytest.raises(TypeError, match="digest of your own"):
        total.cache_key([LockedFrame(range(10))])  # type: ignore[attr-defined]
    assert ran == []
    assert total(LockedFrame(range(3))) == 3  # shown in full: its repr keys it


def test_memoize_keys_of_eliding_arguments_agree_across_processes() -> None:
    code = (
        "import numpy as np\n"
        "from cacheplug import SimpleCache\n"
        "class Holder:\n"
        "    def __init__(self): self.array, self.tags = np.arange(5000), ['a', 'b']\n"
        "    def __repr__(self): return f'Holder({self.array!r})'\n"
        "@SimpleCache().memoize()\n"
        "def f(h): return 1\n"
        "print(f.cache_key(Holder()))"
    )
    keys = {run_python(code, {**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2")}
    assert len(keys) == 1


def test_memoize_keeps_repr_keys_where_an_ellipsis_elides_nothing() -> None:
    """Builtins and type expressions show "..." as a value: still keyed by their repr, so
    a type expression naming an unpicklable (local) class is no error."""

    class Local:
        pass

    cache = SimpleCache()

    @cache.memoize()
    def f(x: Any) -> str:
        return repr(x)

    assert f(bytearray(b"...")) == "bytearray(b'...')"
    assert f(tuple[Local, ...]) != f(tuple[int, ...])
    assert f(Callable[..., Local]) != f(Callable[..., int])
    assert f.cache_key(tuple[int, ...]) == f.cache_key(tuple[int, ...])


def test_memoize_keys_self_references_by_repr_not_as_elisions() -> None:
    """A dataclass holding itself is shown with "..." where it comes again: that stands for
    what is being shown, so it is no reason to pickle it (here it could not be)."""

    @dataclass
    class Node:
        value: int
        next: Any = None
        lock: Any = field(default_factory=threading.Lock, repr=False)

    cache = SimpleCache()

    @cache.memoize()
    def f(node: Node) -> int:
        return int(node.value)

    one, two = Node(1), Node(2)
    one.next, two.next = one, two
    assert (f(one), f(two)) == (1, 2)
    assert f.cache_key(one) != f.cache_key(two)


class Quantity(np.ndarray):  # type: ignore[type-arg]
    """An array with a unit, kept in an attribute as astropy's Quantity keeps it."""

    unit: str | None

    def __new__(cls, values: list[float], unit: str) -> Quantity:
        made = np.asarray(values).view(cls)
        made.unit = unit
        return made

    def __array_finalize__(self, obj: Any) -> None:
        self.unit = getattr(obj, "unit", None)


def test_memoize_tells_apart_numpy_subclasses_by_their_attributes() -> None:
    cache = SimpleCache()

    @cache.memoize()
    def in_metres(q: Quantity) -> float:
        return float(q.view(np.ndarray)[0]) * (1000 if q.unit == "km" else 1)

    assert in_metres(Quantity([1.0], "m")) == 1.0
    assert in_metres(Quantity([1.0], "km")) == 1000.0
    assert in_metres.cache_key(Quantity([1.0], "m")) == in_metres.cache_key(Quantity([1.0], "m"))
