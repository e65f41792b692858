"""The plugin manager and the registries of backends and serializers it fills.

The manager is built on first need, once per process: built-in plugin modules are registered
with the same ``pm.register`` call as third-party ones, then the ``cacheplug`` entry points are
loaded. This is the only module that calls ``pm.hook``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from cacheplug.core import hookspecs
from cacheplug.core.errors import ConfigurationError, PluginError, PluginLoadWarning

if TYPE_CHECKING:
    from cacheplug.core.base import BaseCache
    from cacheplug.core.serializer import SerializerLike

__all__ = [
    "BUILTIN_PLUGINS",
    "backend_schemes",
    "get_backend_class",
    "get_plugin_manager",
    "get_plugins",
    "get_serializer",
    "reset_plugins",
    "serializer_names",
]

BUILTIN_PLUGINS: tuple[str, ...] = (
    "cacheplug.backends.simple",
    "cacheplug.backends.null",
    "cacheplug.serializers.pickle",
    "cacheplug.serializers.json",
    "cacheplug.serializers.msgpack",
)

ENTRY_POINT_GROUP = "cacheplug"
STRICT_ENV = "CACHEPLUG_STRICT_PLUGINS"
DISABLE_ENV = "CACHEPLUG_DISABLE_PLUGINS"
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass
class _Origin:
    """Where a plugin comes from: its plugin name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})"


@dataclass
class _Entry:
    """One registered name: what it points to and who registered it."""

    name: str
    target: type[Any] | str
    origin: _Origin
    clashes: list[_Origin] = field(default_factory=list)
    loaded: type[Any] | None = None


@dataclass
class _Broken:
    origin: _Origin
    error: BaseException


class _Registry:
    """Backends and serializers known to one plugin manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, _Origin] = {}
        self.broken: list[_Broken] = []
        self.backends: dict[str, _Entry] = {}
        self.serializers: dict[str, _Entry] = {}
        self.serializer_instances: dict[str, SerializerLike] = {}
        self.lock = threading.RLock()

    def load(self) -> None:
        from cacheplug import __version__

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=module_name)
            self.origins[module_name] = _Origin(module_name, "cacheplug", __version__)
        self._load_entry_points()
        self._collect("cacheplug_register_backends", self.backends, "backend scheme")
        self._collect("cacheplug_register_serializers", self.serializers, "serializer")

    def _load_entry_points(self) -> None:
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        if "*" in disabled:
            return
        for name in disabled:
            self.pm.set_blocked(name)
        strict = os.environ.get(STRICT_ENV, "").strip().lower() in _TRUE
        import importlib.metadata

        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            dist = ep.dist
            origin = _Origin(
                ep.name,
                dist.name if dist is not None else "unknown distribution",
                dist.version if dist is not None else "unknown version",
            )
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as err:
                message = (
                    f"cacheplug {origin} failed to load from {ep.value!r}: "
                    f"{type(err).__name__}: {err}; set {DISABLE_ENV}={ep.name} to silence this"
                )
                if strict:
                    raise PluginError(message) from err
                warnings.warn(message, PluginLoadWarning, stacklevel=2)
                self.broken.append(_Broken(origin, err))
                continue
            self.origins[ep.name] = origin

    def _collect(self, hook_name: str, table: dict[str, _Entry], kind: str) -> None:
        hook = getattr(self.pm.hook, hook_name)
        # Called one implementation at a time so every name knows which plugin registered it.
        for impl in reversed(hook.get_hookimpls()):
            origin = self.origins[impl.plugin_name]

            def register(name: str, target: type[Any] | str, _origin: _Origin = origin) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"{_origin} registered a {kind} with invalid name {name!r}")
                existing = table.get(name)
                if existing is None:
                    table[name] = _Entry(name, target, _origin)
                elif existing.origin.plugin != _origin.plugin:
                    existing.clashes.append(_origin)
                else:
                    existing.target = target

            impl.function(register=register)

    def resolve(self, entry: _Entry, kind: str) -> type[Any]:
        if entry.clashes:
            claimants = [entry.origin, *entry.clashes]
            third_party = [o.plugin for o in claimants if o.distribution != "cacheplug"]
            raise PluginError(
                f"{kind} {entry.name!r} is claimed by "
                + " and by ".join(str(o) for o in claimants)
                + f"; disable one with {DISABLE_ENV}={','.join(third_party) or '<name>'}"
            )
        if entry.loaded is not None:
            return entry.loaded
        with self.lock:
            if entry.loaded is None:
                target = entry.target
                if isinstance(target, str):
                    module_name, _, attr = target.partition(":")
                    try:
                        loaded = getattr(importlib.import_module(module_name), attr)
                    except Exception as err:
                        raise PluginError(
                            f"{kind} {entry.name!r} from {entry.origin} cannot be imported "
                            f"from {target!r}: {type(err).__name__}: {err}"
                        ) from err
                    entry.loaded = loaded
                else:
                    entry.loaded = target
            assert entry.loaded is not None
            return entry.loaded

    def unknown(self, name: str, table: dict[str, _Entry], kind: str, plural: str) -> Exception:
        known = sorted(table)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"unknown {kind} {name!r}; known {plural}: {', '.join(known)}{hint}"
        if self.broken:
            failed = "; ".join(
                f"{b.origin} failed to load ({type(b.error).__name__}: {b.error})"
                for b in self.broken
            )
            error = PluginError(f"{message}; it may come from a broken plugin: {failed}")
            error.__cause__ = self.broken[0].error
            return error
        return ConfigurationError(message)


_registry: _Registry | None = None
_registry_lock = threading.Lock()


def _get_registry() -> _Registry:
    global _registry
    registry = _registry
    if registry is None:
        with _registry_lock:
            if _registry is None:
                fresh = _Registry()
                fresh.load()
                _registry = fresh
            registry = _registry
    return registry


def reset_plugins() -> None:
    """Forget the plugin manager, so the next use reloads plugins and re-reads the environment."""
    global _registry
    with _registry_lock:
        _registry = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first call."""
    return _get_registry().pm


def get_backend_class(scheme: str) -> type[BaseCache]:
    """The backend class registered for a URL scheme.

    :raises ConfigurationError: no plugin registered the scheme (the message lists the known ones).
    :raises PluginError: the scheme is claimed twice, its class cannot be imported, or a broken
        plugin may have provided it.
    """
    registry = _get_registry()
    entry = registry.backends.get(scheme)
    if entry is None:
        raise registry.unknown(scheme, registry.backends, "cache scheme", "schemes")
    cls: type[BaseCache] = registry.resolve(entry, "backend scheme")
    return cls


def backend_schemes() -> list[str]:
    """Every registered URL scheme, sorted."""
    return sorted(_get_registry().backends)


def serializer_names() -> list[str]:
    """Every registered serializer name, sorted."""
    return sorted(_get_registry().serializers)


def get_serializer(name: str) -> SerializerLike:
    """The serializer registered under ``name`` (one shared instance per name).

    :raises ConfigurationError: unknown name (the message lists the registered ones).
    :raises PluginError: the name is claimed twice or its class cannot be imported.
    """
    registry = _get_registry()
    instance = registry.serializer_instances.get(name)
    if instance is not None:
        return instance
    entry = registry.serializers.get(name)
    if entry is None:
        raise registry.unknown(name, registry.serializers, "serializer", "serializers")
    cls = registry.resolve(entry, "serializer")
    with registry.lock:
        instance = registry.serializer_instances.get(name)
        if instance is None:
            instance = registry.serializer_instances[name] = cls()
    return instance


def get_plugins() -> list[dict[str, Any]]:
    """Every loaded plugin as a plain dict.

    Keys: ``name``, ``distribution``, ``version``, ``hooks``, ``schemes``, ``serializers``;
    plugins that failed to load appear with ``error`` set.
    """
    registry = _get_registry()
    plugins: list[dict[str, Any]] = []
    for name, plugin in registry.pm.list_name_plugin():
        if plugin is None:
            continue
        origin = registry.origins[name]
        callers = registry.pm.get_hookcallers(plugin) or []
        plugins.append(
            {
                "name": name,
                "distribution": origin.distribution,
                "version": origin.version,
                "hooks": sorted(caller.name for caller in callers),
                "schemes": _names_from(registry.backends, name),
                "serializers": _names_from(registry.serializers, name),
                "error": None,
            }
        )
    for broken in registry.broken:
        plugins.append(
            {
                "name": broken.origin.plugin,
                "distribution": broken.origin.distribution,
                "version": broken.origin.version,
                "hooks": [],
                "schemes": [],
                "serializers": [],
                "error": f"{type(broken.error).__name__}: {broken.error}",
            }
        )
    return plugins


def _names_from(table: dict[str, _Entry], plugin: str) -> list[str]:
    return sorted(
        entry.name
        for entry in table.values()
        if entry.origin.plugin == plugin or any(o.plugin == plugin for o in entry.clashes)
    )
