"""cacheplug.flask: any cacheplug cache behind a real Flask-Caching extension."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelib.serializers import RedisSerializer
from conftest import FakeClock
from flask import Flask, Response, abort, render_template_string, request
from flask_caching import Cache
from servers import MemcachedServer, RedisServer
from waiting import wait_until

from cacheplug import BaseCache, ConfigurationError, hookimpl
from cacheplug.core.arguments import check_key
from cacheplug.core.plugins import register_plugin, reset_plugins


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
    app.config.update({"CACHE_TYPE": "cacheplug.flask.cache_factory", **config})
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


def test_cache_threshold_applies_where_the_backend_has_a_threshold(
    tmp_path: Path, memcached_server: MemcachedServer
) -> None:
    # an app moving over keeps its CACHE_THRESHOLD, as Flask-Caching's own backends read it
    for url in ("simple://", f"file://{tmp_path}"):
        app, cache = _app(CACHE_URL=url, CACHE_THRESHOLD=10_000)
        assert app.extensions["cache"][cache].threshold == 10_000
    app, cache = _app(CACHE_URL="simple://?threshold=7", CACHE_THRESHOLD=10_000)
    assert app.extensions["cache"][cache].threshold == 7
    app, cache = _app(CACHE_URL="simple://?threshold=7", CACHE_OPTIONS={"threshold": 9})
    assert app.extensions["cache"][cache].threshold == 9
    app, cache = _app(CACHE_URL=memcached_server.url, CACHE_THRESHOLD=10_000)  # none to set
    with app.app_context():
        assert cache.set("k", 1) is True


@pytest.mark.parametrize(
    "settings",
    [
        {"CACHE_REDIS_HOST": "cache.internal", "CACHE_REDIS_PASSWORD": "hunter2-flask"},
        {"CACHE_REDIS_URL": "redis://:hunter2-flask@cache.internal:6379/0"},
        {"CACHE_DIR": "/var/cache/app"},
        {"CACHE_MEMCACHED_SERVERS": ["cache.internal:11211"]},
    ],
)
def test_flask_cachings_engine_settings_without_a_url_are_warned_about(
    settings: dict[str, Any],
) -> None:
    # an app moving over keeps its CACHE_REDIS_* and would silently get an in-process cache
    with pytest.warns(UserWarning, match="CACHE_URL") as caught:
        app, cache = _app(**settings)
    message = str(caught[0].message)
    assert all(name in message for name in settings) and "hunter2" not in message
    assert repr(app.extensions["cache"][cache]).startswith("SimpleCache(")


@pytest.mark.parametrize(
    ("settings", "way_out"),
    [
        ({"CACHE_REDIS_PASSWORD": "hunter2-flask"}, "CACHE_OPTIONS = {'password': ...}"),
        ({"CACHE_REDIS_HOST": "cache.internal", "CACHE_REDIS_DB": 0}, "give the db in CACHE_URL"),
        ({"CACHE_REDIS_URL": "redis://:hunter2-flask@cache.internal:6379/0"}, "as CACHE_URL"),
        ({"CACHE_DIR": "/var/cache/app"}, "file:///abs/dir"),
        ({"CACHE_MEMCACHED_PASSWORD": "hunter2-flask"}, "no SASL memcached backend"),
    ],
)
def test_flask_cachings_engine_settings_beside_a_url_are_warned_about(
    settings: dict[str, Any], way_out: str
) -> None:
    # a CACHE_REDIS_PASSWORD kept beside CACHE_URL is not used: the app would only see misses
    url = "redis://127.0.0.1:6379/3"
    with pytest.warns(UserWarning, match="not read") as caught:
        app, cache = _app(CACHE_URL=url, **settings)
    message = str(caught[0].message)
    assert all(name in message for name in settings) and way_out in message
    assert "hunter2" not in message and "cache.internal" not in message
    assert repr(app.extensions["cache"][cache]) == (
        "RedisCache(127.0.0.1:6379/3, default_timeout=300, key_prefix='flask_cache_', "
        "serializer='pickle')"
    )


def test_a_password_moved_to_cache_options_reaches_the_server() -> None:
    password = "hunter2-flask-options"
    with RedisServer(password=password) as server:
        url = f"redis://{server.host}:{server.port}/0"
        with pytest.warns(UserWarning, match="CACHE_REDIS_PASSWORD"):
            app, cache = _app(CACHE_URL=url, CACHE_REDIS_PASSWORD=password)
        with app.app_context():
            assert cache.set("k", 1) is False  # as the warning said: no password was used
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            app, cache = _app(CACHE_URL=url, CACHE_OPTIONS={"password": password})
        with app.app_context():
            assert (cache.set("k", 1), cache.get("k")) == (True, 1)


def test_the_same_redis_url_said_twice_is_not_warned_about() -> None:
    url = "redis://127.0.0.1:6379/3"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _app(CACHE_URL=url, CACHE_REDIS_URL=url)


def test_a_second_cache_of_an_app_whose_first_is_flask_cachings_own_still_starts(
    redis_server: RedisServer,
) -> None:
    # Flask-Caching merges app.config into each cache's config: the second cache sees the
    # first one's CACHE_REDIS_URL, which is no mistake of its own
    app = Flask(__name__)
    app.config.update(CACHE_TYPE="RedisCache", CACHE_REDIS_URL=redis_server.url)
    theirs = Cache(app)
    with pytest.warns(UserWarning, match="CACHE_REDIS_URL"):
        ours = Cache(app, config={"CACHE_TYPE": "cacheplug.flask.cache_factory"})
    with app.app_context():
        assert theirs.set("k", 1) and ours.set("k", 2)
        assert (theirs.get("k"), ours.get("k")) == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with its own URL, the app's settings are the other's
        url = f"{redis_server.url.rsplit('/', 1)[0]}/1"
        third = Cache(app, config={"CACHE_TYPE": "cacheplug.flask.cache_factory", "CACHE_URL": url})
    with app.app_context():
        assert (third.set("k", 3), theirs.get("k")) == (True, 1)


def test_positional_cache_args_are_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigurationError, match="CACHE_OPTIONS"):
        _app(CACHE_ARGS=["localhost"])


def _flask_app_story(app: Flask, cache: Cache) -> list[Any]:
    """What a Flask app observes through views and memoized functions, in one list."""
    calls: list[Any] = []

    @app.route("/search")
    @cache.cached(query_string=True)
    def search() -> str:
        calls.append("search")
        return f"search #{len(calls)} {sorted(request.args.items())}"

    @app.route("/made")
    @cache.cached(timeout=0)
    def made() -> Response:
        calls.append("made")
        return Response(f"made #{len(calls)}", status=201, headers={"X-Kind": "made"})

    def counted(name: str) -> Callable[[], str]:
        def view() -> str:
            calls.append(name)
            return f"{name} #{len(calls)}"

        view.__name__ = name  # the endpoint's name
        return view

    for name, decorate in (
        ("unless", cache.cached(unless=lambda: request.args.get("skip") == "1")),
        ("filtered", cache.cached(response_filter=lambda rv: "keep" in request.args)),
        ("forced", cache.cached(forced_update=lambda: request.args.get("force") == "1")),
        ("own-key", cache.cached(make_cache_key=lambda: "own-key:" + request.args["id"])),
    ):
        app.route(f"/{name}")(decorate(counted(name)))

    @app.route("/missing")
    @cache.cached()
    def missing() -> str:
        calls.append("missing")
        abort(404)  # Flask-Caching caches the HTTPException and raises it again on a hit

    @app.route("/fragment/<name>")
    def fragment(name: str) -> str:
        calls.append("fragment")
        page = "{% cache 60, 'frag', name %}{{ name }} #{{ count }}{% endcache %}"
        return render_template_string(page, name=name, count=len(calls))

    @cache.memoize(cache_none=True)
    def nothing(x: int) -> None:
        calls.append(("nothing", x))

    @cache.memoize(timeout=60)
    def square(x: int) -> int:
        calls.append(("square", x))
        return x * x

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        def __repr__(self) -> str:
            return f"Repo({self.name!r})"

        @cache.memoize()
        def lookup(self, key: str) -> str:
            calls.append(("lookup", self.name, key))
            return f"{self.name}:{key}"

    seen: list[Any] = []
    client = app.test_client()
    with app.app_context():
        cache.clear()
        for path in (
            "/search?a=1&b=2", "/search?b=2&a=1", "/search?a=2",
            "/made", "/made",
            "/unless?skip=1", "/unless?skip=1", "/unless", "/unless",
            "/filtered", "/filtered", "/filtered?keep", "/filtered?keep",
            "/forced", "/forced", "/forced?force=1", "/forced",
            "/own-key?id=1", "/own-key?id=1", "/own-key?id=2",
            "/missing", "/missing", "/fragment/a", "/fragment/a", "/fragment/b",
        ):  # fmt: skip
            response = client.get(path)
            seen.append((path, response.status_code, response.data, response.headers.get("X-Kind")))
        seen.append((nothing(1), nothing(1)))
        seen.append((square(3), square(3), square(4)))
        cache.delete_memoized(square, 3)
        seen.append((square(3), square(4)))
        cache.delete_memoized(square)
        seen.append((square(3), square(4)))
        first, second = Repo("a"), Repo("b")
        seen.append((first.lookup("x"), first.lookup("x"), second.lookup("x")))
        cache.delete_memoized(first.lookup)
        seen.append((first.lookup("x"), second.lookup("x")))
        cache.delete_memoized_verhash(Repo.lookup)
        seen.append((first.lookup("x"), second.lookup("x")))
        seen.append(sorted(cache.set_many({"k1": 1, "k2": [2], "k3": None})))
        seen.append((cache.get_many("k1", "k2", "k3", "k4"), cache.get_dict("k1", "k4")))
        seen.append((cache.delete_many("k1"), cache.get("k1"), cache.has("k2"), cache.has("k4")))
        seen.append((cache.add("k2", "no"), cache.add("k5", "yes"), cache.get_many("k2", "k5")))
        backend = cache.cache
        seen.append((backend.inc("n"), backend.inc("n", 5), backend.dec("n", 10), cache.get("n")))
        seen.append((cache.delete("k2"), cache.get("k2")))
        seen.append((cache.clear(), cache.get("k5"), cache.get("n")))
    seen.append(calls)
    return seen


def _their_config(
    kind: str, tmp_path: Path, redis: RedisServer, memcached: MemcachedServer
) -> dict[str, Any]:
    if kind == "simple":
        return {"CACHE_TYPE": "SimpleCache"}
    if kind == "file":
        return {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(tmp_path / "theirs")}
    if kind == "redis":
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis.url}
    servers = [f"{memcached.host}:{memcached.port}"]
    return {"CACHE_TYPE": "MemcachedCache", "CACHE_MEMCACHED_SERVERS": servers}


@pytest.mark.parametrize(
    "settings",
    [{}, {"CACHE_KEY_PREFIX": "pfx:", "CACHE_DEFAULT_TIMEOUT": 0}, {"CACHE_SOURCE_CHECK": True}],
    ids=["defaults", "prefix-no-expiry", "source-check"],
)
def test_a_flask_app_sees_what_flask_cachings_own_backend_gives(
    url: str,
    settings: dict[str, Any],
    tmp_path: Path,
    redis_server: RedisServer,
    memcached_server: MemcachedServer,
) -> None:
    theirs = _their_config(url.partition(":")[0], tmp_path, redis_server, memcached_server)
    expected = _flask_app_story(*_app(**theirs, **settings))
    assert _flask_app_story(*_app(CACHE_URL=url, **settings)) == expected


class _DictCache(BaseCache):
    """A plugin's backend taking only the shared options, as docs/plugins.md asks."""

    def __init__(
        self,
        default_timeout: float = 300,
        *,
        key_prefix: str = "",
        serializer: str | None = None,
        secret: str | None = None,
    ) -> None:
        super().__init__(
            default_timeout, key_prefix=key_prefix, serializer=serializer, secret=secret
        )
        self.entries: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        check_key(key)
        payload = self.entries.get(key)
        return None if payload is None else self._decode_or_miss(key, payload)

    def set(self, key: str, value: Any, timeout: Any = None) -> bool:
        check_key(key)
        self.entries[key] = self._encode(value, key)
        return True

    def add(self, key: str, value: Any, timeout: Any = None) -> bool:
        return not self.has(key) and self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        check_key(key)
        return self.entries.pop(key, None) is not None

    def has(self, key: str) -> bool:
        check_key(key)
        return key in self.entries

    def clear(self) -> bool:
        self.entries.clear()
        return True


class _DictPlugin:
    @hookimpl
    def cacheplug_register_backends(self, register: Callable[[str, object], None]) -> None:
        register("flaskdict", _DictCache)


@pytest.fixture
def dict_plugin() -> Iterator[None]:
    reset_plugins()
    register_plugin(_DictPlugin(), name="flask-dict")
    yield
    reset_plugins()


@pytest.mark.usefixtures("dict_plugin")
def test_a_plugin_backend_works_behind_flask_caching() -> None:
    # Flask-Caching passes cachelib's ignore_delete_many_errors, which a plugin need not take
    app, cache = _app(CACHE_URL="flaskdict://", CACHE_IGNORE_ERRORS=True)
    backend = app.extensions["cache"][cache]
    assert isinstance(backend, _DictCache)
    with app.app_context():
        assert cache.set("k", {"v": 1}) is True
        assert cache.get("k") == {"v": 1}
        assert cache.delete_many("k", "gone") == ["k"]


def test_the_urls_default_timeout_is_not_replaced_by_flask_cachings_default() -> None:
    app, cache = _app(CACHE_URL="simple://?default_timeout=60")
    assert app.extensions["cache"][cache].default_timeout == 60
    app, cache = _app(CACHE_URL="simple://?default_timeout=60", CACHE_DEFAULT_TIMEOUT=5)
    assert app.extensions["cache"][cache].default_timeout == 60  # the URL wins, as key_prefix
    app, cache = _app(
        CACHE_URL="simple://?default_timeout=60", CACHE_OPTIONS={"default_timeout": 7}
    )
    assert app.extensions["cache"][cache].default_timeout == 7
    app, cache = _app(CACHE_URL="simple://", CACHE_DEFAULT_TIMEOUT=0)
    assert app.extensions["cache"][cache].default_timeout == 0


def test_view_timeouts_and_a_default_of_zero_behind_flask(clock: FakeClock) -> None:
    app, cache = _app(CACHE_DEFAULT_TIMEOUT=0, CACHE_OPTIONS={"clock": clock})
    calls: list[str] = []

    @app.route("/short")
    @cache.cached(timeout=5)
    def short() -> str:
        calls.append("short")
        return f"short #{len(calls)}"

    @app.route("/forever")
    @cache.cached()
    def forever() -> str:
        calls.append("forever")
        return f"forever #{len(calls)}"

    client = app.test_client()
    assert [client.get(p).data for p in ("/short", "/forever")] == [b"short #1", b"forever #2"]
    clock.advance(6)
    assert client.get("/short").data == b"short #3"
    clock.advance(10 * 365 * 24 * 3600)
    assert client.get("/forever").data == b"forever #2"


def test_a_default_timeout_of_zero_stores_redis_entries_without_expiry(
    redis_server: RedisServer,
) -> None:
    app, cache = _app(CACHE_URL=redis_server.url, CACHE_DEFAULT_TIMEOUT=0, CACHE_KEY_PREFIX="z0:")
    with app.app_context():
        cache.set("forever", 1)
        cache.set("short", 1, timeout=100)
    assert redis_server.command("TTL", "z0:forever") == -1
    assert 0 < int(redis_server.command("TTL", "z0:short")) <= 100  # type: ignore[arg-type]


def test_two_apps_share_one_server_under_their_own_prefixes(url: str) -> None:
    cache = Cache()  # an app factory's extension, initialised for each app
    apps = []
    for prefix in ("one:", "two:"):
        app = Flask(__name__)
        app.config.update(
            CACHE_TYPE="cacheplug.flask.cache_factory", CACHE_URL=url, CACHE_KEY_PREFIX=prefix
        )
        cache.init_app(app)
        apps.append(app)
    for number, app in enumerate(apps):
        with app.app_context():
            cache.set("key", number)
    with apps[0].app_context():
        assert cache.get("key") == 0
        assert cache.clear() is True
        assert cache.get("key") is None
    with apps[1].app_context():
        assert cache.get("key") == 1
        cache.clear()


def test_cache_serializer_from_cachelib_is_used(redis_server: RedisServer) -> None:
    app, cache = _app(
        CACHE_URL=redis_server.url, CACHE_KEY_PREFIX="ser:", CACHE_SERIALIZER=RedisSerializer
    )
    backend = app.extensions["cache"][cache]
    assert isinstance(backend.serializer, RedisSerializer)
    with app.app_context():
        cache.set("k", {"a": [1]})
        assert cache.get("k") == {"a": [1]}
        assert backend.inc("n", 2) == 2
        assert cache.get("n") == 2
        cache.clear()


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password="hunter2-flask") as server:
        yield server


@pytest.mark.parametrize("kind", ["redis_with_password", "fresh_memcached_server"])
def test_views_keep_answering_through_an_outage_and_cache_again_after(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: RedisServer | MemcachedServer = request.getfixturevalue(kind)
    app, cache = _app(CACHE_URL=f"{server.url}?dead_timeout=0.05")
    calls: list[int] = []

    @app.route("/v")
    @cache.cached()
    def view() -> str:
        calls.append(1)
        return f"v #{len(calls)}"

    @cache.memoize()
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    client = app.test_client()
    with app.app_context(), caplog.at_level(logging.INFO):
        assert [client.get("/v").data, client.get("/v").data] == [b"v #1", b"v #1"]
        server.kill()
        assert [client.get("/v").data, client.get("/v").data] == [b"v #2", b"v #3"]
        assert (square(2), square(2)) == (4, 4)
        assert (cache.set("k", 1), cache.get("k"), cache.clear()) == (False, None, False)
        cache.delete_memoized(square)
        server.restart()
        wait_until(lambda: bool(cache.set("k", 1)))
        assert [client.get("/v").data, client.get("/v").data] == [b"v #6", b"v #6"]
    assert "hunter2-flask" not in caplog.text
    assert f"{type(cache.cache).__name__}.get failed" in caplog.text


@pytest.mark.parametrize(
    "kind",
    ["redis_server", "memcached_server"],
)
def test_an_app_dropped_without_close_leaves_no_open_socket(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # Flask-Caching never closes its backend: every app an app factory builds and drops (one
    # per test in a user's suite) takes its cache's connections with it
    server: RedisServer | MemcachedServer = request.getfixturevalue(kind)
    gc.collect()  # only this test's sockets count, not those earlier tests dropped
    app, cache = _app(CACHE_URL=server.url, CACHE_KEY_PREFIX="dropped:")
    with app.app_context():
        assert cache.set("k", [1]) is True
        assert cache.get_many("k", "other") == [[1], None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del app, cache
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_a_cached_views_status_survives_only_pickle_as_index_md_says(serializer: str) -> None:
    """docs/index.md: with json or msgpack a view's (body, status) tuple comes back as a
    list, answered as a JSON body with status 200; pickle keeps the response."""
    app, cache = _app(CACHE_URL=f"simple://?serializer={serializer}")

    @app.route("/item")
    @cache.cached()
    def item() -> tuple[str, int]:
        return "no such item", 404

    with app.app_context():
        client = app.test_client()
        first, again = client.get("/item"), client.get("/item")
    assert (first.status_code, first.data) == (404, b"no such item")
    if serializer == "pickle":
        assert (again.status_code, again.data) == (404, b"no such item")
    else:
        assert again.status_code == 200
        assert again.get_json() == ["no such item", 404]
