"""Drop-in proof: one script of calls runs on cachelib's cache and on ours, same answers.

Where cachelib disagrees with itself, cacheplug follows its documented contract, and the script
leaves those calls out (docs/contract.md lists them): deleting a missing key (cachelib's
FileSystemCache answers True), a negative timeout (cachelib's RedisCache stores -1 forever), and
``delete_many`` of missing keys (cachelib 0.16+ lists keys that were never there).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import tempfile
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cachelib
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheplug


def script(cache: Any) -> list[Any]:
    """Calls a cachelib user makes, with every return value recorded."""
    out: list[Any] = []
    record = out.append
    record(cache.get("a"))
    record(cache.set("a", {"x": [1]}))
    record(cache.get("a"))
    record(cache.add("a", 2))
    record(cache.add("b", 2))
    record(cache.get("b"))
    record(cache.has("a"))
    record(cache.has("zz"))
    record(cache.delete("a"))
    record(cache.get("a"))
    record(cache.inc("n"))
    record(cache.inc("n", 5))
    record(cache.dec("n", 10))
    record(cache.get("n"))
    record(cache.dec("m"))
    record(sorted(cache.set_many({"p": 1, "q": "two"})))
    record(cache.get_many("p", "q", "nope"))
    record(cache.get_dict("p", "q", "nope"))
    record(cache.delete_many("p", "q"))
    record(cache.set("t", 1, timeout=0))
    record(cache.get("t"))
    record(cache.set("bool", True))
    record(cache.get("bool"))
    record(cache.set("tuple", (1, "2")))
    record(cache.get("tuple"))
    record(cache.set("bytes", b"\x00raw"))
    record(cache.get("bytes"))
    record(cache.set("text", "ünïcode"))
    record(cache.get("text"))
    record(cache.clear())
    record(cache.get("b"))
    return out


def assert_same_answers(theirs: Any, ours: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = script(theirs)
    got = script(ours)
    assert got == expected
    assert [type(v) for v in got] == [type(v) for v in expected]


def test_simple_cache() -> None:
    assert_same_answers(cachelib.SimpleCache(), cacheplug.SimpleCache())
    assert_same_answers(cachelib.SimpleCache(10, 60), cacheplug.SimpleCache(10, 60))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((10, 60, False), {}),
        ((), {"threshold": 0}),
        ((), {"default_timeout": timedelta(minutes=1), "ignore_delete_many_errors": False}),
    ],
    ids=["positional", "threshold-0", "keywords"],
)
def test_simple_cache_takes_cachelib_constructor_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    theirs = cachelib.SimpleCache(*args, **kwargs)
    ours = cacheplug.SimpleCache(*args, **kwargs)
    assert ours.threshold == theirs._threshold
    assert ours.default_timeout == theirs.default_timeout
    assert ours.ignore_delete_many_errors is theirs.ignore_delete_many_errors
    assert_same_answers(theirs, ours)


def test_filesystem_cache(tmp_path: Path) -> None:
    assert_same_answers(
        cachelib.FileSystemCache(str(tmp_path / "theirs"), threshold=50, mode=0o600),
        cacheplug.FileSystemCache(str(tmp_path / "ours"), threshold=50, mode=0o600),
    )


def test_redis_cache(redis_server: Any) -> None:
    def make(cls: Callable[..., Any], prefix: str) -> Any:
        return cls(host=redis_server.host, port=redis_server.port, db=0, key_prefix=prefix)

    assert_same_answers(
        make(cachelib.RedisCache, "dropin-theirs:"), make(cacheplug.RedisCache, "dropin-ours:")
    )


def test_memcached_cache(memcached_server: Any) -> None:
    servers = [f"{memcached_server.host}:{memcached_server.port}"]
    assert_same_answers(
        cachelib.MemcachedCache(servers, key_prefix="dropin-theirs:"),
        cacheplug.MemcachedCache(servers, key_prefix="dropin-ours:"),
    )


def test_serializer_attribute_takes_cachelib_serializers(tmp_path: Path) -> None:
    from cachelib.serializers import FileSystemSerializer, SimpleSerializer

    simple = cacheplug.SimpleCache()
    simple.serializer = SimpleSerializer()
    files = cacheplug.FileSystemCache(str(tmp_path))
    files.serializer = FileSystemSerializer()
    for cache in (simple, files):
        assert cache.set("k", {"v": [1, 2]}) is True
        assert cache.get("k") == {"v": [1, 2]}


# pickle fails to look this lambda up by name: PicklingError, which cachelib turns into None
UNPICKLABLE = [lambda: 1]


def test_cachelib_serializer_failure_says_what_it_could_not_encode() -> None:
    from cachelib.serializers import SimpleSerializer

    cache = cacheplug.SimpleCache()
    cache.serializer = SimpleSerializer()
    cache.set("k", [1])
    # cachelib's serializer logs pickle's error and returns None; the text must not blame
    # the serializer's return type ("encode text") for a value it could not encode
    with pytest.raises(cacheplug.SerializationError, match="cannot encode a value of type list"):
        cache.set("k", UNPICKLABLE)
    assert cache.get("k") == [1]


@pytest.mark.parametrize("name", ["SimpleCache", "FileSystemCache", "RedisCache", "MemcachedCache"])
def test_same_class_names_and_methods(name: str) -> None:
    theirs, ours = getattr(cachelib, name), getattr(cacheplug, name)
    public = {m for m in dir(theirs) if not m.startswith("_") and callable(getattr(theirs, m))}
    # cachelib's own client-library picker has no meaning with one driver per engine.
    public.discard("import_preferred_memcache_lib")
    assert public <= set(dir(ours))


def test_null_cache_takes_cachelib_constructor_arguments() -> None:
    forms: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((60, False), {}),
        ((), {"ignore_delete_many_errors": False}),
    ]
    for args, kwargs in forms:
        theirs = cachelib.NullCache(*args, **kwargs)
        ours = cacheplug.NullCache(*args, **kwargs)
        assert ours.default_timeout == theirs.default_timeout
        assert ours.ignore_delete_many_errors is theirs.ignore_delete_many_errors is False


def make_each(
    name: str, redis_server: Any, memcached_server: Any, tmp_path: Path, subclass: Any = None
) -> Any:
    """``cacheplug.<name>`` (or ``subclass`` of it) on a real engine or directory, as a cachelib
    user builds it."""
    cls = subclass or getattr(cacheplug, name)
    if name == "RedisCache":
        return cls(redis_server.host, redis_server.port, None, 0, 300, "dt:")
    if name == "MemcachedCache":
        return cls([f"{memcached_server.host}:{memcached_server.port}"])
    if name == "FileSystemCache":
        return cls(str(tmp_path))
    return cls()


ENGINES = ["SimpleCache", "FileSystemCache", "RedisCache", "MemcachedCache"]


@pytest.mark.parametrize("name", ENGINES)
def test_reassigned_default_timeout_applies_to_later_sets(
    name: str, redis_server: Any, memcached_server: Any, tmp_path: Path
) -> None:
    # cachelib reads default_timeout on every set: reassigning it is how its users change it
    cache = make_each(name, redis_server, memcached_server, tmp_path)
    cache.default_timeout = -1  # already expired: visible at once, with no clock to wait on
    assert cache.set("k", "v") is True
    assert cache.get("k") is None
    assert cache.add("k", "v") is True
    assert cache.has("k") is False
    cache.default_timeout = 0
    assert cache.set("k", "v") is True
    assert cache.get("k") == "v"


@pytest.mark.parametrize("name", [*ENGINES, "NullCache"])
def test_cachelib_public_attributes(
    name: str, redis_server: Any, memcached_server: Any, tmp_path: Path
) -> None:
    cache = make_each(name, redis_server, memcached_server, tmp_path)
    assert cache.ignore_delete_many_errors is True
    assert cache.default_timeout == 300


# -- differential: random call sequences on cachelib's class and on ours ----------------------

VALUE_KEYS = ["a", "b", "ünï cöde"]
COUNTER_KEYS = ["n", "m"]
KEYS_USED = [*VALUE_KEYS, "c", *COUNTER_KEYS]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.tuples(st.integers(), st.text(max_size=3)),
)
counters = st.integers(-1000, 1000)


def call_sequences(
    timeouts: list[Any], value_keys: list[str] = VALUE_KEYS
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Calls a cachelib user makes, as (method, *arguments)."""
    timeout = st.sampled_from(timeouts)
    any_key = st.sampled_from(value_keys + COUNTER_KEYS)
    key_lists = st.lists(any_key, max_size=4)
    value_key, counter_key = st.sampled_from(value_keys), st.sampled_from(COUNTER_KEYS)
    call = st.one_of(
        st.tuples(st.just("get"), any_key),
        st.tuples(st.just("has"), any_key),
        st.tuples(st.just("delete"), any_key),
        st.tuples(st.sampled_from(["set", "add"]), value_key, values, timeout),
        st.tuples(st.just("set"), counter_key, counters, timeout),
        st.tuples(st.sampled_from(["inc", "dec"]), counter_key, st.integers(-50, 50)),
        st.tuples(st.sampled_from(["get_many", "get_dict", "delete_many"]), key_lists),
        st.tuples(st.just("set_many"), st.dictionaries(value_key, values, max_size=3), timeout),
        st.tuples(st.just("clear")),
    )
    return st.lists(call, min_size=1, max_size=15)


def shown(value: Any) -> str:
    """Text that tells apart 1, 1.0 and True, lists and tuples, and ignores dict order."""
    if isinstance(value, dict):
        return repr(sorted((shown(k), shown(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}{sorted(map(shown, value))}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}{[shown(item) for item in value]}"
    return repr(value)


def run_call(cache: Any, call: tuple[Any, ...]) -> Any:
    name, *args = call
    if name in ("get_many", "get_dict", "delete_many"):
        return getattr(cache, name)(*args[0])
    if len(args) == 3:  # set / add with a timeout
        return getattr(cache, name)(args[0], args[1], timeout=args[2])
    if name == "set_many":
        return cache.set_many(args[0], timeout=args[1])
    return getattr(cache, name)(*args)


def replay(theirs: Any, ours: Any, calls: list[tuple[Any, ...]]) -> None:
    """Each call on both caches: the same answer, except where docs/contract.md says why not."""
    for step, call in enumerate(calls):
        name = call[0]
        live = {k for k in KEYS_USED if theirs.has(k)}  # before the call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # cachelib 0.17: float timeouts
            expected = run_call(theirs, call)
        got = run_call(ours, call)
        if name == "delete":
            expected = call[1] in live  # cachelib's FileSystemCache says True for a missing key
        elif name == "delete_many":
            # cachelib 0.16+ also lists keys that were never there, and repeats duplicates
            expected = [k for k in dict.fromkeys(call[1]) if k in live]
        elif name == "add" and call[1] not in live and expected is False:
            # cachelib's FileSystemCache refuses to add over an expired entry's file: store it
            # there as the contract does here, so later calls compare like with like
            assert theirs.set(call[1], call[2], timeout=call[3]) is True
            expected = True
        elif name == "clear":
            expected = True  # cachelib's RedisCache says False when no key had its prefix
        elif name == "set_many":
            expected, got = sorted(expected), sorted(got)
        assert shown(got) == shown(expected), f"call {step}: {call}"
    for key in KEYS_USED:  # what a later get sees
        assert shown(ours.get(key)) == shown(theirs.get(key)), key


_run_id = itertools.count()
TIMEOUTS = [None, 0, 60, 2.5, timedelta(minutes=5)]
# cachelib's RedisCache stores a negative timeout forever: docs/contract.md
EXPIRED = [-1]
differential = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("form", ["positional", "keywords"])
@differential
@given(data=st.data())
def test_simple_cache_differential(form: str, data: st.DataObject) -> None:
    calls = data.draw(call_sequences(TIMEOUTS + EXPIRED))
    args: tuple[Any, ...] = (500, 300, True) if form == "positional" else ()
    kwargs: dict[str, Any] = (
        {} if args else {"threshold": 100, "default_timeout": timedelta(minutes=1)}
    )
    replay(cachelib.SimpleCache(*args, **kwargs), cacheplug.SimpleCache(*args, **kwargs), calls)


@pytest.mark.parametrize("form", ["positional", "keywords"])
@differential
@given(data=st.data())
def test_filesystem_cache_differential(form: str, data: st.DataObject) -> None:
    calls = data.draw(call_sequences(TIMEOUTS + EXPIRED))
    with tempfile.TemporaryDirectory() as root:

        def make(cls: Callable[..., Any], where: str) -> Any:
            path = os.path.join(root, where)
            if form == "positional":
                return cls(path, 500, 300, 0o600, hashlib.md5)
            return cls(
                cache_dir=path,
                threshold=0,
                default_timeout=60,
                mode=0o640,
                hash_method=hashlib.sha1,
            )

        replay(
            make(cachelib.FileSystemCache, "theirs"), make(cacheplug.FileSystemCache, "ours"), calls
        )


@pytest.mark.parametrize("form", ["positional", "keywords", "client"])
@differential
@given(data=st.data())
def test_redis_cache_differential(form: str, redis_server: Any, data: st.DataObject) -> None:
    calls = data.draw(call_sequences(TIMEOUTS))
    run = next(_run_id)

    def make(cls: Callable[..., Any], side: str) -> Any:
        prefix = f"diff{run}-{side}:"
        if form == "positional":
            return cls(redis_server.host, redis_server.port, None, 0, 300, prefix)
        if form == "client":  # a ready redis-py client instead of a host name
            return cls(redis.Redis(redis_server.host, redis_server.port), key_prefix=prefix)
        return cls(
            host=redis_server.host,
            port=redis_server.port,
            db=1,
            default_timeout=timedelta(minutes=5),
            key_prefix=lambda: prefix,
        )

    replay(make(cachelib.RedisCache, "theirs"), make(cacheplug.RedisCache, "ours"), calls)


@pytest.mark.parametrize("form", ["positional", "keywords"])
@differential
@given(data=st.data())
def test_memcached_cache_differential(
    form: str, memcached_server: Any, data: st.DataObject
) -> None:
    # cachelib's client (python-memcached) raises on keys with spaces or beyond ASCII
    calls = data.draw(call_sequences(TIMEOUTS + EXPIRED, ["a", "b", "c"]))
    run = next(_run_id)
    address = f"{memcached_server.host}:{memcached_server.port}"

    def make(cls: Callable[..., Any], side: str) -> Any:
        prefix = f"diff{run}-{side}:"
        if form == "positional":
            return cls([address], 300, prefix)
        return cls(servers=(address,), default_timeout=timedelta(minutes=5), key_prefix=prefix)

    replay(make(cachelib.MemcachedCache, "theirs"), make(cacheplug.MemcachedCache, "ours"), calls)


@pytest.mark.parametrize("name", [*ENGINES, "NullCache"])
def test_default_timeout_from_a_timedelta_reads_as_cachelib_has_it(
    name: str, redis_server: Any, memcached_server: Any, tmp_path: Path
) -> None:
    # cachelib 0.17 keeps whole seconds: code formatting it (a max-age header) sees "60"
    args: dict[str, Any] = {"default_timeout": timedelta(minutes=1)}
    if name == "RedisCache":
        args.update(host=redis_server.host, port=redis_server.port)
    elif name == "MemcachedCache":
        args.update(servers=[f"{memcached_server.host}:{memcached_server.port}"])
    elif name == "FileSystemCache":
        args.update(cache_dir=str(tmp_path))
    theirs = getattr(cachelib, name)(**args)
    ours = getattr(cacheplug, name)(**args)
    assert f"max-age={ours.default_timeout}" == f"max-age={theirs.default_timeout}" == "max-age=60"


@differential
@given(data=st.data())
def test_null_cache_differential(data: st.DataObject) -> None:
    replay(cachelib.NullCache(), cacheplug.NullCache(), data.draw(call_sequences(TIMEOUTS)))


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize(
    "serializer", ["JSONSerializer", "RedisSerializer", "SimpleSerializer", "FileSystemSerializer"]
)
def test_subclass_with_a_cachelib_serializer_at_class_level(
    name: str, serializer: str, redis_server: Any, memcached_server: Any, tmp_path: Path
) -> None:
    from cachelib import serializers

    # class AppCache(RedisCache): serializer = RedisSerializer()
    subclass = type(
        "AppCache", (getattr(cacheplug, name),), {"serializer": getattr(serializers, serializer)()}
    )
    cache = make_each(name, redis_server, memcached_server, tmp_path, subclass)
    cache.clear()
    assert cache.set("a", {"x": [1, 2]}) is True
    assert cache.get("a") == {"x": [1, 2]}
    assert cache.set_many({"n": 5, "t": True}) == ["n", "t"]
    assert cache.inc("n") == 6
    assert [cache.get("n"), cache.get("t")] == [6, True]
    assert cache.get_many("a", "zz") == [{"x": [1, 2]}, None]
    # the class's serializer is the one in use: JSON has no tuples
    assert cache.set("pair", (1, 2)) is True
    assert cache.get("pair") == ([1, 2] if serializer == "JSONSerializer" else (1, 2))


@pytest.mark.parametrize("name", ENGINES)
def test_subclass_overriding_get_many_feeds_get_dict(
    name: str, redis_server: Any, memcached_server: Any, tmp_path: Path
) -> None:
    class AppCache(getattr(cacheplug, name)):  # type: ignore[misc]
        def get_many(self, *keys: str) -> list[Any]:
            return [f"seen {key}" for key in keys]

    cache = make_each(name, redis_server, memcached_server, tmp_path, AppCache)
    assert cache.get_dict("a", "b") == {"a": "seen a", "b": "seen b"}


@pytest.mark.parametrize("name", [*ENGINES, "NullCache"])
def test_constructor_parameters_in_cachelib_order(name: str) -> None:
    def positional(cls: Any) -> list[str]:
        parameters = inspect.signature(cls).parameters.values()
        return [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]

    theirs, ours = positional(getattr(cachelib, name)), positional(getattr(cacheplug, name))
    assert ours[: len(theirs)] == theirs
    takes_extra = inspect.Parameter.VAR_KEYWORD  # RedisCache passes the rest to redis.Redis
    kinds = {p.kind for p in inspect.signature(getattr(cachelib, name)).parameters.values()}
    ours_kinds = {p.kind for p in inspect.signature(getattr(cacheplug, name)).parameters.values()}
    assert takes_extra not in kinds or takes_extra in ours_kinds


@pytest.mark.parametrize("name", [*ENGINES, "NullCache"])
def test_public_methods_take_cachelib_parameters_in_cachelib_order(name: str) -> None:
    theirs, ours = getattr(cachelib, name), getattr(cacheplug, name)
    for method in sorted(m for m in dir(theirs) if not m.startswith("_")):
        if method == "import_preferred_memcache_lib" or not inspect.isfunction(
            getattr(theirs, method)
        ):
            continue
        expected = list(inspect.signature(getattr(theirs, method)).parameters)
        got = list(inspect.signature(getattr(ours, method)).parameters)
        assert got[: len(expected)] == expected, method


def test_filesystem_cache_mgmt_element_entries_never_expire(tmp_path: Path) -> None:
    # cachelib's FileSystemCache.set and delete take mgmt_element (its bookkeeping entries):
    # such an entry is stored without expiry, whatever the timeout
    def calls(cache: Any) -> list[Any]:
        return [
            cache.set("k", "v", -1, True),
            cache.get("k"),
            cache.set("j", [1], timeout=60, mgmt_element=True),
            cache.get("j"),
            cache.delete("k", True),
            cache.delete("j", mgmt_element=True),
            cache.get_many("k", "j"),
        ]

    expected = calls(cachelib.FileSystemCache(str(tmp_path / "theirs")))
    assert calls(cacheplug.FileSystemCache(str(tmp_path / "ours"))) == expected


def cachelib_style_redis_housekeeping(cache: Any, prefix: str) -> list[Any]:
    """What code written for cachelib's RedisCache does with its client (seen in public
    Flask apps): a raw counter, a ping, a pattern scan and delete by the cache's key names."""
    client = cache._write_client
    client.set(f"{prefix}raw", "42")
    cache.set("a", 1)
    cache.set("b", 2)
    answers = [cache.get("raw"), client.ping()]
    found = sorted(cache._read_client.keys(f"{prefix}*"))
    client.delete(*found)
    return [*answers, found, cache.get("a"), cache.has("b")]


def test_redis_client_under_cachelibs_names(redis_server: Any) -> None:
    answers = [
        cachelib_style_redis_housekeeping(
            cls(host=redis_server.host, port=redis_server.port, key_prefix=prefix), prefix
        )
        for cls, prefix in (
            (cachelib.RedisCache, "dropin-c1:"),
            (cacheplug.RedisCache, "dropin-c2:"),
        )
    ]
    theirs, ours = ([*a[:2], [name.split(b":")[1] for name in a[2]], *a[3:]] for a in answers)
    assert ours == theirs == [42, True, [b"a", b"b", b"raw"], None, False]


def test_redis_client_under_cachelibs_names_during_an_outage(fresh_redis_server: Any) -> None:
    cache = cacheplug.RedisCache(
        host=fresh_redis_server.host, port=fresh_redis_server.port, socket_timeout=0.5
    )
    fresh_redis_server.kill()
    assert cache.get("k") is None  # the cache now stands in for the failed server's client
    assert isinstance(cache._write_client, redis.Redis)
    assert cache._read_client is cache._write_client
    fresh_redis_server.restart()
    assert cache._write_client.ping() is True
