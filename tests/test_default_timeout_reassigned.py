"""A reassigned ``default_timeout`` is checked and normalized at the assignment, as the
constructor does it: seconds or a timedelta (read back as seconds); anything else raises there,
naming it, and leaves the old value. Below 0 stays allowed (cachelib's users set -1 for entries
born expired). Third-party subclasses may assign it early, give it as a class attribute or read
it."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from cacheplug import (
    BaseCache,
    ConfigurationError,
    FileSystemCache,
    MemcachedCache,
    NullCache,
    RedisCache,
    SimpleCache,
)
from cacheplug.core.arguments import check_key
from cacheplug.core.timeouts import Timeout, normalize_timeout

Factory = Callable[..., Any]  # assigns a timedelta and worse, beyond the float it is typed


class DictCache(BaseCache):
    """A third-party backend on the base class's defaults, reading ``default_timeout`` as
    cachelib's backends do."""

    def __init__(self, default_timeout: float | timedelta = 300, **options: Any) -> None:
        super().__init__(default_timeout, **options)
        self.seconds: dict[str, float] = {}  # the lifetime each key was stored with
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        seconds = normalize_timeout(timeout, self.default_timeout)
        self.seconds[key] = seconds
        if seconds < 0:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return key not in self.values and self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        return self.values.pop(key, None) is not None

    def has(self, key: str) -> bool:
        return key in self.values

    def clear(self) -> bool:
        self.values.clear()
        return True


BACKENDS = [
    "SimpleCache",
    "NullCache",
    "FileSystemCache",
    "DictCache",
    "RedisCache",
    "MemcachedCache",
]
STORING = [
    "SimpleCache",
    "FileSystemCache",
    "DictCache",
    "RedisCache",
    "MemcachedCache",
]
CLOCKED = ["SimpleCache", "FileSystemCache"]


@pytest.fixture
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """``factory(**options)``: the parametrized backend, on a real engine or directory."""
    name = request.param
    if name == "RedisCache":
        redis_server = request.getfixturevalue("redis_server")
        return lambda **options: RedisCache(
            redis_server.host, redis_server.port, key_prefix="dtr:", **options
        )
    if name == "MemcachedCache":
        memcached_server = request.getfixturevalue("memcached_server")
        servers = [f"{memcached_server.host}:{memcached_server.port}"]
        return lambda **options: MemcachedCache(servers, key_prefix="dtr:", **options)
    if name == "FileSystemCache":
        return lambda **options: FileSystemCache(tmp_path / "cache", **options)
    return {"SimpleCache": SimpleCache, "NullCache": NullCache, "DictCache": DictCache}[name]


def _stored(cache: BaseCache, key: str = "k") -> bool:
    """Whether a set under the current default_timeout can be read back at once."""
    assert cache.set(key, "v") is True
    return bool(cache.get(key) == "v")


# -- reassigned to accepted values: normalized as the constructor does -----------------------


AS_SECONDS = [
    (timedelta(minutes=1), 60),
    (timedelta(seconds=1.5), 1.5),
    (timedelta(0), 0),
    (timedelta(seconds=-1), -1),
    (60, 60),
    (2.5, 2.5),
    (-0.5, -0.5),
    (10**40, 2**53),  # as long as a timeout can be
]


@pytest.mark.parametrize("factory", BACKENDS, indirect=True)
def test_a_reassigned_default_timeout_reads_back_as_seconds(factory: Factory) -> None:
    cache = factory()
    for given, seconds in AS_SECONDS:
        cache.default_timeout = given
        read = cache.default_timeout
        # 60, not 60.0 nor a timedelta, as after construction
        assert (read, type(read)) == (seconds, type(seconds)), given
        if seconds >= 0:
            built = factory(default_timeout=given)
            assert (built.default_timeout, type(built.default_timeout)) == (read, type(read))
            built.close()


@pytest.mark.parametrize("factory", STORING, indirect=True)
def test_a_reassigned_timedelta_applies_to_later_sets(factory: Factory) -> None:
    # before: TypeError '>' not supported between 'datetime.timedelta' and 'int', from set
    cache = factory()
    cache.clear()
    cache.default_timeout = timedelta(minutes=1)
    assert _stored(cache, "a")
    cache.default_timeout = timedelta(seconds=-1)  # born expired
    assert _stored(cache, "b") is False
    assert cache.has("b") is False
    cache.default_timeout = timedelta(0)  # never expires
    assert _stored(cache, "c")


@pytest.mark.parametrize("factory", CLOCKED, indirect=True)
def test_a_reassigned_timedelta_is_the_lifetime_of_later_entries(factory: Factory) -> None:
    clock = FakeClock()
    cache = factory(clock=clock)
    cache.default_timeout = timedelta(minutes=1)
    assert cache.set("k", "v") is True
    assert cache.add("n", 1) is True
    assert cache.inc("counter") == 1
    clock.advance(59)
    assert (cache.get("k"), cache.get("n"), cache.get("counter")) == ("v", 1, 1)
    clock.advance(2)
    assert (cache.get("k"), cache.get("n"), cache.get("counter")) == (None, None, None)


# -- reassigned to anything else: TypeError at the assignment, the old value stays -----------

NOT_SECONDS = [
    "300",
    None,
    True,
    False,
    math.nan,
    math.inf,
    -math.inf,
    b"60",
    [60],
    Decimal("60"),  # the constructor takes no Decimal either
]


@pytest.mark.parametrize("factory", BACKENDS, indirect=True)
@pytest.mark.parametrize("bad", NOT_SECONDS, ids=repr)
def test_a_bad_reassignment_raises_at_once_and_keeps_the_old_value(
    factory: Factory, bad: object
) -> None:
    # before: accepted, then set raised a cryptic TypeError ('>' not supported ...) or, for
    # NaN, answered True and stored nothing
    cache = factory()
    cache.default_timeout = 42
    with pytest.raises(TypeError) as raised:
        cache.default_timeout = bad
    message = str(raised.value)
    assert message.startswith("default_timeout must be a finite number of seconds")
    assert "or a timedelta" in message
    assert f"got {type(bad).__name__} {bad!r}" in message
    assert cache.default_timeout == 42
    if isinstance(cache, NullCache):
        assert cache.set("k", "v") is True
    else:
        assert _stored(cache)


@pytest.mark.parametrize("factory", ["SimpleCache", "NullCache", "DictCache"], indirect=True)
@pytest.mark.parametrize("bad", [True, math.nan, "60"], ids=repr)
def test_the_constructor_refuses_what_a_reassignment_refuses(factory: Factory, bad: object) -> None:
    with pytest.raises(TypeError, match="default_timeout must be"):
        factory(default_timeout=bad)


@pytest.mark.parametrize("factory", ["SimpleCache", "NullCache", "DictCache"], indirect=True)
def test_only_a_reassignment_may_go_below_zero(factory: Factory) -> None:
    with pytest.raises(ConfigurationError, match="default_timeout must be 0"):
        factory(default_timeout=-1)
    cache = factory()
    cache.default_timeout = -1
    assert cache.default_timeout == -1


def test_the_base_class_defaults_use_the_reassigned_value() -> None:
    cache = DictCache()
    cache.default_timeout = timedelta(minutes=2)  # type: ignore[assignment]
    assert cache.set_many({"a": 1}) == ["a"]
    assert cache.get_or_set("b", lambda: 2) == 2

    @cache.memoize()
    def double(n: int) -> int:
        return 2 * n

    assert double(4) == 8
    assert set(cache.seconds.values()) == {120}
    assert len(cache.seconds) == 3


# -- third-party subclasses ------------------------------------------------------------------


class _SetsItFirst(SimpleCache):
    """Assigns default_timeout before the base class's __init__ runs, as a cachelib subclass
    may: the base class then sets its own argument, as cachelib's does."""

    def __init__(self, seconds: object, **options: Any) -> None:
        self.default_timeout = seconds  # type: ignore[assignment]
        self.seen_before_init = self.default_timeout
        super().__init__(default_timeout=self.default_timeout, **options)


def test_a_subclass_may_assign_it_before_init() -> None:
    cache = _SetsItFirst(timedelta(seconds=90))
    assert (cache.seen_before_init, cache.default_timeout) == (90, 90)
    with pytest.raises(TypeError, match="got str '90'"):
        _SetsItFirst("90")


class _ClassDefault(SimpleCache):
    """Gives default_timeout as a class attribute and passes it on, as a subclass may."""

    default_timeout = 60

    def __init__(self, **options: Any) -> None:
        super().__init__(default_timeout=self.default_timeout, **options)

    def lifetime(self) -> float:
        return self.default_timeout


class _ClassDefaultAgain(_ClassDefault):
    default_timeout = timedelta(minutes=2)  # type: ignore[assignment]


class _ClassDefaultOnly(SimpleCache):
    default_timeout = 60


def test_a_class_attribute_stays_readable_and_the_instance_checked(clock: FakeClock) -> None:
    assert _ClassDefault.default_timeout == 60  # on the class: as written
    assert _ClassDefaultAgain.default_timeout == timedelta(minutes=2)
    assert _ClassDefaultAgain(clock=clock).default_timeout == 120
    cache: Any = _ClassDefault(clock=clock)
    assert cache.default_timeout == cache.lifetime() == 60
    with pytest.raises(TypeError, match="default_timeout must be"):
        cache.default_timeout = "5"
    assert cache.__dict__.get("default_timeout") is None  # the property, never shadowed
    cache.default_timeout = timedelta(seconds=5)
    assert cache.lifetime() == 5
    # set's hot path sees the reassigned value, not the class's
    cache.set("k", "v")
    clock.advance(6)
    assert cache.get("k") is None


def test_a_class_attribute_not_passed_on_is_the_constructors_default_as_in_cachelib() -> None:
    # cachelib's BaseCache.__init__ sets default_timeout from its own argument (300)
    cache = _ClassDefaultOnly()
    assert (cache.default_timeout, _ClassDefaultOnly.default_timeout) == (300, 60)
    cache.default_timeout = -1
    assert _stored(cache) is False


def test_a_bad_class_attribute_raises_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match=r"_Bad\.default_timeout must be .* got str '60'"):

        class _Bad(SimpleCache):
            default_timeout = "60"  # type: ignore[assignment]


def test_a_class_attribute_of_none_is_no_opinion() -> None:
    class _NoOpinion(_ClassDefault):
        default_timeout = None  # type: ignore[assignment]

    assert _NoOpinion.default_timeout is None
    assert _NoOpinion().default_timeout == 60  # read before init: the parent's class value


# -- pickled copies ----------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["SimpleCache", "NullCache", "FileSystemCache"], indirect=True)
def test_a_pickled_copy_keeps_a_reassigned_default_timeout(factory: Factory) -> None:
    cache = factory()
    cache.default_timeout = timedelta(seconds=7)
    copied = pickle.loads(pickle.dumps(cache))
    assert copied.default_timeout == 7
    copied.default_timeout = -1  # the copy's own, checked as well
    assert cache.default_timeout == 7
    with pytest.raises(TypeError):
        copied.default_timeout = "7"


def test_a_pickled_simple_cache_applies_its_reassigned_default_timeout() -> None:
    cache = SimpleCache()
    cache.default_timeout = -1
    copied = pickle.loads(pickle.dumps(cache))
    assert _stored(copied) is False  # born expired in the copy too
    subclassed = pickle.loads(pickle.dumps(_ClassDefault()))
    assert (type(subclassed), subclassed.default_timeout) == (_ClassDefault, 60)


def test_a_cache_pickled_before_the_property_keeps_its_default_timeout() -> None:
    # older versions kept default_timeout in the instance's __dict__, so in its pickled state
    state = SimpleCache().__getstate__()
    state["default_timeout"] = state.pop("_default_timeout")
    state["default_timeout"] = 9
    copied = SimpleCache.__new__(SimpleCache)
    copied.__setstate__(state)
    assert copied.default_timeout == 9
    assert "default_timeout" not in copied.__dict__
