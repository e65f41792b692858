"""cacheplug.flask: any cacheplug cache behind a real Flask-Caching extension."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_caching import Cache
from servers import MemcachedServer, RedisServer

from cacheplug import ConfigurationError


@pytest.fixture(params=["simple", "file", "redis", "memcached"])
def url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    memcached_server: MemcachedServer,
) -> Iterator[str]:
    kind = request.param
    if kind == "simple":
        yield "simple://"
    elif kind == "file":
        yield f"file://{tmp_path}"
    elif kind == "redis":
        yield f"redis://{redis_server.host}:{redis_server.port}/0"
    else:
        yield f"memcached://{memcached_server.host}:{memcached_server.port}"


def _app(**config: Any) -> tuple[Flask, Cache]:
    app = Flask(__name__)
    app.config.update(CACHE_TYPE="cacheplug.flask.cache_factory", **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = Cache(app)
    return app, cache


def test_views_and_memoized_functions_are_cached(url: str) -> None:
    app, cache = _app(CACHE_URL=url, CACHE_DEFAULT_TIMEOUT=60, CACHE_KEY_PREFIX="flask-test:")
    calls: list[object] = []

    @app.route("/hello/<name>")
    @cache.cached()
    def hello(name: str) -> str:
        calls.append(name)
        return f"hi {name} #{len(calls)}"

    @cache.memoize()
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with app.app_context():
        cache.clear()
        client = app.test_client()
        assert client.get("/hello/ada").data == client.get("/hello/ada").data == b"hi ada #1"
        assert square(3) == square(3) == 9
        assert calls == ["ada", 3]
        cache.delete_memoized(square, 3)
        assert square(3) == 9
        assert calls == ["ada", 3, 3]
        cache.set_many({"a": 1, "b": [2]})
        assert cache.get_many("a", "b", "c") == [1, [2], None]
        backend = app.extensions["cache"][cache]
        assert backend.key_prefix == "flask-test:"
        assert backend.default_timeout == 60
        cache.clear()
        assert cache.get("a") is None


def test_options_and_the_url_query_win_over_flask_defaults(tmp_path: Path) -> None:
    app, cache = _app(
        CACHE_URL=f"file://{tmp_path}?key_prefix=mine:",
        CACHE_OPTIONS={"threshold": 7},
    )
    backend = app.extensions["cache"][cache]
    assert (backend.key_prefix, backend.threshold) == ("mine:", 7)
    app, cache = _app()  # no URL: the in-memory default, with Flask-Caching's prefix
    backend = app.extensions["cache"][cache]
    assert repr(backend).startswith("SimpleCache(")
    assert backend.key_prefix == "flask_cache_"


def test_positional_cache_args_are_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigurationError, match="CACHE_OPTIONS"):
        _app(CACHE_ARGS=["localhost"])
