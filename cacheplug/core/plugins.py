"""The process-wide plugin manager and the public functions that look up its backends and
serializers.

The manager is built on first need, once per process: built-in plugin modules are registered
with the same ``pm.register`` call as third-party ones, then the ``cacheplug`` entry points are
loaded. Its parts live beside this module: the registry one manager fills in
``_plugins_registry``, taking in a plugin and calling its hooks in ``_plugins_hooks`` (the only
module that calls ``pm.hook``), loading the entry points in ``_plugins_entry_points`` (the only
one importing ``importlib.metadata``), what the registry records in ``_plugins_records``, the
wording of a plugin's failures in ``_plugins_errors``, the guard against waiting forever for a
loading thread in ``_plugins_waiting`` and what :func:`get_plugins` lists in
``_plugins_listing``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from cacheplug.core._entering import entering
from cacheplug.core._plugins_errors import describe, reraise_interrupt
from cacheplug.core._plugins_listing import plugin_listing
from cacheplug.core._plugins_records import BUILTIN_PLUGINS, DISABLE_ENV, Origin
from cacheplug.core._plugins_registry import Registry
from cacheplug.core._plugins_waiting import await_loader
from cacheplug.core.errors import ConfigurationError, PluginError

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
    "register_plugin",
    "reset_plugins",
    "serializer_names",
]

_RUNTIME = "registered at runtime"

_registry: Registry | None = None
# Re-entrant so a plugin that uses the registry while it is being built gets an error, not a hang.
_registry_lock = threading.RLock()
_registry_locked = entering(_registry_lock)
#: the thread building the registry, while it does
_building: threading.Thread | None = None


def _get_registry() -> Registry:
    global _registry, _building
    registry = _registry
    if registry is not None:
        return registry
    await_loader(_registry_lock, lambda: _building)
    with _registry_locked:
        if _registry is None:
            if _building is threading.current_thread():  # the lock is re-entrant
                raise PluginError(
                    "cacheplug's plugins are still loading: a plugin must not build caches or "
                    "look up backends or serializers at import time or inside its hooks"
                )
            _building = threading.current_thread()
            try:
                fresh = Registry()
                fresh.load()
                _registry = fresh
            finally:
                _building = None
        return _registry


def _registry_to_look_up() -> Registry:
    """The registry, for a lookup: the first one warns of names disabled in vain."""
    registry = _get_registry()
    if registry.unknown_disabled:
        registry.warn_unknown_disabled()
    return registry


def reset_plugins() -> None:
    """Forget the plugin manager, so the next use reloads plugins and re-reads the environment.

    Plugins added with :func:`register_plugin` are forgotten too.
    """
    global _registry
    with _registry_locked:
        _registry = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first call.

    Read-only use (``list_name_plugin``, ``get_hookcallers``...); add plugins with
    :func:`register_plugin`, which also records the names they register.
    """
    return _registry_to_look_up().pm


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Add a plugin object (a module, class or instance with hook implementations) at runtime.

    For an application or a test that defines a backend or serializer without packaging it::

        class MyPlugin:
            @cacheplug.hookimpl
            def cacheplug_register_backends(self, register):
                register("mine", MyCache)

        register_plugin(MyPlugin())
        cacheplug.from_url("mine://")

    :param name: the plugin's name in :func:`get_plugins`; default: pluggy's canonical name.
    :returns: the plugin's name.
    :raises PluginError: the name is taken, the plugin registers a name another plugin holds,
        implements an unknown hook, or its hooks fail; nothing is registered then.
    """
    registry = _get_registry()
    await_loader(registry.lock, lambda: registry.holder)
    with registry.locked:
        plugin_name = name or registry.pm.get_canonical_name(plugin)
        taken = registry.origins.get(plugin_name)
        if taken is not None:
            raise PluginError(f"plugin name {plugin_name!r} is already used by {taken}")
        if registry.pm.is_blocked(plugin_name):
            registry.unknown_disabled.discard(plugin_name)  # the name did disable a plugin
            raise PluginError(
                f"plugin name {plugin_name!r} is disabled by {DISABLE_ENV}; "
                f"register the plugin under another name"
            )
        previous, registry.holder = registry.holder, threading.current_thread()
        try:
            registry.add(plugin, Origin(plugin_name, _RUNTIME, ""), exclusive=True)
        except PluginError:
            raise
        except BaseException as err:  # pluggy's validation errors, a hook that fails or exits
            reraise_interrupt(err)
            raise PluginError(
                f"plugin {plugin_name!r} cannot be registered: {describe(err)}"
            ) from err
        finally:
            registry.holder = previous
    return plugin_name


def get_backend_class(scheme: str) -> type[BaseCache]:
    """The backend class registered for a URL scheme.

    :raises ConfigurationError: no plugin registered the scheme (the message lists the known ones).
    :raises PluginError: the scheme is claimed twice, its class cannot be imported or is not a
        :class:`~cacheplug.BaseCache` subclass, or a broken plugin may have provided it (the
        plugin's error is the ``__cause__``).
    """
    registry = _registry_to_look_up()
    entry = registry.backends.entries.get(scheme.lower())
    if entry is None:
        raise registry.unknown(scheme, registry.backends, "schemes")
    cls: type[BaseCache] = registry.resolve(entry, registry.backends.kind, _check_backend)
    return cls


def _check_backend(value: object) -> str | None:
    from cacheplug.core.base import BaseCache

    if isinstance(value, type) and issubclass(value, BaseCache):
        if inspect.isabstract(value):
            missing = ", ".join(sorted(value.__abstractmethods__))
            return f"is {value!r}, an abstract class: it must implement {missing}"
        options = value.url_options
        if not isinstance(options, Mapping) or not all(
            isinstance(name, str) and isinstance(kind, type) for name, kind in options.items()
        ):
            return (
                f"is {value!r}, whose url_options is {options!r}: it must map each option "
                f"name to a type (int, float, bool, str), e.g. {{'busy_timeout': float}}"
            )
        return None
    return f"is {value!r}, not a subclass of cacheplug.BaseCache"


def _check_serializer(value: object) -> str | None:
    if isinstance(value, type) and all(
        callable(getattr(value, method, None)) for method in ("dumps", "loads")
    ):
        return None
    return f"is {value!r}, not a class with dumps() and loads() methods"


def backend_schemes() -> list[str]:
    """Every registered URL scheme, sorted."""
    return _registry_to_look_up().backends.names()


def serializer_names() -> list[str]:
    """Every registered serializer name, sorted."""
    return _registry_to_look_up().serializers.names()


def get_serializer(name: str) -> SerializerLike:
    """The serializer registered under ``name`` (one shared instance per name).

    :raises ConfigurationError: unknown name (the message lists the registered ones), or a
        name that is no str.
    :raises PluginError: the name is claimed twice, its class cannot be imported, or a broken
        plugin may have provided it.
    """
    if not isinstance(name, str):  # None from an unset setting, bytes: not an AttributeError
        raise ConfigurationError(
            f"serializer name must be a str, got {type(name).__name__}; known serializers: "
            f"{', '.join(serializer_names())}"
        )
    registry = _registry_to_look_up()
    folded = name.lower()  # case-insensitive, as URL schemes are
    instance = registry.serializer_instances.get(folded)
    if instance is not None:
        return instance
    entry = registry.serializers.entries.get(folded)
    if entry is None:
        raise registry.unknown(name, registry.serializers, "serializers")
    cls = registry.resolve(entry, registry.serializers.kind, _check_serializer)
    await_loader(registry.lock, lambda: registry.holder)
    with registry.locked:
        instance = registry.serializer_instances.get(folded)
        if instance is None:
            previous, registry.holder = registry.holder, threading.current_thread()
            try:
                instance = cls()
            except BaseException as err:
                reraise_interrupt(err)
                raise PluginError(
                    f"serializer {name!r} from {entry.origin} cannot be created as {cls.__name__}()"
                    f": {describe(err)}; cacheplug creates serializers with no "
                    f"arguments, so every parameter needs a default"
                ) from err
            finally:
                registry.holder = previous
            registry.serializer_instances[folded] = instance
    return instance


def get_plugins() -> list[dict[str, Any]]:
    """Every plugin, built-ins first, as plain dicts (what ``cacheplug plugins`` prints).

    Keys: ``name`` (entry-point or module name), ``distribution``, ``version``, ``hooks``,
    ``schemes``, ``serializers`` and ``error``: ``None``, or why the plugin failed to load or
    which of its names another plugin also claims (those names cannot be used).
    """
    return plugin_listing(_registry_to_look_up())
