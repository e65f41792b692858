"""Registering a plugin object: its hooks are checked, then called one plugin at a time, so that
every name they register knows its plugin. This is the only module that calls ``pm.hook``.
"""

from __future__ import annotations

import inspect
from types import FunctionType
from typing import TYPE_CHECKING, Any

from cacheplug.core._plugins_errors import answer_error
from cacheplug.core._plugins_records import Entry
from cacheplug.core.errors import PluginError

if TYPE_CHECKING:
    import pluggy

    from cacheplug.core._plugins_records import Origin, Table

__all__ = ["PluginHooks"]

_HOOKS = ("cacheplug_register_backends", "cacheplug_register_serializers")
_HOOK_PREFIX = "cacheplug_register"


class PluginHooks:
    """How a plugin manager's registry takes in a plugin and the names its hooks register."""

    pm: pluggy.PluginManager
    origins: dict[str, Origin]
    backends: Table
    serializers: Table

    def add(self, plugin: object, origin: Origin, *, exclusive: bool = False) -> None:
        """Register ``plugin`` and the names its hooks register, or nothing if any step fails.

        :param exclusive: a name another plugin already holds raises instead of clashing on use.
        """
        if plugin is None:
            raise PluginError(f"{origin} is None, not a module or object with hooks")
        # pluggy's own error dumps the repr of every registered plugin
        other = self.pm.get_name(plugin)
        if other is not None:
            raise PluginError(
                f"{origin} is {plugin!r}, already registered as plugin {other!r}; "
                f"give one module a single entry point"
            )
        try:
            self.pm.register(plugin, name=origin.plugin)
            self._check_hooks(plugin, origin)
            found = [(table, self._call_hooks(table, origin)) for table in self._tables()]
            if exclusive:
                for table, names in found:
                    for name in names:
                        held = table.entries.get(name.lower())
                        if held is not None:
                            spelled = "" if held.name == name else f" as {held.name!r}"
                            raise PluginError(
                                f"{origin} registers {table.kind} {name!r}, already registered"
                                f"{spelled} by {held.origin}"
                            )
        except BaseException:
            if self.pm.has_plugin(origin.plugin):
                self.pm.unregister(name=origin.plugin)
            raise
        self.origins[origin.plugin] = origin
        for table, names in found:
            for name, target in names.items():
                existing = table.entries.get(name.lower())
                if existing is None:
                    table.entries[name.lower()] = Entry(name, target, origin)
                else:
                    existing.clashes.append(origin)

    def _tables(self) -> tuple[Table, Table]:
        return self.backends, self.serializers

    def _check_hooks(self, plugin: object, origin: Origin) -> None:
        for name in dir(plugin):
            if (
                name.startswith(_HOOK_PREFIX)
                and self.pm.parse_hookimpl_opts(plugin, name) is None
                and callable(getattr(plugin, name, None))
            ):
                raise PluginError(
                    f"{origin} defines {name}() without the @cacheplug.hookimpl marker, so "
                    f"cacheplug would never call it; decorate it with @cacheplug.hookimpl"
                )
        if isinstance(plugin, type) and any(
            isinstance(inspect.getattr_static(plugin, hook, None), FunctionType) for hook in _HOOKS
        ):
            name = plugin.__qualname__
            raise PluginError(
                f"{origin} is the class {name}, whose hooks are methods needing an instance; "
                f"register {name}() instead, or name a module of @cacheplug.hookimpl functions"
            )
        callers = self.pm.get_hookcallers(plugin) or []
        if not callers:
            raise PluginError(
                f"{origin} implements no cacheplug hook; its entry point must name the module "
                f"holding the @cacheplug.hookimpl functions ({', '.join(_HOOKS)})"
            )
        for caller in callers:
            if caller.has_spec():
                continue
            if any(
                impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
            ):
                raise PluginError(
                    f"{origin} implements unknown hook {caller.name!r}; "
                    f"cacheplug's hooks are: {', '.join(_HOOKS)}"
                )

    def _call_hooks(self, table: Table, origin: Origin) -> dict[str, type[Any] | str]:
        """The names ``origin``'s implementation of ``table.hook`` registers."""
        names: dict[str, type[Any] | str] = {}
        returned = False

        def register(name: str, target: type[Any] | str) -> None:
            if returned:
                raise PluginError(
                    f"{origin} called register({name!r}, ...) after its hook returned; "
                    f"a name must be registered while the hook runs"
                )
            if not isinstance(name, str) or not name:
                raise PluginError(f"{origin} registered a {table.kind} with invalid name {name!r}")
            if not table.valid.match(name):
                raise PluginError(
                    f"{origin} registered {table.kind} {name!r}, which cannot be used: "
                    f"a {table.kind} name is {table.rule}"
                )
            if not _is_target(target):
                raise PluginError(
                    f"{origin} registered {table.kind} {name!r} as {target!r}; expected a class "
                    f"or a 'package.module:Class' string"
                )
            if names.get(name, target) != target:
                raise PluginError(
                    f"{origin} registers {table.kind} {name!r} twice, as {names[name]!r} and "
                    f"{target!r}; register each name once"
                )
            other = next((n for n in names if n != name and n.lower() == name.lower()), None)
            if other is not None:
                raise PluginError(
                    f"{origin} registers {table.kind} {name!r} twice, as {other!r} and "
                    f"{name!r}: names are case-insensitive; register each name once"
                )
            names[name] = target

        arguments = {"register": register}
        hook = getattr(self.pm.hook, table.hook)
        # Called one plugin at a time (not through pm.hook) so every name knows its plugin.
        try:
            for impl in hook.get_hookimpls():
                if impl.plugin_name == origin.plugin:
                    answer = impl.function(*(arguments[arg] for arg in impl.argnames))
                    # one that registered works whatever it returns (a list comprehension
                    # calling register): only a hook that registered nothing lost its names
                    if answer is not None and not names:
                        raise answer_error(answer, origin, table.hook)
        finally:
            returned = True
        return names


def _is_target(target: object) -> bool:
    if isinstance(target, type):
        return True
    if not isinstance(target, str):
        return False
    module_name, colon, attr = target.partition(":")
    return bool(colon and module_name and attr)
