"""The registry of one plugin manager: the backends and serializers its plugins register, built
from the built-in plugin modules and the installed entry points, and the classes its names
resolve to, imported on first use.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from typing import TYPE_CHECKING, Any

import pluggy

from cacheplug.core import hookspecs
from cacheplug.core._entering import entering
from cacheplug.core._plugins_entry_points import EntryPoints
from cacheplug.core._plugins_errors import clash_error, describe, reraise_interrupt
from cacheplug.core._plugins_records import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    Broken,
    Entry,
    Origin,
    Table,
)
from cacheplug.core._plugins_waiting import await_loader
from cacheplug.core.errors import ConfigurationError, PluginError, did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable

    from cacheplug.core.serializer import SerializerLike

__all__ = ["Registry"]

_TRUE = frozenset({"1", "true", "yes", "on"})


class Registry(EntryPoints):
    """Backends and serializers known to one plugin manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, Origin] = {}
        self.broken: list[Broken] = []
        self.backends = Table(
            "cache scheme",
            "cacheplug_register_backends",
            re.compile(r"[a-z][a-z0-9+.\-]*\Z"),
            "a URL scheme: a lowercase letter, then lowercase letters, digits, '+', '-' or '.'",
        )
        self.serializers = Table(
            "serializer",
            "cacheplug_register_serializers",
            # no '+': a query string reads it as a space (?serializer=a+b is 'a b')
            re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z"),
            "letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
        self.serializer_instances: dict[str, SerializerLike] = {}
        self.lock = threading.RLock()
        self.locked = entering(self.lock)  # for with statements
        #: the thread holding ``lock`` while it registers or imports a plugin's class
        self.holder: threading.Thread | None = None
        self.strict = False
        self.entry_points_read = False
        #: names in DISABLE_ENV that no entry point has, and the names that were installed
        self.unknown_disabled: set[str] = set()
        self.installed = ""

    def load(self) -> None:
        from cacheplug import __version__

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.add(module, Origin(module_name, "cacheplug", __version__))
        self.strict = os.environ.get(STRICT_ENV, "").strip().lower() in _TRUE
        self._load_entry_points()
        if self.strict:
            for table in (self.backends, self.serializers):
                for entry in table.entries.values():
                    if entry.clashes:
                        raise clash_error(entry, table.kind)

    def resolve(self, entry: Entry, kind: str, check: Callable[[Any], str | None]) -> type[Any]:
        if entry.clashes:
            raise clash_error(entry, kind)
        loaded = entry.loaded
        if loaded is not None:
            return loaded
        await_loader(self.lock, lambda: self.holder)
        with self.locked:
            if entry.loaded is None:
                target = entry.target
                if isinstance(target, str):
                    module_name, _, attr = target.partition(":")
                    previous, self.holder = self.holder, threading.current_thread()
                    try:
                        value: Any = importlib.import_module(module_name)
                        for part in attr.split("."):
                            value = getattr(value, part)
                    except BaseException as err:
                        reraise_interrupt(err)
                        raise PluginError(
                            f"{kind} {entry.name!r} from {entry.origin} cannot be imported "
                            f"from {target!r}: {describe(err)}"
                        ) from err
                    finally:
                        self.holder = previous
                else:
                    value = target
                problem = check(value)
                if problem:
                    raise PluginError(f"{kind} {entry.name!r} from {entry.origin} {problem}")
                entry.loaded = value
            return entry.loaded

    def unknown(self, name: str, table: Table, plural: str) -> Exception:
        known = table.names()
        hint = did_you_mean(name, known)
        message = f"unknown {table.kind} {name!r}; known {plural}: {', '.join(known)}{hint}"
        message += self._misplaced_entry_points()
        if not self.broken:
            return ConfigurationError(message)
        failed = "; ".join(f"{b.origin} failed to load ({describe(b.error)})" for b in self.broken)
        # The broken plugin named like the missing name is the likeliest provider.
        suspect = next(
            (b for b in self.broken if name in (b.origin.plugin, b.origin.distribution)),
            next((b for b in self.broken if name in b.origin.distribution), self.broken[0]),
        )
        error = PluginError(f"{message}; it may come from a broken plugin: {failed}")
        error.__cause__ = suspect.error
        return error
