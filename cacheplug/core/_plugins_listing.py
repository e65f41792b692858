"""What ``get_plugins()`` tells of each plugin, as plain dicts: its distribution, hooks and
names, or why it failed to load or which of its names another plugin also claims.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cacheplug.core._plugins_errors import clash_error, describe

if TYPE_CHECKING:
    from cacheplug.core._plugins_entry_points import EntryPoints
    from cacheplug.core._plugins_records import Entry, Origin, Table

__all__ = ["plugin_listing"]


def plugin_listing(registry: EntryPoints) -> list[dict[str, Any]]:
    """Every plugin of ``registry``, built-ins first, as :func:`~cacheplug.get_plugins` lists it."""
    plugins: list[dict[str, Any]] = []
    for name, origin in registry.origins.items():
        plugin = registry.pm.get_plugin(name)
        callers = registry.pm.get_hookcallers(plugin) or [] if plugin is not None else []
        plugins.append(
            _plugin_info(
                origin,
                hooks=sorted(caller.name for caller in callers),
                schemes=_names_from(registry.backends, name),
                serializers=_names_from(registry.serializers, name),
                error="; ".join(_clashes_of(registry, name)) or None,
            )
        )
    for broken in registry.broken:
        plugins.append(_plugin_info(broken.origin, error=describe(broken.error)))
    return plugins


def _plugin_info(
    origin: Origin,
    *,
    hooks: list[str] | None = None,
    schemes: list[str] | None = None,
    serializers: list[str] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "name": origin.plugin,
        "distribution": origin.distribution,
        "version": origin.version,
        "hooks": hooks or [],
        "schemes": schemes or [],
        "serializers": serializers or [],
        "error": error,
    }


def _names_from(table: Table, plugin: str) -> list[str]:
    return sorted(entry.name for entry in _entries_of(table, plugin))


def _entries_of(table: Table, plugin: str) -> list[Entry]:
    return [
        entry
        for entry in table.entries.values()
        if entry.origin.plugin == plugin or any(o.plugin == plugin for o in entry.clashes)
    ]


def _clashes_of(registry: EntryPoints, plugin: str) -> list[str]:
    """Why each name ``plugin`` claims together with another plugin cannot be used."""
    return [
        str(clash_error(entry, table.kind))
        for table in (registry.backends, registry.serializers)
        for entry in _entries_of(table, plugin)
        if entry.clashes
    ]
