"""What the plugin registry records: where a plugin comes from (:class:`Origin`), one
registered name (:class:`Entry`), a plugin that failed to load (:class:`Broken`) and the names
of one kind (:class:`Table`); with the names it goes by (the built-in plugin modules, the
entry-point group and the environment variables it reads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BUILTIN_PLUGINS",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "Broken",
    "Entry",
    "Origin",
    "Table",
]

BUILTIN_PLUGINS: tuple[str, ...] = (
    "cacheplug.backends.simple",
    "cacheplug.backends.null",
    "cacheplug.backends.filesystem",
    "cacheplug.backends.redis",
    "cacheplug.backends.memcached",
    "cacheplug.serializers.pickle",
    "cacheplug.serializers.json",
    "cacheplug.serializers.msgpack",
)

ENTRY_POINT_GROUP = "cacheplug"
STRICT_ENV = "CACHEPLUG_STRICT_PLUGINS"
DISABLE_ENV = "CACHEPLUG_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Origin:
    """Where a plugin comes from: its plugin name and its distribution."""

    plugin: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.plugin in BUILTIN_PLUGINS

    def __str__(self) -> str:
        where = f"{self.distribution} {self.version}" if self.version else self.distribution
        return f"plugin {self.plugin!r} ({where})"


@dataclass
class Entry:
    """One registered name: what it points to and who registered it."""

    name: str
    target: type[Any] | str
    origin: Origin
    clashes: list[Origin] = field(default_factory=list)
    loaded: type[Any] | None = None


@dataclass
class Broken:
    origin: Origin
    error: BaseException


@dataclass
class Table:
    """The names of one kind (backend schemes or serializers) and how to word them."""

    kind: str
    hook: str
    #: the names usable where this kind is named (a URL scheme, a query value)
    valid: re.Pattern[str]
    rule: str
    #: by name in lowercase: schemes and serializer names are case-insensitive
    entries: dict[str, Entry] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every registered name, as registered, sorted."""
        return sorted(entry.name for entry in self.entries.values())
