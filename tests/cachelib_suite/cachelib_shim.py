"""A pytest plugin (``-p cachelib_shim``) that runs cachelib's own tests on cacheplug's classes.

Loaded before cachelib's ``conftest.py`` and test modules are imported, it replaces
``cachelib.SimpleCache``, ``FileSystemCache``, ``RedisCache`` and ``MemcachedCache`` with
cacheplug's, so their ``from cachelib import SimpleCache`` gets ours. cachelib's serializers and
``BaseCache`` stay theirs: cacheplug's caches take cachelib's serializers as they are, and their
interface test compares our classes with cachelib's ``BaseCache``.

Their suite expects Redis on port 6360 and memcached on 127.0.0.1:11212, started by their
conftest through pytest-xprocess. Here the servers run on free ports, started by
``tests/test_cachelib_suite.py``, which names them in the environment: the engine classes below
send the fixed addresses there, and their conftest's server fixtures are replaced by ones that
start nothing (theirs would also skip every memcached test without pylibmc, a client library
cacheplug does not use).

Every test report goes, one JSON object a line, to the file ``CACHEPLUG_SUITE_REPORT`` names.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import cachelib
import pytest

import cacheplug

THEIR_REDIS_PORT = 6360
THEIR_MEMCACHED_PORT = 11212
LOOPBACK = "127.0.0.1"


def _setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(f"{name} is not set; tests/test_cachelib_suite.py sets it")
    return value


REDIS_PORT = int(_setting("CACHEPLUG_SUITE_REDIS_PORT"))
REDIS_DB = int(_setting("CACHEPLUG_SUITE_REDIS_DB"))
MEMCACHED_PORT = int(_setting("CACHEPLUG_SUITE_MEMCACHED_PORT"))
REPORT_PATH = _setting("CACHEPLUG_SUITE_REPORT")


class RedisCache(cacheplug.RedisCache):
    """cacheplug's RedisCache, with cachelib's test server (port 6360, db 0) sent to ours."""

    def __init__(self, host: Any = "localhost", port: int = 6379, *args: Any, **kwargs: Any):
        if port == THEIR_REDIS_PORT and host in ("localhost", LOOPBACK) and len(args) < 2:
            host, port = LOOPBACK, REDIS_PORT
            kwargs.setdefault("db", REDIS_DB)  # test groups run side by side, one db each
        super().__init__(host, port, *args, **kwargs)


def _our_memcached(server: Any) -> Any:
    if isinstance(server, str):
        host, _, port = server.rpartition(":")
        if host in ("localhost", LOOPBACK) and port == str(THEIR_MEMCACHED_PORT):
            return f"{LOOPBACK}:{MEMCACHED_PORT}"
    return server


class MemcachedCache(cacheplug.MemcachedCache):
    """cacheplug's MemcachedCache, with cachelib's test server 127.0.0.1:11212 sent to ours."""

    def __init__(self, servers: Any = None, *args: Any, **kwargs: Any):
        if isinstance(servers, (list, tuple)):
            servers = [_our_memcached(server) for server in servers]
        super().__init__(_our_memcached(servers), *args, **kwargs)


#: What their test modules get for cachelib's names.
REPLACEMENTS: dict[str, type] = {
    "SimpleCache": cacheplug.SimpleCache,
    "FileSystemCache": cacheplug.FileSystemCache,
    "RedisCache": RedisCache,
    "MemcachedCache": MemcachedCache,
}
for _name, _cls in REPLACEMENTS.items():
    setattr(cachelib, _name, _cls)

try:
    import xprocess  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    # their conftest imports ProcessStarter at import; the fixtures using it are replaced below
    _stand_in = types.ModuleType("xprocess")
    _stand_in.ProcessStarter = type("ProcessStarter", (), {})  # type: ignore[attr-defined]
    sys.modules["xprocess"] = _stand_in


@pytest.fixture(scope="class", name="redis_server")
def _running_redis() -> Iterator[None]:
    """Our Redis server runs already."""
    yield


@pytest.fixture(scope="class", name="memcached_server")
def _running_memcached() -> Iterator[None]:
    """Our memcached runs already."""
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_plugin_registered(plugin: object, plugin_name: str) -> None:
    """Swap their conftest's server fixtures for ours before pytest reads its fixtures."""
    if plugin_name and plugin_name.endswith("conftest.py"):
        for name, fixture in (
            ("redis_server", _running_redis),
            ("memcached_server", _running_memcached),
        ):
            if hasattr(plugin, name):
                setattr(plugin, name, fixture)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a test module that holds cachelib's own class instead of ours."""
    for item in items:
        module = getattr(item, "module", None)
        for name, ours in REPLACEMENTS.items():
            theirs = getattr(module, name, ours)
            if isinstance(theirs, type) and not issubclass(theirs, ours):
                raise pytest.UsageError(f"{item.nodeid} uses cachelib's own {name}")


def _write(record: dict[str, Any]) -> None:
    with open(REPORT_PATH, "a", encoding="utf-8") as report:
        report.write(json.dumps(record) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    detail = ""
    if report.failed:
        detail = str(report.longrepr)
    elif report.skipped and isinstance(report.longrepr, tuple):
        detail = report.longrepr[2]
    _write(
        {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "detail": detail}
    )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if not report.passed:  # a module that fails to import, or skips itself
        _write(
            {
                "nodeid": report.nodeid,
                "when": "collect",
                "outcome": report.outcome,
                "detail": str(report.longrepr),
            }
        )
