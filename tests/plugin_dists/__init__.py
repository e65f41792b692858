"""Installed-looking plugin distributions, written on the fly for the plugin tests.

A directory holding ``<name>-<version>.dist-info/{METADATA,entry_points.txt}`` and modules is
what ``importlib.metadata`` finds on ``sys.path``: real discovery, no mocks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["MARK", "backend_module", "imported", "installed_in_place", "write_distribution"]

#: Module source that leaves ``<module>.imported`` next to the module when it is imported.
MARK = "import pathlib\npathlib.Path(__file__).with_suffix('.imported').touch()\n"


def write_distribution(
    site: Path,
    name: str,
    version: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
    group: str = "cacheplug",
) -> None:
    """Write an installed distribution with entry points in ``group``, and its modules."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def backend_module(*schemes: str, body: str = "") -> str:
    """Source of a marked plugin module registering ``PluginCache`` under ``schemes``;
    ``body`` is appended to its hook."""
    registrations = "".join(f"    register({s!r}, PluginCache)\n" for s in schemes)
    return (
        MARK
        + "from cacheplug import SimpleCache, hookimpl\n"
        + "class PluginCache(SimpleCache):\n    pass\n"
        + "@hookimpl\ndef cacheplug_register_backends(register):\n"
        + (registrations + body or "    pass\n")
    )


def imported(site: Path, module: str) -> bool:
    """Whether ``module`` (written with :data:`MARK`) has been imported by any process."""
    return (site / f"{module}.imported").exists()


def installed_in_place(src: Path) -> bool:
    """Whether ``pip install -e`` left metadata in ``src`` (as docs/plugins.md has authors do):
    the distribution's entry points are then found from ``src`` itself."""
    return any(src.glob("*.egg-info")) or any(src.glob("*.dist-info"))
