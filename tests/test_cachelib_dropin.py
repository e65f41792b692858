"""Drop-in proof: one script of calls runs on cachelib's cache and on ours, same answers.

Where cachelib disagrees with itself, cacheplug follows its documented contract, and the script
leaves those calls out (docs/contract.md lists them): deleting a missing key (cachelib's
FileSystemCache answers True), a negative timeout (cachelib's RedisCache stores -1 forever), and
``delete_many`` of missing keys (cachelib 0.16+ lists keys that were never there).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cachelib
import pytest

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
    for args, kwargs in (((60, False), {}), ((), {"ignore_delete_many_errors": False})):
        theirs = cachelib.NullCache(*args, **kwargs)
        ours = cacheplug.NullCache(*args, **kwargs)
        assert ours.default_timeout == theirs.default_timeout
        assert ours.ignore_delete_many_errors is theirs.ignore_delete_many_errors is False


def make_each(name: str, redis_server: Any, memcached_server: Any, tmp_path: Path) -> Any:
    """``cacheplug.<name>`` on a real engine or directory, as a cachelib user builds it."""
    if name == "RedisCache":
        return cacheplug.RedisCache(redis_server.host, redis_server.port, None, 0, 300, "dt:")
    if name == "MemcachedCache":
        return cacheplug.MemcachedCache([f"{memcached_server.host}:{memcached_server.port}"])
    if name == "FileSystemCache":
        return cacheplug.FileSystemCache(str(tmp_path))
    return getattr(cacheplug, name)()


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
