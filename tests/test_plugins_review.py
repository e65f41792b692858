"""The plugin system attacked by careless or hostile plugin authors and by operators.

Distributions are written on ``sys.path`` (see ``plugin_dists``): real entry-point discovery.
Each finding of the review is a test here: what the docs promise and the registry did not do.
"""

from __future__ import annotations

import json
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interpreter import run_python
from plugin_dists import MARK, backend_module, imported, write_distribution
from test_plugins import fresh_registry  # noqa: F401 - autouse: a clean registry per test

from cacheplug import (
    ConfigurationError,
    PluginError,
    PluginLoadWarning,
    SerializationError,
    SimpleCache,
    get_plugins,
    get_serializer,
    hookimpl,
)
from cacheplug.cli import main
from cacheplug.core.hookspecs import RegisterFn
from cacheplug.core.plugins import get_backend_class, register_plugin, reset_plugins
from cacheplug.core.url import from_url

SECRET = "hunter2-Zq8"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty directory on ``sys.path`` for the distributions a test writes; the modules
    imported from it are forgotten afterwards (the tests reuse module names)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", "")):
            del sys.modules[name]


class Registers:
    """A runtime plugin whose hooks register ``backends`` and ``serializers`` (name -> target)."""

    def __init__(self, backends: Any = (), serializers: Any = ()) -> None:
        self.backends = dict(backends)
        self.serializers = dict(serializers)

    @hookimpl
    def cacheplug_register_backends(self, register: RegisterFn) -> None:
        for name, target in self.backends.items():
            register(name, target)

    @hookimpl
    def cacheplug_register_serializers(self, register: RegisterFn) -> None:
        for name, target in self.serializers.items():
            register(name, target)


class TextSerializer:
    """A careless serializer: ``dumps`` answers ``str``."""

    def dumps(self, value: Any) -> Any:
        return repr(value)

    def loads(self, data: bytes) -> Any:
        return data


def _with_good_plugin(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-good",
        "1.0",
        {"good": "good_plugin"},
        {"good_plugin": backend_module("good")},
    )


def _broken(site: Path, source: str, module: str = "bad_plugin") -> list[str]:
    """Install a good plugin and one made of ``source``; the warnings of building the registry."""
    _with_good_plugin(site)
    write_distribution(site, "cacheplug-bad", "6.6", {"bad": module}, {module: source})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert get_backend_class("good").__name__ == "PluginCache"
    return [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]


# -- hooks and modules that fail ------------------------------------------------------------------

HALF_THEN_RAISE = """
from cacheplug import SimpleCache, hookimpl
@hookimpl
def cacheplug_register_backends(register):
    register("half", SimpleCache)
    {statement}
"""


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("raise ImportError('no driver for bad')\n", "ImportError: no driver for bad"),
        (HALF_THEN_RAISE.format(statement="raise ValueError('in hook')"), "ValueError: in hook"),
        (HALF_THEN_RAISE.format(statement="raise SystemExit(2)"), "SystemExit: 2"),
        (HALF_THEN_RAISE.format(statement="register('Half', SimpleCache)"), "'Half', which cannot"),
        (HALF_THEN_RAISE.format(statement="register('x', None)"), "as None; expected a class"),
        (HALF_THEN_RAISE.format(statement="register('x', 'nocolon')"), "expected a class"),
        (HALF_THEN_RAISE.format(statement="register('half', dict)"), "registers cache scheme 'h"),
    ],
    ids=["import", "hook", "exit-in-hook", "upper", "none", "no-colon", "twice"],
)
def test_a_failing_plugin_fails_alone_and_registers_nothing(
    site: Path, source: str, shown: str
) -> None:
    (message,) = _broken(site, source)
    assert "plugin 'bad' (cacheplug-bad 6.6)" in message
    assert shown in message
    assert "CACHEPLUG_DISABLE_PLUGINS=bad" in message
    with pytest.raises(PluginError, match="broken plugin"):
        get_backend_class("half")  # what it registered before failing is gone
    listed = {p["name"]: p for p in get_plugins()}
    assert shown in listed["bad"]["error"]
    assert (listed["bad"]["schemes"], listed["good"]["error"]) == ([], None)


def test_keyboard_interrupt_while_loading_is_not_swallowed(site: Path) -> None:
    write_distribution(
        site, "cacheplug-ki", "1.0", {"ki": "ki_plugin"}, {"ki_plugin": "raise KeyboardInterrupt\n"}
    )
    with pytest.raises(KeyboardInterrupt):
        get_backend_class("simple")
    (site / "ki_plugin.py").write_text(backend_module("ki"))
    assert get_backend_class("ki").__name__ == "PluginCache"  # nothing was left half-built


def test_a_base_exception_at_import_fails_alone(site: Path) -> None:
    (message,) = _broken(site, "class Stop(BaseException):\n    pass\nraise Stop('halt')\n")
    assert "Stop: halt" in message


@pytest.mark.parametrize(
    "where", ["backend-module", "serializer-module", "serializer-init", "hook"]
)
def test_sys_exit_at_use_is_a_plugin_error(site: Path, where: str) -> None:
    (site / "exiting_target.py").write_text("import sys\nsys.exit('usage: tool')\n")

    class ExitingSerializer(TextSerializer):
        def __init__(self) -> None:
            sys.exit("usage: serializer")

    class ExitingHook:
        @hookimpl
        def cacheplug_register_backends(self, register: RegisterFn) -> None:
            sys.exit("usage: hook")

    plugin = Registers(
        {"exiting": "exiting_target:Cache"},
        {"exiting": "exiting_target:Serializer", "exiting-init": ExitingSerializer},
    )
    with pytest.raises(PluginError) as caught:
        if where == "hook":
            register_plugin(ExitingHook(), name="exiting-hook")
        else:
            register_plugin(plugin, name="exiting")
        if where == "backend-module":
            from_url("exiting://")
        else:
            get_serializer("exiting" if where == "serializer-module" else "exiting-init")
    assert isinstance(caught.value.__cause__, SystemExit)
    assert get_backend_class("simple") is SimpleCache


# -- odd targets ---------------------------------------------------------------------------------


def _a_function() -> None:
    pass


@pytest.mark.parametrize(
    "target",
    [None, SimpleCache(), _a_function, b"mod:Cls", "mod:", ":Cls"],
    ids=["None", "SimpleCache()", "a function", "b'mod:Cls'", "'mod:'", "':Cls'"],
)
def test_a_target_neither_class_nor_string_is_refused_at_once(target: Any) -> None:
    with pytest.raises(PluginError, match=r"expected a class or a 'package\.module:Class' string"):
        register_plugin(Registers({"odd": target}), name="odd-target")
    with pytest.raises(ConfigurationError, match="unknown cache scheme 'odd'"):
        get_backend_class("odd")


def test_a_serializer_whose_dumps_answers_str_is_a_serialization_error() -> None:
    register_plugin(Registers(serializers={"text": TextSerializer}), name="text-plugin")
    cache = SimpleCache(serializer="text")
    with pytest.raises(SerializationError, match="dumps returned str, not bytes"):
        cache.set("k", "v")
    assert cache.get("k") is None


def test_a_serializer_without_loads_is_refused_on_use() -> None:
    class DumpsOnly:
        def dumps(self, value: Any) -> bytes:
            return b""

    register_plugin(Registers(serializers={"half": DumpsOnly}), name="half-plugin")
    with pytest.raises(PluginError, match="serializer 'half' from plugin 'half-plugin'"):
        SimpleCache(serializer="half")


def test_a_none_plugin_leaves_its_name_free() -> None:
    with pytest.raises(PluginError, match="None"):
        register_plugin(None, name="nothing")
    register_plugin(Registers({"nothing": SimpleCache}), name="nothing")
    assert get_backend_class("nothing") is SimpleCache


def test_a_runtime_plugin_under_a_disabled_name_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # the name disabled something
        with pytest.raises(PluginError, match="CACHEPLUG_DISABLE_PLUGINS"):
            register_plugin(Registers({"mine": SimpleCache}), name="mine")
        get_backend_class("simple")


def test_register_after_the_hook_returned_is_refused() -> None:
    kept: list[RegisterFn] = []

    class Keeper:
        @hookimpl
        def cacheplug_register_backends(self, register: RegisterFn) -> None:
            kept.append(register)

    register_plugin(Keeper(), name="keeper")
    with pytest.raises(PluginError, match="after its hook returned"):
        kept[0]("later", SimpleCache)


# -- names -----------------------------------------------------------------------------------------


def test_a_serializer_name_a_url_cannot_reach_is_refused() -> None:
    with pytest.raises(PluginError, match="'z\\+pickle', which cannot be used"):
        register_plugin(Registers(serializers={"z+pickle": TextSerializer}), name="plus")
    with pytest.raises(ConfigurationError, match="unknown serializer 'z pickle'"):
        from_url("simple://?serializer=z+pickle")


def test_serializer_names_differing_in_case_are_one_name() -> None:
    class Upper(TextSerializer):
        pass

    with pytest.raises(PluginError, match="'Pickle', already registered as 'pickle'"):
        register_plugin(Registers(serializers={"Pickle": Upper}), name="upper-pickle")
    assert type(get_serializer("Pickle")).__name__ == "PickleSerializer"


def test_a_plugin_claiming_a_builtin_scheme_blocks_only_that_scheme(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-hijack",
        "0.1",
        {"hijack": "hijack_plugin"},
        {"hijack_plugin": backend_module("redis", "own")},
    )
    url = f"redis://:{SECRET}@localhost:1/0?secret={SECRET}"
    with pytest.raises(PluginError, match="CACHEPLUG_DISABLE_PLUGINS=hijack") as caught:
        from_url(url)
    assert "'cacheplug.backends.redis' (cacheplug" in str(caught.value)
    assert "'hijack' (cacheplug-hijack 0.1)" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert get_backend_class("own").__name__ == "PluginCache"
    assert get_backend_class("rediss").__name__ == "RedisCache"


def test_one_module_under_two_entry_points_is_reported_briefly(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-twin",
        "1.0",
        {"one": "twin_plugin", "two": "twin_plugin"},
        {"twin_plugin": backend_module("twin")},
    )
    with pytest.warns(PluginLoadWarning) as caught:
        assert get_backend_class("twin").__name__ == "PluginCache"
    (message,) = [str(w.message) for w in caught]
    assert "already registered as plugin 'one'" in message
    assert len(message) < 400


# -- the operator's environment --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "loaded"),
    [
        (" bad , ,", ["good"]),
        ("bad,,", ["good"]),
        ("nosuch", ["good", "bad"]),
        ("BAD", ["good", "bad"]),  # entry-point names are case-sensitive, as pip's are not
        (" * ", []),
        ("good,*", []),
        ("", ["good", "bad"]),
    ],
)
def test_disable_plugins_odd_values(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str, loaded: list[str]
) -> None:
    _with_good_plugin(site)
    write_distribution(
        site,
        "cacheplug-bad",
        "1.0",
        {"bad": "bad_plugin"},
        {"bad_plugin": MARK + "raise ImportError('bad')\n"},
    )
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        names = [p["name"] for p in get_plugins() if p["distribution"] != "cacheplug"]
    assert sorted(names) == sorted(loaded)
    assert imported(site, "bad_plugin") is ("bad" in loaded)
    assert get_backend_class("simple") is SimpleCache


@pytest.mark.parametrize(("value", "strict"), [(" Yes ", True), ("ON", True), ("2", False)])
def test_strict_plugins_odd_values(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str, strict: bool
) -> None:
    write_distribution(
        site,
        "cacheplug-bad",
        "1.0",
        {"bad": "bad_plugin"},
        {"bad_plugin": "raise ImportError('bad')\n"},
    )
    monkeypatch.setenv("CACHEPLUG_STRICT_PLUGINS", value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        if strict:
            with pytest.raises(PluginError, match=r"'bad' .*ImportError: bad"):
                get_plugins()
        else:
            assert get_plugins()[-1]["error"] == "ImportError: bad"


# -- use of a broken plugin's scheme ---------------------------------------------------------------


def test_a_broken_plugins_scheme_is_a_chained_plugin_error_without_the_secret(site: Path) -> None:
    _broken(site, "raise ImportError('driver missing')\n")
    with pytest.raises(PluginError, match="broken plugin: plugin 'bad'") as caught:
        from_url(f"bad://user:{SECRET}@host/?secret={SECRET}")
    assert isinstance(caught.value.__cause__, ImportError)
    assert SECRET not in str(caught.value)


def test_a_lazy_target_failing_at_use_is_chained_without_the_secret(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-lazy",
        "1.0",
        {"lazy": "lazy_plugin"},
        {
            "lazy_plugin": backend_module(body="    register('lazy', 'lazy_target:Cache')\n"),
            "lazy_target": f"raise ImportError('cannot reach {SECRET[:3]}...')\n",
        },
    )
    url = f"lazy://user:{SECRET}@host/?secret={SECRET}"
    for _ in range(2):  # a failed import is retried, not remembered as half-loaded
        with pytest.raises(PluginError, match=r"'lazy' from plugin 'lazy' .*ImportError") as caught:
            from_url(url)
        assert isinstance(caught.value.__cause__, ImportError)
        assert SECRET not in str(caught.value)
    assert "lazy_target" not in sys.modules
    assert next(p for p in get_plugins() if p["name"] == "lazy")["schemes"] == ["lazy"]


def test_cli_lists_a_failed_plugin_on_one_line(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken(site, "raise RuntimeError('first\\nsecond\\tthird')\n")
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = [line for line in lines if line.startswith("bad ")]
    assert "cacheplug-bad" in row and row.endswith("RuntimeError: first second third")
    assert main(["plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == get_plugins()


def test_cli_escapes_control_characters_of_a_plugins_error(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a terminal escape sequence in a plugin's message must not reach the operator's terminal
    _broken(site, "raise RuntimeError('\\x1b[2Jcleared \\x07bell \\x9bcsi')\n")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert not any(char in out for char in "\x1b\x07\x9b")
    (row,) = [line for line in out.splitlines() if line.startswith("bad ")]
    assert row.endswith("RuntimeError: \\x1b[2Jcleared \\x07bell \\x9bcsi")


# -- threads, reset, import cost -------------------------------------------------------------------


def test_lookups_survive_resets_from_another_thread(site: Path) -> None:
    _with_good_plugin(site)
    errors: list[BaseException] = []
    stop = threading.Event()

    def look_up() -> None:
        while not stop.is_set():
            try:
                assert get_backend_class("good").__name__ == "PluginCache"
                assert get_serializer("json") is not None
            except BaseException as err:  # every failure is the finding
                errors.append(err)
                return

    workers = [threading.Thread(target=look_up) for _ in range(4)]
    for worker in workers:
        worker.start()
    for _ in range(50):
        reset_plugins()
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []
    assert not any(worker.is_alive() for worker in workers)


_IMPORT_COST = """
import json, sys
import cacheplug
heavy = ("importlib.metadata", "pluggy", "cacheplug.core.plugins", "cacheplug.core._plugins",
         "cheap_plugin", "cheap_target")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
"""


def test_import_cacheplug_stays_cheap_with_plugins_installed(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-cheap",
        "1.0",
        {"cheap": "cheap_plugin"},
        {
            "cheap_plugin": backend_module(
                "cheap-now", body="    register('cheap', 'cheap_target:C')\n"
            ),
            "cheap_target": MARK,
        },
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
    assert json.loads(run_python(_IMPORT_COST, env)) == []
    assert not imported(site, "cheap_plugin")
    assert not imported(site, "cheap_target")


@pytest.mark.parametrize("value", ["Good", "god", "redis"])
def test_a_disabled_name_no_plugin_has_is_warned_about(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # a typo (or a built-in's name) used to leave every plugin running without a word
    _with_good_plugin(site)
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", f"{value}, ")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [p["name"] for p in get_plugins()]
    assert "good" in names
    (message,) = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert f"CACHEPLUG_DISABLE_PLUGINS names {value!r}, which no installed plugin has" in message
    assert "good" in message and "cannot be disabled" in message


def test_a_disabled_name_of_an_installed_plugin_is_not_warned_about(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_good_plugin(site)
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", "good")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [p["name"] for p in get_plugins()]
    assert "good" not in names
    assert [w for w in caught if issubclass(w.category, PluginLoadWarning)] == []
