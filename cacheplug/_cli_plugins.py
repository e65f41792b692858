"""The ``cacheplug plugins`` command: list the installed plugins, as a table or as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheplug._cli_problem import Problem

if TYPE_CHECKING:
    import argparse

__all__ = ["run_plugins"]

_COLUMNS = ("name", "distribution", "version", "schemes", "serializers", "error")


def run_plugins(args: argparse.Namespace) -> int:
    """Run ``cacheplug plugins``; the exit status."""
    from cacheplug.core.errors import CacheplugError
    from cacheplug.core.plugins import get_plugins

    try:
        plugins = get_plugins()
    except CacheplugError as err:
        raise Problem(str(err)) from err
    if args.json:
        import json

        print(json.dumps(plugins, indent=2, sort_keys=True))
        return 0
    rows = [[_cell(plugin.get(column)) for column in _COLUMNS] for plugin in plugins]
    widths = [max(len(text) for text in column) for column in zip(_COLUMNS, *rows, strict=True)]
    for row in [list(_COLUMNS), *rows]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        text = ",".join(str(item) for item in value) or "-"
    else:
        text = str(value)
    if text.isprintable():
        return text
    # a plugin's error text is foreign: escape sequences must not drive the terminal
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
