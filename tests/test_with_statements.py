"""On CPython 3.14 no with statement of cacheplug calls a C ``__enter__`` (a lock's, a file's).

3.14 calls a with statement's ``__enter__`` with a CALL, which handles pending signals as a C
function returns: a signal handler's exception raised there skips ``__exit__`` and leaves the
lock held (CPython gh-148874; docs/reliability.md). cacheplug enters its locks through
``cacheplug.core._entering.entering``, whose ``__enter__`` is Python code. The cutter cannot
raise at that point, so these tests watch every C ``__enter__`` a with statement of cacheplug
calls while the in-process backends, memoize, the plugin registry and a Redis cache run every
operation: there must be none. Other versions skip them (they enter inside one instruction);
on every version, no with statement of cacheplug names a lock itself.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cutting import entered_by_c
from servers import RedisServer

import cacheplug
from cacheplug import BaseCache, FileSystemCache, RedisCache, SimpleCache, hookimpl
from cacheplug.core._entering import AFFECTED
from cacheplug.core.plugins import (
    get_backend_class,
    get_serializer,
    register_plugin,
    reset_plugins,
)
from cacheplug.core.url import from_url

only_314 = pytest.mark.skipif(
    not AFFECTED, reason="only CPython 3.14 calls __enter__ with a CALL that handles signals"
)
PACKAGE = Path(cacheplug.__file__).parent


def test_no_with_statement_names_a_lock_itself() -> None:
    """On every version, so that CI (3.11) catches a new ``with self._lock:``: a lock goes
    into ``with`` through ``entering`` (an attribute made by it, or a call of it)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.With | ast.AsyncWith):
                continue
            for item in node.items:
                expr = item.context_expr
                name = expr.attr if isinstance(expr, ast.Attribute) else getattr(expr, "id", "")
                if re.search(r"(lock|guard|probing)$", name.lower()):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} with {name}")
    assert found == []


def _every_operation(cache: BaseCache) -> None:
    cache.set("a", 1)
    cache.set("d", {"x": [1, 2]})
    cache.get("a")
    cache.get("missing")
    cache.add("a", 2)
    cache.add("b", 3)
    cache.has("a")
    cache.inc("n")
    cache.dec("n", 2)
    cache.get_many("a", "b", "missing")
    cache.get_dict("a", "b")
    cache.set_many({"c": 1, "e": [1]})
    cache.delete_many("c", "e")
    cache.delete("a")
    cache.get_or_set("g", lambda: 5)

    @cache.memoize()
    def double(x: int) -> int:
        return 2 * x

    double(1)
    double(1)
    double.invalidate(1)
    cache.clear()


def _from_threads(work: Callable[[], None]) -> Callable[[], None]:
    """``work`` here while another thread runs it too: locks are waited for, not only taken."""

    def both() -> None:
        other = threading.Thread(target=work)
        other.start()
        work()
        other.join()

    return both


@only_314
def test_simple_cache(clock: Any) -> None:
    cache = SimpleCache(threshold=4, clock=clock)

    def run() -> None:
        _every_operation(cache)
        cache.threshold = 2

    assert entered_by_c(_from_threads(run)) == []


@only_314
def test_filesystem_cache(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path), threshold=4)
    assert entered_by_c(_from_threads(lambda: _every_operation(cache))) == []


@only_314
def test_redis_cache(redis_server: RedisServer) -> None:
    cache = RedisCache(host=redis_server.host, port=redis_server.port, key_prefix="with:")
    try:
        assert entered_by_c(_from_threads(lambda: _every_operation(cache))) == []
    finally:
        cache.close()


@only_314
def test_plugin_registry() -> None:
    class Plugin:
        @hookimpl
        def cacheplug_register_backends(self, register: Any) -> None:
            register("withtest", "cacheplug.backends.simple:SimpleCache")

    def run() -> None:
        reset_plugins()
        from_url("simple://")
        get_serializer("json")
        register_plugin(Plugin(), name="with-statements")
        get_backend_class("withtest")

    try:
        assert entered_by_c(run) == []
    finally:
        reset_plugins()
