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
  signal would meet. On 3.11 settrace's opcode events drive it; on 3.12, 3.13 and 3.14
  sys.monitoring's (settrace sends none there), with their checks: a RESUME only at a
  function's start or after a ``yield``, a CALL's only when its callee ran from C, a
  JUMP_BACKWARD's.

  Not swept: 3.14 calls a with statement's ``__enter__`` with a CALL, whose check as a C
  ``__enter__`` (a lock's) returns raises before the with-block's handler, so ``__exit__`` is
  skipped (CPython gh-148874, fixed for 3.15). A Cut can only be raised at the instruction after
  that CALL, inside the block: the point fails the same-handler rule and is left out.
  ``entered_by_c`` finds those calls instead (tests/test_with_statements.py).

Used by tests/test_interrupt_*.py.
"""

from __future__ import annotations

import builtins
import contextlib
import dis
import functools
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType, FunctionType, MethodType
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
    call = -1  # the CALL's offset as f_lasti says while a Python callee runs
    called = -1
    for instruction in dis.get_instructions(code):
        if called >= 0:
            # up to 3.12 f_lasti is the CALL's last code unit (its inline cache), from 3.13 the CALL
            call = instruction.offset - 2 if sys.version_info < (3, 13) else called
            called = -1
        # a cut after the CALL is the signal's at the CALL only where the same handler catches it
        if call >= 0 and handler(code, instruction.offset) == handler(code, call):
            before[instruction.offset] = call
        if instruction.opname == "CALL":
            called = instruction.offset
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
            elif name in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF"):
                stack.append(frame.f_locals[arg])
            # two locals at once (3.13; 3.14's borrowing form)
            elif name in ("LOAD_FAST_LOAD_FAST", "LOAD_FAST_BORROW_LOAD_FAST_BORROW"):
                stack += [frame.f_locals[local] for local in arg]
            elif name == "LOAD_ATTR":
                stack.append(getattr(stack.pop(), arg))
            elif name == "BUILD_TUPLE":
                stack[len(stack) - arg :] = [tuple(stack[len(stack) - arg :])]
            elif name == "CHECK_EXC_MATCH":
                kinds = stack.pop()
                kinds = kinds if isinstance(kinds, tuple) else (kinds,)
                if any(not isinstance(kind, type) or issubclass(Cut, kind) for kind in kinds):
                    return False
            elif name in ("POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_IF_FALSE"):  # to the next clause
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
    if sys.version_info[:2] in ((3, 12), (3, 13), (3, 14)):
        # settrace sends no opcode events there to a frame whose trace turns them on
        return _cut_monitored(n, call, census)
    if sys.version_info[:2] != (3, 11):
        pytest.skip("cut_at_instruction reads the bytecode of CPython 3.11 to 3.14")
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


# -- instructions on 3.12 to 3.14: sys.monitoring ------------------------------------------

# calls after which CPython checks for pending signals unless it ran a Python function in
# place (3.12 runs a CALL_FUNCTION_EX's callee from C, 3.13 in place)
CALLS = frozenset({"CALL", "CALL_KW", "CALL_FUNCTION_EX"})


@functools.cache
def monitored_checks(code: CodeType) -> dict[int, tuple[int, ...]]:
    """Offset -> where the exception of a signal handled as the instruction there is reached
    is raised: the CALL before it (its check as the call of a C function ends), or the
    instruction itself, a JUMP_BACKWARD (3.12 checks as it has jumped, 3.13 before it jumps;
    either way the exception is raised at the jump, which changes nothing else). A RESUME's
    check comes through the PY_START and PY_RESUME events."""
    found: dict[int, tuple[int, ...]] = {}
    for first, following in itertools.pairwise(dis.get_instructions(code)):
        if first.opname in CALLS:
            found[following.offset] = (*found.get(following.offset, ()), first.offset)
        if first.opname == "JUMP_BACKWARD":
            found[first.offset] = (*found.get(first.offset, ()), first.offset)
    return found


def resume_checks(code: CodeType, offset: int) -> bool:
    """Whether the RESUME at ``offset`` checks for pending signals: at a function's start and
    after a ``yield``, not after a ``yield from`` or an ``await`` (its low bits say which)."""
    instruction = instructions_at(code).get(offset)
    return instruction is not None and (instruction.arg or 0) & 3 < 2


def runs_in_place(opname: str, callable_: object) -> bool:
    """Whether a call runs its callee in the caller's loop: no signal check as it returns."""
    if opname == "CALL_FUNCTION_EX":
        return sys.version_info >= (3, 13) and type(callable_) is FunctionType
    if type(callable_) is MethodType:
        callable_ = callable_.__func__
    return type(callable_) is FunctionType


# the events the tools below use: their callbacks are all unregistered after
_EVENTS = ("PY_START", "PY_RESUME", "CALL", "INSTRUCTION", "C_RETURN", "C_RAISE")


@contextlib.contextmanager
def _monitoring_tool(name: str) -> Iterator[tuple[int, set[CodeType]]]:
    """A free sys.monitoring tool id for the block, and a set for the code objects the block
    turns local events on for; every event and callback of the tool is cleared after it."""
    monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
    tool = next((t for t in (4, 3, 0, 2) if monitoring.get_tool(t) is None), None)
    if tool is None:
        raise RuntimeError("no sys.monitoring tool id is free")
    instrumented: set[CodeType] = set()
    monitoring.use_tool_id(tool, name)
    try:
        yield tool, instrumented
    finally:
        monitoring.set_events(tool, 0)
        for code in instrumented:
            monitoring.set_local_events(tool, code, 0)
        for event in _EVENTS:
            monitoring.register_callback(tool, getattr(monitoring.events, event), None)
        monitoring.free_tool_id(tool)


@contextlib.contextmanager
def each_instruction(
    select: Callable[[CodeType], bool], step: Callable[[FrameType], None]
) -> Iterator[None]:
    """Call ``step`` with the frame before each instruction of the code objects ``select``
    picks, in the calling thread, until the block ends (3.12 on: sys.monitoring; what ``step``
    raises is raised in that frame at that instruction)."""
    monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
    events = monitoring.events
    thread = threading.get_ident()

    with _monitoring_tool("cacheplug stepper") as (tool, instrumented):

        def started(code: CodeType, offset: int) -> Any:
            if code not in instrumented and select(code):
                instrumented.add(code)
                monitoring.set_local_events(tool, code, events.INSTRUCTION)
            return None

        def instruction(code: CodeType, offset: int) -> Any:
            if threading.get_ident() == thread:
                step(sys._getframe(1))
            return None

        monitoring.register_callback(tool, events.PY_START, started)
        monitoring.register_callback(tool, events.INSTRUCTION, instruction)
        monitoring.set_events(tool, events.PY_START)
        yield


def _cut_monitored(n: int, call: Callable[[], Any], census: list[Point] | None) -> CutResult:
    """``cut_at_instruction`` through sys.monitoring: a callback's exception is raised in the
    frame it reports on, at the instruction it reports. Only the calling thread is cut, as
    settrace traces only it."""
    monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
    events = monitoring.events
    seen = 0
    outcome = CutResult(cut=False)
    thread = threading.get_ident()
    c_calls: dict[FrameType, int] = {}  # frame -> offset of its last call run from C
    # tool and instrumented: bound by the with statement below, before any callback runs

    def point(frame: FrameType, code: CodeType, offset: int, start: bool) -> None:
        nonlocal seen
        seen += 1
        if census is not None:
            census.append(Point(_where(frame), code.co_name, start))
        elif seen == n:
            opname = instructions_at(code)[offset].opname
            outcome.cut = True
            outcome.where = f"{_where(frame)} ({code.co_name}, {opname})"
            raise Cut

    def started(code: CodeType, offset: int) -> Any:
        if not code.co_filename.startswith(PACKAGE_DIR):
            return None  # not DISABLE: 3.12 then loses events of cacheplug's code too
        if code not in instrumented:
            instrumented.add(code)
            monitoring.set_local_events(tool, code, events.INSTRUCTION | events.CALL)
        if not outcome.cut and threading.get_ident() == thread and resume_checks(code, offset):
            point(sys._getframe(1), code, offset, True)
        return None

    def called(code: CodeType, offset: int, callable_: object, arg0: object) -> Any:
        if outcome.cut or threading.get_ident() != thread:
            return None
        frame = sys._getframe(1)
        if runs_in_place(instructions_at(code)[offset].opname, callable_):
            c_calls.pop(frame, None)
        else:
            c_calls[frame] = offset
        return None

    def instruction(code: CodeType, offset: int) -> Any:
        raised_at = monitored_checks(code).get(offset)
        if raised_at is None:
            return monitoring.DISABLE
        if outcome.cut or threading.get_ident() != thread:
            return None
        frame = sys._getframe(1)
        last_call = c_calls.pop(frame, -1)
        here = effective_handler(frame, offset)
        if any(
            at in (offset, last_call) and effective_handler(frame, at) == here for at in raised_at
        ):
            point(frame, code, offset, False)
        return None

    try:
        with _monitoring_tool("cacheplug cutter") as (tool, instrumented):
            monitoring.register_callback(tool, events.PY_START, started)
            monitoring.register_callback(tool, events.PY_RESUME, started)
            monitoring.register_callback(tool, events.CALL, called)
            monitoring.register_callback(tool, events.INSTRUCTION, instruction)
            monitoring.set_events(tool, events.PY_START | events.PY_RESUME)
            try:
                outcome.result = call()
            except Cut:
                outcome.escaped = True
    finally:
        monitoring.restart_events()  # what DISABLE turned off
    return outcome


# -- with statements entering by a C call (3.14) ---------------------------------------------


def _enters_by_call(code: CodeType, offset: int) -> bool:
    """Whether the CALL at ``offset`` is a with statement's call of ``__enter__`` (3.14 on)."""
    before = None
    for instruction in dis.get_instructions(code):
        if instruction.offset == offset:
            return before == "LOAD_SPECIAL" and instruction.opname == "CALL"
        before = instruction.opname
    return False


def entered_by_c(call: Callable[[], Any]) -> list[str]:
    """Run ``call``; where each with statement of cacheplug it runs called a C ``__enter__``
    (as ``file:line type``): on 3.14 a signal handled as that call returns skips ``__exit__``
    (CPython gh-148874), and no Cut can be raised there to show it."""
    monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
    events = monitoring.events
    found: list[str] = []
    local = events.CALL | events.C_RETURN | events.C_RAISE  # C_RETURN comes only with these

    with _monitoring_tool("cacheplug enter census") as (tool, instrumented):

        def started(code: CodeType, offset: int) -> Any:
            if code.co_filename.startswith(PACKAGE_DIR) and code not in instrumented:
                instrumented.add(code)
                monitoring.set_local_events(tool, code, local)
            return None

        def returned(code: CodeType, offset: int, callable_: object, arg0: object) -> Any:
            if getattr(callable_, "__name__", "") == "__enter__" and _enters_by_call(code, offset):
                found.append(f"{_where(sys._getframe(1))} {type(arg0).__name__}")
            return None

        monitoring.register_callback(tool, events.PY_START, started)
        monitoring.register_callback(tool, events.C_RETURN, returned)
        monitoring.set_events(tool, events.PY_START)
        call()
    return found
