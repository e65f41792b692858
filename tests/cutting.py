"""Cutting a call short at the points where a signal handler's exception can show up.

A trace function raises ``Cut`` (a ``BaseException``, as ``KeyboardInterrupt`` or a deadline
raised from a signal handler is) at the N-th such point in a frame of the cacheplug package,
for N = 1, 2, ... until the call ends before reaching N. Two ways to count the points:

- ``call_cut_at``: line starts (a line's first instruction, where it follows a call whose
  exception handler is its own). A line start misses a signal handled as a C call returns
  inside a line: ``if not lock.acquire(blocking=False):`` returning True, then the signal,
  before the ``try`` on the next line.
- ``cut_at_instruction``: the instructions where CPython handles pending signals: a function's
  start (a generator's resume included), right after a call of a C function, and the target of
  a backward jump; each only where a ``Cut`` raised there meets the exception handler the
  signal would meet.

Used by tests/test_interrupt_*.py.
"""

from __future__ import annotations

import builtins
import dis
import functools
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

import pytest

import cacheplug

PACKAGE_DIR = os.path.dirname(cacheplug.__file__) + os.sep


class Cut(BaseException):
    """What a signal handler raises to cut a call short."""


@dataclass
class CutResult:
    cut: bool  # the N-th point came and Cut was raised there
    where: str = ""  # file:line of that point (cut_at_instruction adds function and opcode)
    escaped: bool = False  # Cut reached the caller (False: something swallowed it)
    result: Any = None


@dataclass
class Point:
    """A place in cacheplug where a signal handler's exception can show up."""

    where: str  # file:line
    function: str
    start: bool  # the start of the function (a signal check of its RESUME)


def _run_traced(
    global_trace: Callable[[FrameType, str, Any], Any], call: Callable[[], Any], outcome: CutResult
) -> CutResult:
    sys.settrace(global_trace)
    try:
        outcome.result = call()
    except Cut:
        outcome.escaped = True
    finally:
        sys.settrace(None)
    return outcome


def _entering(
    outcome: CutResult,
    started: set[FrameType],
    python_calls: dict[FrameType, int],
    local: Callable[[FrameType, str, Any], Any],
    resumed: set[FrameType] | None = None,
) -> Callable[[FrameType, str, Any], Any]:
    """The global trace function: notes each call a traced frame makes of Python code (in
    ``python_calls``: its caller's f_lasti), and traces cacheplug's frames with ``local``, by
    instruction when ``resumed`` is given (it collects the generators resumed)."""

    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        caller = frame.f_back
        if caller is not None and caller in started:
            python_calls[caller] = caller.f_lasti
        if outcome.cut or not _ours(frame):
            return None
        if resumed is not None:
            if frame in started:
                resumed.add(frame)
            frame.f_trace_opcodes = True
        return local

    return global_trace


def _ours(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(PACKAGE_DIR)


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename[len(PACKAGE_DIR) :]}:{frame.f_lineno}"


@functools.cache
def exception_table(code: CodeType) -> list[Any]:
    return dis._parse_exception_table(code)  # type: ignore[attr-defined,no-any-return]


def handler(code: CodeType, offset: int) -> int:
    """The offset of the handler of an exception raised at ``offset`` (-1: none)."""
    return next((e.target for e in exception_table(code) if e.start <= offset < e.end), -1)


# -- line starts ---------------------------------------------------------------------------

# what can follow the CALL a signal cut short before the next line starts, with no effect a
# cut there would skip that a cut at the CALL would not
QUIET = frozenset({"POP_TOP", "STORE_FAST", "NOP"})


@functools.cache
def calls_before(code: CodeType) -> dict[int, int]:
    """Offset -> the CALL just before it, for offsets that follow a CALL: where a signal
    handler's exception shows up (CPython checks for pending signals when a call of a C
    function returns, and when a Python function starts), unlike the first instruction of a
    with-block's exit or of a finally-block copied before a return."""
    before: dict[int, int] = {}
    call = -1  # the offset of the CALL's last code unit (its inline cache), as f_lasti says
    called = False
    for instruction in dis.get_instructions(code):
        if called:
            call, called = instruction.offset - 2, False
        # a cut after the CALL is the signal's at the CALL only where the same handler catches it
        if call >= 0 and handler(code, instruction.offset) == handler(code, call):
            before[instruction.offset] = call
        if instruction.opname == "CALL":
            called = True
        elif instruction.opname not in QUIET:
            call = -1
    return before


def call_cut_at(n: int, call: Callable[[], Any]) -> CutResult:
    """Run ``call``, raising Cut at its ``n``-th line start inside cacheplug."""
    seen = 0
    outcome = CutResult(cut=False)

    started: set[FrameType] = set()
    # frame -> offset of its last CALL of a Python function: once that returns, no signal
    # is handled before the next C call, so a cut right after it is out of a signal's reach
    python_calls: dict[FrameType, int] = {}

    def reachable(frame: FrameType, first: bool) -> bool:
        call = calls_before(frame.f_code).get(frame.f_lasti, -1)
        return first or (call >= 0 and python_calls.get(frame) != call)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line" and not outcome.cut:
            first = frame not in started
            started.add(frame)
            if not reachable(frame, first):
                return local
            seen += 1
            if seen == n:
                outcome.cut = True
                outcome.where = _where(frame)
                raise Cut
        return local

    return _run_traced(_entering(outcome, started, python_calls, local), call, outcome)


# -- instructions ----------------------------------------------------------------------------


@functools.cache
def instructions_at(code: CodeType) -> dict[int, dis.Instruction]:
    return {instruction.offset: instruction for instruction in dis.get_instructions(code)}


@functools.cache
def signal_checks(code: CodeType) -> dict[int, int]:
    """Offset -> where the exception of a signal handled just before it is raised, for each
    instruction that follows a CALL (raised at the CALL's last code unit, its inline cache, as
    f_lasti says while the callee runs) or is the target of a backward jump (raised at the code
    unit before the target): CPython checks for pending signals as those end."""
    found: dict[int, int] = {}
    for first, following in itertools.pairwise(dis.get_instructions(code)):
        if first.opname == "CALL":
            found[following.offset] = following.offset - 2
        elif first.opname == "JUMP_BACKWARD":
            found[first.argval] = first.argval - 2
    return found


def _clauses_let_through(frame: FrameType, offset: int) -> bool:
    """Whether the ``except`` clause at ``offset`` and those after it leave a Cut alone."""
    at = instructions_at(frame.f_code)
    if at[offset].opname == "RERAISE":  # past the last clause: the exception goes on
        return True
    stack: list[Any] = []
    for later in sorted(at):
        if later < offset:
            continue
        name, arg = at[later].opname, at[later].argval
        try:
            if name == "LOAD_GLOBAL":
                stack.append(
                    frame.f_globals[arg] if arg in frame.f_globals else vars(builtins)[arg]
                )
            elif name in ("LOAD_FAST", "LOAD_DEREF"):
                stack.append(frame.f_locals[arg])
            elif name == "LOAD_ATTR":
                stack.append(getattr(stack.pop(), arg))
            elif name == "BUILD_TUPLE":
                stack[len(stack) - arg :] = [tuple(stack[len(stack) - arg :])]
            elif name == "CHECK_EXC_MATCH":
                kinds = stack.pop()
                kinds = kinds if isinstance(kinds, tuple) else (kinds,)
                if any(not isinstance(kind, type) or issubclass(Cut, kind) for kind in kinds):
                    return False
            elif name == "POP_JUMP_FORWARD_IF_FALSE":  # to the next clause
                return _clauses_let_through(frame, arg)
            else:
                return False
        except (KeyError, AttributeError):
            return False
    return False


def lets_cut_through(frame: FrameType, target: int) -> bool:
    """Whether the handler at ``target`` has only ``except`` clauses of types that ``Cut`` is
    not: it reraises a Cut untouched. (A ``finally``, a ``with`` or a bare ``except`` runs
    code: not.)"""
    at = instructions_at(frame.f_code)
    return at[target].opname == "PUSH_EXC_INFO" and _clauses_let_through(frame, target + 2)


def effective_handler(frame: FrameType, offset: int) -> int:
    """Where a Cut raised at ``offset`` is caught, past the handlers that only reraise it."""
    code = frame.f_code
    target = handler(code, offset)
    while target >= 0 and lets_cut_through(frame, target):
        cleanup = handler(code, target)  # a reraise from the handler goes there first
        target = handler(code, cleanup) if cleanup >= 0 else -1
    return target


def cut_at_instruction(
    n: int, call: Callable[[], Any], census: list[Point] | None = None
) -> CutResult:
    """Run ``call``, raising ``Cut`` at the ``n``-th instruction of cacheplug where CPython
    handles a pending signal (see the module's docstring). With ``census``, nothing is cut
    (``n`` is ignored) and every such point goes into it."""
    if sys.version_info[:2] != (3, 11):
        # 3.12 sends no opcode events to a frame whose trace turns them on, and the bytecode,
        # its caches and its jumps differ from 3.12 on: what this reads would be wrong
        pytest.skip("cut_at_instruction reads CPython 3.11's bytecode")
    seen = 0
    outcome = CutResult(cut=False)
    started: set[FrameType] = set()
    resumed: set[FrameType] = set()  # generators resumed: their RESUME checks for signals too
    python_calls: dict[FrameType, int] = {}  # frame -> f_lasti of its last call of Python code

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event != "opcode" or outcome.cut:
            return local
        first = frame not in started or frame in resumed
        started.add(frame)
        resumed.discard(frame)
        offset = frame.f_lasti
        raised_at = signal_checks(frame.f_code).get(offset, -1)
        if not first and (
            raised_at < 0
            or python_calls.get(frame) == raised_at  # a Python function returned: no check
            # raised here, the Cut must meet the handler the signal's exception meets
            or effective_handler(frame, raised_at) != effective_handler(frame, offset)
        ):
            return local
        seen += 1
        if census is not None:
            census.append(Point(_where(frame), frame.f_code.co_name, first))
        elif seen == n:
            opname = instructions_at(frame.f_code)[offset].opname
            outcome.cut = True
            outcome.where = f"{_where(frame)} ({frame.f_code.co_name}, {opname})"
            raise Cut
        return local

    tracer = _entering(outcome, started, python_calls, local, resumed)
    return _run_traced(tracer, call, outcome)
