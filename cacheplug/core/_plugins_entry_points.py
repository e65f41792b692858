"""Loading the ``cacheplug`` entry points of installed distributions, except those
``CACHEPLUG_DISABLE_PLUGINS`` names: a plugin that fails to load is warned about (or raises,
with ``CACHEPLUG_STRICT_PLUGINS``) and recorded as broken. ``importlib.metadata`` is imported
here only, when entry points are loaded.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections import Counter
from typing import TYPE_CHECKING

from cacheplug.core._plugins_errors import caller_stacklevel, describe, reraise_interrupt
from cacheplug.core._plugins_hooks import PluginHooks
from cacheplug.core._plugins_records import (
    BUILTIN_PLUGINS,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    Broken,
    Origin,
)
from cacheplug.core.errors import PluginError, PluginLoadWarning

if TYPE_CHECKING:
    import importlib.metadata
    from contextlib import AbstractContextManager

__all__ = ["EntryPoints"]


class EntryPoints(PluginHooks):
    """How a registry loads the installed plugins, and what it tells of those it could not."""

    strict: bool
    broken: list[Broken]
    entry_points_read: bool
    unknown_disabled: set[str]
    installed: str
    locked: AbstractContextManager[object]

    def _load_entry_points(self) -> None:
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        if "*" in disabled:
            return
        for name in disabled.difference(BUILTIN_PLUGINS):
            self.pm.set_blocked(name)
        self.entry_points_read = True
        import importlib.metadata

        installed = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        # An entry-point name is unique only within its distribution: one that several
        # distributions use names each of them as "distribution:name", so that neither
        # silently stands in for the other and each can be disabled alone.
        names = {ep: _plugin_name(ep) for ep in installed}
        counts = Counter(name for name, _ in names.values())
        shared = {name for name, count in counts.items() if count > 1}
        known = {name for pair in names.values() for name in pair}
        # warned about on the first lookup: a runtime plugin may yet be refused by one
        self.unknown_disabled = disabled.difference(known)
        self.installed = ", ".join(sorted(q if n in shared else n for n, q in names.values()))
        self.installed = self.installed or "none"
        for ep, (name, qualified) in names.items():
            if name in disabled or qualified in disabled:
                continue
            dist = ep.dist
            origin = Origin(
                qualified if name in shared else name,
                dist.name if dist is not None else "unknown distribution",
                dist.version if dist is not None else "unknown version",
            )
            try:
                taken = self.origins.get(origin.plugin)
                if taken is not None:
                    raise PluginError(f"its entry-point name is already used by {taken}")
                self.add(ep.load(), origin)
            # SystemExit and the like too: a plugin calling sys.exit() (argparse at import...)
            # must not end the program that merely asked for a cache.
            except BaseException as err:
                reraise_interrupt(err)
                message = (
                    f"cacheplug {origin} failed to load from {ep.value!r}: "
                    f"{describe(err)}; set {DISABLE_ENV}={origin.plugin} to skip it"
                )
                if self.strict:
                    raise PluginError(message) from err
                warnings.warn(message, PluginLoadWarning, stacklevel=caller_stacklevel())
                self.broken.append(Broken(origin, err))

    def warn_unknown_disabled(self) -> None:
        """Warn, once, of the names in DISABLE_ENV no plugin has: an operator's typo would
        leave the plugin running without a word."""
        with self.locked:
            unknown, self.unknown_disabled = self.unknown_disabled, set()
        if unknown:
            warnings.warn(
                f"{DISABLE_ENV} names {', '.join(map(repr, sorted(unknown)))}, which no "
                f"installed plugin has (entry-point names, case-sensitive: {self.installed}; "
                "cacheplug's own backends and serializers cannot be disabled)",
                PluginLoadWarning,
                stacklevel=caller_stacklevel(),
            )

    def _misplaced_entry_points(self) -> str:
        """A note on entry points declared in a group that looks like, but is not, ``cacheplug``."""
        if not self.entry_points_read:
            return ""
        import importlib.metadata

        found: dict[str, None] = {}  # ordered, and one line for a distribution seen twice
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                squeezed = re.sub(r"[\W_]", "", ep.group.lower())
                if ep.group != ENTRY_POINT_GROUP and (
                    squeezed.startswith(ENTRY_POINT_GROUP)
                    or difflib.SequenceMatcher(None, squeezed, ENTRY_POINT_GROUP).ratio() >= 0.8
                ):
                    found[
                        f"{dist.name} declares {ep.name} = {ep.value!r} in group {ep.group!r}"
                    ] = None
        if not found:
            return ""
        return (
            f"; cacheplug reads only the {ENTRY_POINT_GROUP!r} entry-point group, but "
            + "; ".join(found)
            + f": declare it under [project.entry-points.{ENTRY_POINT_GROUP}]"
        )


def _plugin_name(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    """An entry point's name, and that name qualified by its distribution's."""
    dist = ep.dist
    return ep.name, f"{dist.name if dist is not None else 'unknown distribution'}:{ep.name}"
