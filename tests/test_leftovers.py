"""Small defects the last session noticed and left alone (closing note s17), one test each."""

from __future__ import annotations

import io
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from plugin_dists import write_distribution
from servers import RedisServer
from test_plugins import fresh_registry  # noqa: F401 - autouse: a clean registry per test
from test_plugins_review import Registers

from cacheplug import (
    ConfigurationError,
    PluginError,
    PluginLoadWarning,
    SimpleCache,
    from_url,
)
from cacheplug.cli import main
from cacheplug.core.plugins import (
    get_backend_class,
    get_serializer,
    register_plugin,
    serializer_names,
)

# -- cli.main() in-process ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status"), [(["plugins"], 0), (["check", "nosuch://"], 2), (["bogus"], None)]
)
def test_main_in_process_leaves_stdout_as_it_found_it(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], status: int | None
) -> None:
    # set in the test, not a fixture: pytest's capture puts its own stdout back before a call
    strict_stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", strict_stdout)
    if status is None:  # argparse's usage error ends in SystemExit
        with pytest.raises(SystemExit), warnings.catch_warnings():
            main(argv)
    else:
        assert main(argv) == status
    assert strict_stdout.errors == "strict"
    with pytest.raises(UnicodeEncodeError):
        print("\N{SNOWMAN}", file=strict_stdout)


# -- serializer names and case -----------------------------------------------------------------


class _Text:
    name = "text"

    def dumps(self, value: Any) -> bytes:
        return str(value).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


def test_a_serializer_name_differing_from_a_held_one_in_case_is_refused() -> None:
    with pytest.raises(PluginError) as raised:
        register_plugin(Registers(serializers={"Pickle": _Text}), name="upper-pickle")
    assert "'upper-pickle'" in str(raised.value)
    assert "'cacheplug.serializers.pickle'" in str(raised.value)
    assert "Pickle" not in serializer_names()
    assert type(get_serializer("pickle")).__name__ == "PickleSerializer"


def test_one_plugin_registering_a_name_in_two_cases_is_refused() -> None:
    class Other(_Text):
        pass

    with pytest.raises(PluginError, match="twice"):
        register_plugin(Registers(serializers={"Text": _Text, "text": Other}), name="two-cases")


def test_a_serializer_is_found_in_any_case() -> None:
    register_plugin(Registers(serializers={"Text": _Text}), name="text-plugin")
    assert serializer_names().count("Text") == 1  # listed as registered
    assert type(get_serializer("TEXT")) is _Text
    assert get_serializer("text") is get_serializer("Text")
    cache = from_url("simple://?serializer=tExT")
    assert type(cache.serializer) is _Text
    with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")


_FORMAT_MODULE = """\
from cacheplug import hookimpl
class Format:
    def dumps(self, value):
        return repr(value).encode()
    def loads(self, data):
        return data
@hookimpl
def cacheplug_register_serializers(register):
    register({name!r}, Format)
"""


def test_two_installed_plugins_claiming_one_name_in_two_cases_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("Fmt", "fmt"):
        module = f"leftovers_{name.lower()}_{'upper' if name[0].isupper() else 'lower'}"
        write_distribution(
            tmp_path,
            f"cacheplug-{module.replace('_', '-')}",
            "1.0",
            {f"{module}": module},
            {module: _FORMAT_MODULE.format(name=name)},
        )
    try:
        for spelled in ("fmt", "Fmt", "FMT"):
            with pytest.raises(PluginError) as raised:
                get_serializer(spelled)
            assert "'leftovers_fmt_upper'" in str(raised.value)
            assert "'leftovers_fmt_lower'" in str(raised.value)
    finally:
        for module in ("leftovers_fmt_upper", "leftovers_fmt_lower"):
            sys.modules.pop(module, None)


# -- SimpleCache.threshold lowered at runtime --------------------------------------------------


def test_a_lower_threshold_evicts_the_least_recently_used_at_once(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=10, clock=clock)
    for i in range(10):
        cache.set(f"k{i}", i, timeout=0)
    cache.get("k0")  # now the most recently used
    cache.threshold = 4
    assert len(cache) == 4
    assert [k for k in (f"k{i}" for i in range(10)) if cache.has(k)] == ["k0", "k7", "k8", "k9"]
    assert cache.stats()["evictions"] == 6
    cache.threshold = 8  # raising it evicts nothing
    assert len(cache) == 4 and cache.threshold == 8
    assert cache.stats()["evictions"] == 6


def test_a_lower_threshold_evicts_expired_entries_first(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=10, clock=clock)
    cache.set("short1", 1, timeout=5)
    cache.set("forever", 2, timeout=0)
    cache.set("short2", 3, timeout=5)
    cache.set("long", 4, timeout=100)
    clock.advance(10)
    cache.threshold = 2
    assert len(cache) == 2
    assert cache.has("forever") and cache.has("long")
    assert cache.stats()["evictions"] == 2


@pytest.mark.parametrize("bad", [-1, "5", 2.0, True, None])
def test_a_bad_threshold_is_refused_as_the_constructor_refuses_it(bad: Any) -> None:
    with pytest.raises(ConfigurationError) as from_init:
        SimpleCache(threshold=bad)
    cache = SimpleCache(threshold=3)
    with pytest.raises(ConfigurationError) as assigned:
        cache.threshold = bad
    assert str(assigned.value) == str(from_init.value)
    assert cache.threshold == 3


def test_a_threshold_of_zero_means_the_default_when_assigned_too() -> None:
    cache = SimpleCache(threshold=3)
    cache.threshold = 0
    assert cache.threshold == SimpleCache().threshold == 500


def test_a_subclass_may_assign_threshold_before_calling_init() -> None:
    class Early(SimpleCache):
        def __init__(self) -> None:
            self.threshold = 3  # the constructor's argument then wins, as in cachelib
            super().__init__(threshold=5)

    cache = Early()
    assert cache.threshold == 5
    for number in range(6):
        cache.set(str(number), number)
    assert len(cache) == 5


# -- RedisCache decodes an unreadable entry once -----------------------------------------------


class _Unreadable:
    """Writes text and reads nothing: each ``loads`` is counted, then fails."""

    name = "unreadable"

    def __init__(self) -> None:
        self.loads_calls = 0

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        self.loads_calls += 1
        raise ValueError("not today")


@pytest.mark.parametrize("secret", [None, "s3cret-leftovers"])
def test_redis_calls_a_failing_loads_once(redis_server: RedisServer, secret: str | None) -> None:
    serializer = _Unreadable()
    cache = from_url(
        redis_server.url, key_prefix=f"leftovers:{secret}:", serializer=serializer, secret=secret
    )
    try:
        assert cache.set("a", "text") and cache.set("b", "more")
        assert cache.get("a") is None
        assert serializer.loads_calls == 1
        assert cache.get_many("a", "b", "missing") == [None, None, None]
        assert serializer.loads_calls == 3
        assert cache.stats()["errors"] == 3
        assert cache.stats()["misses"] == 4
    finally:
        cache.clear()
        cache.close()


# -- CACHEPLUG_DISABLE_PLUGINS and runtime plugins ---------------------------------------------


def test_a_disabled_runtime_plugin_name_is_not_called_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", "mine,typo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PluginError, match="CACHEPLUG_DISABLE_PLUGINS"):
            register_plugin(Registers(serializers={"mine": _Text}), name="mine")
        assert get_backend_class("simple") is SimpleCache
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 1
    assert "'typo'" in messages[0] and "'mine'" not in messages[0]
