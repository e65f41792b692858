"""How the plugin registry words a plugin's failures: an exception on one line, the error for a
hook that returned instead of registering, the error for a name two plugins claim; with the
stack level that points a warning at the caller, and the re-raising of Ctrl-C.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

from cacheplug.core._plugins_records import DISABLE_ENV
from cacheplug.core.errors import PluginError
from cacheplug.core.serializer import error_text

if TYPE_CHECKING:
    from types import FrameType

    from cacheplug.core._plugins_records import Entry, Origin

__all__ = ["answer_error", "caller_stacklevel", "clash_error", "describe", "reraise_interrupt"]


def describe(err: BaseException) -> str:
    """``Type: message`` on one line (pluggy's validation errors span several).

    A plugin's exception whose ``__str__`` fails is described as unprintable: its failure
    would otherwise escape the loading of every plugin, built-ins included.
    """
    name, text = type(err).__name__, error_text(err)
    return " ".join((name if text == name else f"{name}: {text}").split())


def reraise_interrupt(err: BaseException) -> None:
    """Raise ``err`` again if it is Ctrl-C: the one exception a plugin's failure must not hide."""
    if isinstance(err, KeyboardInterrupt):
        raise err


def answer_error(answer: object, origin: Origin, hook: str) -> PluginError:
    """The error for a hook that returned ``answer`` instead of calling ``register``: what it
    meant to register (a dict of names, an ``async def``'s or a generator's body) is lost."""
    if inspect.iscoroutine(answer) or inspect.isgenerator(answer):
        answer.close()  # never run: no "coroutine was never awaited" warning on top
    return PluginError(
        f"{origin}'s {hook}() returned a {type(answer).__name__} instead of None; a cacheplug "
        "hook is a plain function that registers by calling register(name, target)"
    )


def clash_error(entry: Entry, kind: str) -> PluginError:
    claimants = [entry.origin, *entry.clashes]
    options = " or ".join(f"{DISABLE_ENV}={o.plugin}" for o in claimants if not o.builtin)
    return PluginError(
        f"{kind} {entry.name!r} is claimed by "
        + " and by ".join(str(o) for o in claimants)
        + f"; disable one of them with {options}"
    )


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside cacheplug."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "cacheplug" and not module.startswith("cacheplug."):
            return level
        frame = frame.f_back
        level += 1
    return 1
