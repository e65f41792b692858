"""The hooks a cacheplug plugin implements.

A plugin is a module (or object) with functions marked ``@cacheplug.hookimpl``, exposed
through the ``cacheplug`` entry-point group of its distribution::

    [project.entry-points.cacheplug]
    mycache = "mycache.plugin"

Each hook is called once per process, when the registry is first needed. Keep plugin modules
light: register ``"module:Class"`` strings so the classes are imported only when used, and do
not build caches or look up serializers at import time or inside a hook. A name another plugin
also registers makes both unusable until one plugin is disabled. See docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["RegisterFn", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("cacheplug")
hookimpl = pluggy.HookimplMarker("cacheplug")

#: ``register(name, target)``: ``target`` is a class or a lazy ``"package.module:Class"`` string.
RegisterFn = Callable[[str, "type[Any] | str"], None]


@hookspec
def cacheplug_register_backends(register: RegisterFn) -> None:
    """Register cache backends under URL schemes.

    :param register: call ``register(scheme, cls)`` once per scheme; ``cls`` is a
        :class:`~cacheplug.BaseCache` subclass or a ``"module:Class"`` string imported only when
        the scheme is first used.

    Example::

        @cacheplug.hookimpl
        def cacheplug_register_backends(register):
            register("sqlite", "cacheplug_sqlite.backend:SQLiteCache")
    """


@hookspec
def cacheplug_register_serializers(register: RegisterFn) -> None:
    """Register serializers under names usable as ``serializer=NAME`` or ``?serializer=NAME``.

    :param register: call ``register(name, cls)`` once per name; ``cls`` is a class whose
        instances have ``dumps(value) -> bytes`` and ``loads(data)``, or a ``"module:Class"``
        string imported only when the name is first used.

    Example::

        @cacheplug.hookimpl
        def cacheplug_register_serializers(register):
            register("cbor", "cacheplug_cbor:CBORSerializer")
    """
