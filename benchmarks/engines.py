"""The engines a run needs: redis-server and memcached, and the backends built on them.

The servers come from the test suite's launcher (``tests/servers.py``): each runs on a free
loopback port in its own temporary directory and is stopped by :meth:`Engines.close`. A backend
that is not there yet (its module missing, its driver not installed) or a server that does not
start is reported as missing, never as an exception, so the other sections still run.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

from cacheplug import BaseCache, from_url

__all__ = ["Engines", "MissingEngine", "backend_class"]

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


class MissingEngine(Exception):
    """A backend or server this section needs is not available in this run."""


def _servers_module() -> Any:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module("servers")


class Engines:
    """Servers started on first need and the caches of one benchmark run."""

    def __init__(self) -> None:
        self._servers: dict[str, Any] = {}
        self._failures: dict[str, str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="cacheplug-bench-")
        self._dirs = itertools.count()

    def server(self, kind: str) -> Any:
        """The running ``redis`` or ``memcached`` server (``.url``, ``.host``, ``.port``).

        :raises MissingEngine: it cannot be started here.
        """
        if kind in self._failures:
            raise MissingEngine(self._failures[kind])
        if kind not in self._servers:
            try:
                servers = _servers_module()
                if kind == "redis":
                    server = servers.RedisServer()
                else:
                    # one worker thread: every client connection then gets the same wake-up
                    # path (with several, the thread a connection lands on shifts its latency)
                    server = servers.MemcachedServer(extra_args=["-t", "1"])
                self._servers[kind] = server.start()
            except Exception as err:
                self._failures[kind] = f"{kind} server did not start: {type(err).__name__}: {err}"
                raise MissingEngine(self._failures[kind]) from err
        return self._servers[kind]

    def directory(self, name: str) -> Path:
        """A fresh empty directory for a file cache, removed with the run."""
        path = Path(self._tmp.name) / name
        path.mkdir(parents=True)
        return path

    def url(self, backend: str, **query: object) -> str:
        """The cacheplug URL of ``backend`` (simple, null, file, redis, memcached)."""
        if backend in ("redis", "memcached"):
            base = self.server(backend).url
        elif backend == "file":
            base = "file://" + str(self.directory(f"file-{next(self._dirs)}"))
        else:
            base = f"{backend}://"
        options = "&".join(f"{name}={value}" for name, value in query.items())
        return f"{base}?{options}" if options else base

    def cache(self, backend: str, **query: object) -> BaseCache:
        """A cacheplug cache for ``backend`` built by ``from_url``.

        :raises MissingEngine: the backend or its server is not available.
        """
        url = self.url(backend, **query)
        try:
            return from_url(url)
        except Exception as err:
            raise MissingEngine(
                f"cacheplug's {backend} backend is not available: {type(err).__name__}: {err}"
            ) from err

    def flush(self, kind: str) -> None:
        """Empty a running server between sections."""
        if kind in self._servers:
            self._servers[kind].flush()

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        self._tmp.cleanup()

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend_class(name: str) -> Any:
    """A cacheplug class by its public name, e.g. ``FileSystemCache``.

    :raises MissingEngine: its module is not there yet.
    """
    import cacheplug

    try:
        cls = getattr(cacheplug, name)
    except (ImportError, AttributeError) as err:
        raise MissingEngine(f"cacheplug.{name} is not available: {err}") from err
    return cls
