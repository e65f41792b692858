"""The module named by this distribution's ``cacheplug`` entry point: it only registers names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheplug import hookimpl

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn


@hookimpl
def cacheplug_register_backends(register: RegisterFn) -> None:
    register("sqlite", "cacheplug_example.sqlite:SQLiteCache")


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("zpickle", "cacheplug_example.zpickle:ZlibPickleSerializer")
