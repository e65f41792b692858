"""The plugin registry in this process: built-ins, runtime plugins, errors, laziness."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pytest
from interpreter import run_python
from plugin_dists import backend_module, imported, write_distribution

import cacheplug
from cacheplug import (
    ConfigurationError,
    PluginError,
    PluginLoadWarning,
    SimpleCache,
    get_plugins,
    get_serializer,
    hookimpl,
)
from cacheplug.core import hookspecs
from cacheplug.core.plugins import (
    BUILTIN_PLUGINS,
    get_backend_class,
    get_plugin_manager,
    register_plugin,
    reset_plugins,
)
from cacheplug.core.url import from_url


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test builds its own registry from a clean environment, and leaves none behind."""
    for name in ("CACHEPLUG_STRICT_PLUGINS", "CACHEPLUG_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory on ``sys.path`` for distributions written by the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


class _Plugin:
    """A plugin object registering ``backends`` and ``serializers`` (name -> target)."""

    def __init__(
        self,
        backends: dict[str, Any] | None = None,
        serializers: dict[str, Any] | None = None,
    ) -> None:
        self.backends = backends or {}
        self.serializers = serializers or {}

    @hookimpl
    def cacheplug_register_backends(self, register: hookspecs.RegisterFn) -> None:
        for name, target in self.backends.items():
            register(name, target)

    @hookimpl
    def cacheplug_register_serializers(self, register: hookspecs.RegisterFn) -> None:
        for name, target in self.serializers.items():
            register(name, target)


class RuntimeCache(SimpleCache):
    pass


class ReversedSerializer:
    name = "reversed"

    def dumps(self, value: Any) -> bytes:
        return str(value).encode()[::-1]

    def loads(self, data: bytes) -> Any:
        return data[::-1].decode()


# -- built-ins ------------------------------------------------------------------------------------


def test_builtins_are_registered_through_the_hooks() -> None:
    plugins = {p["name"]: p for p in get_plugins()}
    assert list(plugins)[: len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)
    assert plugins["cacheplug.backends.simple"] == {
        "name": "cacheplug.backends.simple",
        "distribution": "cacheplug",
        "version": cacheplug.__version__,
        "hooks": ["cacheplug_register_backends"],
        "schemes": ["memory", "simple"],
        "serializers": [],
        "error": None,
    }
    for name in ("pickle", "json", "msgpack"):
        serializer_plugin = plugins[f"cacheplug.serializers.{name}"]
        assert serializer_plugin["serializers"] == [name]
        assert serializer_plugin["hooks"] == ["cacheplug_register_serializers"]
    # The very modules, registered with the same pm.register call as third-party plugins.
    manager = get_plugin_manager()
    assert (
        manager.get_plugin("cacheplug.backends.simple") is sys.modules["cacheplug.backends.simple"]
    )
    assert manager.project_name == "cacheplug"


def test_hookimpl_is_the_public_cacheplug_marker() -> None:
    assert cacheplug.hookimpl is hookspecs.hookimpl
    assert isinstance(hookimpl, pluggy.HookimplMarker)
    assert hookimpl.project_name == "cacheplug"
    assert "hookimpl" in cacheplug.__all__


def test_serializer_instances_are_shared_per_name() -> None:
    assert get_serializer("json") is get_serializer("json")
    assert get_serializer("json") is not get_serializer("msgpack")


def test_unknown_scheme_lists_known_ones_and_suggests() -> None:
    with pytest.raises(ConfigurationError, match="unknown cache scheme 'simpel'") as caught:
        get_backend_class("simpel")
    assert "known schemes: " in str(caught.value)
    assert "memory, null" in str(caught.value)
    assert "did you mean 'simple'?" in str(caught.value)


def test_disabling_a_builtin_by_name_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEPLUG_DISABLE_PLUGINS", "cacheplug.backends.simple")
    with pytest.warns(PluginLoadWarning, match="cannot be disabled"):
        assert get_backend_class("simple") is SimpleCache


# -- building the registry ------------------------------------------------------------------------


def test_manager_is_built_once_by_racing_threads(site: Path) -> None:
    threads = 16
    # The plugin's hook holds the first build open until every thread has asked for the manager.
    write_distribution(
        site,
        "cacheplug-race",
        "1.0",
        {"race": "race_plugin"},
        {
            "race_plugin": """
            import threading
            from cacheplug import hookimpl
            all_in = threading.Event()
            calls = []
            @hookimpl
            def cacheplug_register_backends(register):
                all_in.wait(timeout=10)
                calls.append(threading.get_ident())
        """,
        },
    )
    import race_plugin  # type: ignore[import-not-found]

    arrived: list[int] = []
    lock = threading.Lock()
    managers: list[pluggy.PluginManager] = []

    def ask() -> None:
        with lock:
            arrived.append(1)
            if len(arrived) == threads:
                race_plugin.all_in.set()
        managers.append(get_plugin_manager())

    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert race_plugin.all_in.is_set()
    assert len(race_plugin.calls) == 1
    assert len(managers) == threads
    assert len({id(m) for m in managers}) == 1


def test_plugin_using_cacheplug_while_loading_fails_alone(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-eager",
        "0.3",
        {"eager": "eager_plugin"},
        {
            "eager_plugin": "import cacheplug\nCACHE = cacheplug.from_url('simple://')\n",
        },
    )
    with pytest.warns(PluginLoadWarning, match="still loading") as caught:
        assert get_backend_class("simple") is SimpleCache
    assert "'eager' (cacheplug-eager 0.3)" in str(caught[0].message)


def _plugin_starting_a_thread(scheme: str, then: str) -> str:
    """A plugin module that, at import, starts a thread building a cache, then runs ``then``."""
    return f"""
        import threading
        import cacheplug

        RESULT = []
        helper = threading.Thread(
            target=lambda: RESULT.append(cacheplug.from_url("simple://")),
            name="plugin-helper",
        )
        helper.start()
        {then}

        @cacheplug.hookimpl
        def cacheplug_register_backends(register):
            register({scheme!r}, cacheplug.SimpleCache)
        """


def test_a_thread_left_waiting_for_plugin_loading_logs_where_the_loader_is(
    site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The plugin waits, while it loads, for a thread that needs the plugins: without its join
    # timeout neither would ever finish. The waiting thread must say where the loader is.
    wait = "helper.join(timeout=3.0); STILL_WAITING = helper.is_alive()"
    write_distribution(
        site,
        "cacheplug-waiter",
        "0.1",
        {"waiter": "waiter_plugin"},
        {"waiter_plugin": _plugin_starting_a_thread("waiter", wait)},
    )
    monkeypatch.setattr("cacheplug.core._plugins_waiting.PATIENCE", 0.1)
    with caplog.at_level("WARNING", logger="cacheplug"):
        assert get_backend_class("waiter") is SimpleCache
    import waiter_plugin

    assert waiter_plugin.STILL_WAITING
    waiter_plugin.helper.join(timeout=10)
    assert isinstance(waiter_plugin.RESULT[0], SimpleCache)  # it waited, then went on
    [record] = [r for r in caplog.records if "loading cacheplug's plugins" in r.getMessage()]
    message = record.getMessage()
    assert record.threadName == "plugin-helper"
    assert f"thread {threading.current_thread().name!r} has been loading" in message
    assert "thread 'plugin-helper' waits for it" in message
    assert "waiter_plugin.py" in message
    assert wait in message  # the line the loader waits at


def test_no_wait_is_logged_when_plugins_load_in_time(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # not joined: the thread gets its cache once loading is over
    write_distribution(
        site,
        "cacheplug-helped",
        "0.1",
        {"helped": "helped_plugin"},
        {"helped_plugin": _plugin_starting_a_thread("helped", "pass")},
    )
    with caplog.at_level("WARNING", logger="cacheplug"):
        assert get_backend_class("helped") is SimpleCache
        import helped_plugin

        helped_plugin.helper.join(timeout=10)
    assert isinstance(helped_plugin.RESULT[0], SimpleCache)
    assert not [r for r in caplog.records if "loading cacheplug's plugins" in r.getMessage()]


def test_strict_mode_raises_and_a_later_use_retries(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        site,
        "cacheplug-flaky",
        "1.0",
        {"flaky": "flaky_plugin"},
        {
            "flaky_plugin": "raise ImportError('not yet')\n",
        },
    )
    monkeypatch.setenv("CACHEPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"'flaky'.*ImportError: not yet") as caught:
        get_plugins()
    assert isinstance(caught.value.__cause__, ImportError)
    (site / "flaky_plugin.py").write_text(backend_module("flaky"))
    assert "flaky" in [p["name"] for p in get_plugins()]


def test_entry_point_module_is_loaded_but_not_string_targets(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-deferred",
        "2.0",
        {"deferred": "deferred_plugin"},
        {
            "deferred_plugin": backend_module("deferred-now")
            + "    register('deferred-later', 'deferred_backend:PluginCache')\n",
            "deferred_backend": backend_module(),
        },
    )
    names = {p["name"]: p for p in get_plugins()}
    assert names["deferred"]["schemes"] == ["deferred-later", "deferred-now"]
    assert imported(site, "deferred_plugin")
    assert not imported(site, "deferred_backend")
    assert from_url("deferred-later://").set("k", 1) is True
    assert imported(site, "deferred_backend")


# -- plugins registered at runtime ---------------------------------------------------------------


def test_runtime_plugin_adds_a_backend_and_a_serializer() -> None:
    plugin = _Plugin({"runtime": RuntimeCache}, {"reversed": ReversedSerializer})
    assert register_plugin(plugin, name="my-app") == "my-app"
    cache = from_url("runtime://?serializer=reversed")
    assert isinstance(cache, RuntimeCache)
    cache.set("k", ["value"])
    assert cache.get("k") == "['value']"
    listed = next(p for p in get_plugins() if p["name"] == "my-app")
    assert listed["distribution"] == "registered at runtime"
    assert (listed["schemes"], listed["serializers"]) == (["runtime"], ["reversed"])
    assert get_plugin_manager().get_plugin("my-app") is plugin


def test_runtime_plugin_is_forgotten_on_reset() -> None:
    register_plugin(_Plugin({"runtime": RuntimeCache}))
    reset_plugins()
    with pytest.raises(ConfigurationError, match="unknown cache scheme 'runtime'"):
        get_backend_class("runtime")


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (_Plugin({"simple": RuntimeCache, "extra": RuntimeCache}), "already registered by"),
        (_Plugin({"extra": 42}), "expected a class or a 'package.module:Class' string"),
        (_Plugin({"extra": "no_colon_here"}), "expected a class"),
        (_Plugin({"": RuntimeCache}), "invalid name ''"),
        (
            _Plugin(serializers={"extra": ReversedSerializer, "pickle": ReversedSerializer}),
            "serializer 'pickle', already registered by plugin 'cacheplug.serializers.pickle'",
        ),
    ],
    ids=["taken-scheme", "not-a-class", "not-a-target", "empty-name", "taken-serializer"],
)
def test_rejected_runtime_plugin_registers_nothing(plugin: _Plugin, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        register_plugin(plugin, name="rejected")
    assert "rejected" not in [p["name"] for p in get_plugins()]
    with pytest.raises(ConfigurationError):
        get_backend_class("extra")
    assert get_backend_class("simple") is SimpleCache


def test_runtime_plugin_with_a_failing_hook_is_rejected() -> None:
    class Failing:
        @hookimpl
        def cacheplug_register_backends(self, register: hookspecs.RegisterFn) -> None:
            register("half", RuntimeCache)
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="RuntimeError: boom") as caught:
        register_plugin(Failing())
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(ConfigurationError):
        get_backend_class("half")


def test_runtime_plugin_with_an_unknown_hook_is_rejected() -> None:
    class Misspelt:
        @hookimpl
        def cacheplug_register_serializer(self, register: hookspecs.RegisterFn) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError, match="unknown hook 'cacheplug_register_serializer'"):
        register_plugin(Misspelt(), name="misspelt")
    assert get_plugin_manager().get_plugin("misspelt") is None


def test_plugin_name_is_unique() -> None:
    register_plugin(_Plugin(), name="twice")
    with pytest.raises(PluginError, match="'twice' is already used"):
        register_plugin(_Plugin(), name="twice")
    with pytest.raises(PluginError, match=r"already used by plugin 'cacheplug\.backends\.null'"):
        register_plugin(_Plugin(), name="cacheplug.backends.null")


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("collections:OrderedDict", "not a subclass of cacheplug.BaseCache"),
        ("no_such_module_here:Cache", "ModuleNotFoundError"),
        ("cacheplug.backends.simple:NoSuchCache", "AttributeError"),
    ],
)
def test_bad_backend_target_fails_on_use(target: str, problem: str) -> None:
    register_plugin(_Plugin({"late": target}))
    with pytest.raises(PluginError, match=f"cache scheme 'late' from plugin .*{problem}"):
        from_url("late://")


def test_nested_attribute_targets_resolve() -> None:
    register_plugin(_Plugin({"nested": "test_plugins:Holder.Cache"}))
    assert get_backend_class("nested") is Holder.Cache


class Holder:
    Cache = RuntimeCache


def test_serializer_target_without_dumps_fails_on_use() -> None:
    register_plugin(_Plugin(serializers={"bad": "collections:OrderedDict"}))
    with pytest.raises(PluginError, match=r"serializer 'bad' .* not a class with dumps"):
        get_serializer("bad")


# -- cost of importing ----------------------------------------------------------------------------

_MODULES = """
import json, sys
def heavy():
    prefixes = ("importlib.metadata", "pluggy", "msgpack", "orjson", "redis", "pymemcache",
                "cacheplug.core.plugins", "cacheplug.core._plugins", "cacheplug.backends",
                "cacheplug.serializers", "cacheplug.cli", "cacheplug._cli", "cacheplug.flask")
    return sorted(m for m in sys.modules if m.startswith(prefixes))
import cacheplug
after_import = heavy()
cacheplug.hookimpl, cacheplug.PluginError
after_names = heavy()
cacheplug.from_url("simple://")
print(json.dumps([after_import, after_names, heavy()]))
"""


def test_import_cacheplug_loads_no_plugin_machinery() -> None:
    env = {"PATH": "/usr/bin:/bin", "CACHEPLUG_DISABLE_PLUGINS": "*"}
    after_import, after_names, after_use = json.loads(run_python(_MODULES, env))
    assert after_import == []
    assert after_names == ["pluggy", *[m for m in after_names if m.startswith("pluggy.")]]
    # With every entry point disabled, even a first cache never needs importlib.metadata.
    assert "cacheplug.core.plugins" in after_use
    assert "cacheplug.backends.simple" in after_use
    assert "importlib.metadata" not in after_use
    assert not any(m.startswith(("redis", "pymemcache")) for m in after_use)


# -- an author's mistakes -------------------------------------------------------------------------


def _load_warning(site: Path, module: str, source: str) -> str:
    """The PluginLoadWarning of entry point 'mistake' naming ``module`` written from ``source``."""
    write_distribution(site, "cacheplug-mistake", "0.1", {"mistake": module}, {module: source})
    with pytest.warns(PluginLoadWarning) as caught:
        assert get_backend_class("simple") is SimpleCache
    (message,) = [str(w.message) for w in caught if "'mistake'" in str(w.message)]
    assert "(cacheplug-mistake 0.1)" in message
    listed = next(p for p in get_plugins() if p["name"] == "mistake")
    assert listed["error"]
    return message


def test_a_hook_without_the_marker_is_reported_not_ignored(site: Path) -> None:
    message = _load_warning(
        site,
        "unmarked_plugin",
        """
        from cacheplug import SimpleCache
        def cacheplug_register_backends(register):
            register("unmarked", SimpleCache)
        """,
    )
    assert "cacheplug_register_backends() without the @cacheplug.hookimpl marker" in message


def test_an_entry_point_naming_a_module_without_hooks_is_reported(site: Path) -> None:
    message = _load_warning(site, "hookless_plugin", "from cacheplug import SimpleCache\n")
    assert "implements no cacheplug hook" in message
    assert "must name the module holding the @cacheplug.hookimpl functions" in message


def test_a_plugin_calling_sys_exit_at_import_fails_alone(site: Path) -> None:
    message = _load_warning(
        site, "exiting_plugin", "import sys\nsys.exit('usage: mistake [--flag]')\n"
    )
    assert "SystemExit: usage: mistake [--flag]" in message


@pytest.mark.parametrize(
    ("backends", "serializers"),
    [
        ({"MyCache": RuntimeCache}, {}),
        ({"my_cache": RuntimeCache}, {}),
        ({"my cache": RuntimeCache}, {}),
        ({"mine://": RuntimeCache}, {}),
        ({"2cache": RuntimeCache}, {}),
        ({}, {" padded ": ReversedSerializer}),
        ({}, {"a&b": ReversedSerializer}),
        ({}, {"line\nbreak": ReversedSerializer}),
    ],
    ids=["upper", "underscore", "space", "url", "digit-first", "padded", "ampersand", "newline"],
)
def test_a_name_no_url_can_reach_is_refused(
    backends: dict[str, Any], serializers: dict[str, Any]
) -> None:
    with pytest.raises(PluginError, match=r"plugin 'odd' .* which cannot be used: a .* name is"):
        register_plugin(_Plugin(backends, serializers), name="odd")
    assert "odd" not in [p["name"] for p in get_plugins()]


def test_usable_names_are_accepted() -> None:
    register_plugin(
        _Plugin({"my-cache+tls.v2": RuntimeCache}, {"Zstd_pickle-2.0": ReversedSerializer})
    )
    assert isinstance(from_url("my-cache+tls.v2://?serializer=Zstd_pickle-2.0"), RuntimeCache)


def test_a_serializer_that_needs_arguments_is_a_plugin_error() -> None:
    class Leveled(ReversedSerializer):
        def __init__(self, level: int) -> None:
            self.level = level

    register_plugin(_Plugin(serializers={"leveled": Leveled}), name="leveled-plugin")
    with pytest.raises(
        PluginError, match="serializer 'leveled' from plugin 'leveled-plugin'"
    ) as caught:
        SimpleCache(serializer="leveled")
    assert "every parameter needs a default" in str(caught.value)
    assert isinstance(caught.value.__cause__, TypeError)


def test_an_abstract_backend_is_a_plugin_error() -> None:
    class Half(cacheplug.BaseCache):
        def get(self, key: str) -> Any:
            return None

    register_plugin(_Plugin({"half": Half}), name="half-plugin")
    with pytest.raises(PluginError, match="an abstract class: it must implement add, clear"):
        from_url("half://")


def test_an_entry_point_in_a_misspelt_group_is_named_by_the_unknown_scheme(site: Path) -> None:
    write_distribution(
        site,
        "cacheplug-misgrouped",
        "1.0",
        {"misgrouped": "misgrouped_plugin"},
        {"misgrouped_plugin": backend_module("misgrouped")},
        group="cacheplugs",
    )
    with pytest.raises(ConfigurationError, match="unknown cache scheme 'misgrouped'") as caught:
        from_url("misgrouped://")
    assert (
        "cacheplug-misgrouped declares misgrouped = 'misgrouped_plugin' in group 'cacheplugs'"
        in str(caught.value)
    )
    assert "declare it under [project.entry-points.cacheplug]" in str(caught.value)
    assert not imported(site, "misgrouped_plugin")


def test_a_hook_with_a_wrong_parameter_name_is_reported_on_one_line(site: Path) -> None:
    message = _load_warning(
        site,
        "argname_plugin",
        """
        from cacheplug import SimpleCache, hookimpl
        @hookimpl
        def cacheplug_register_backends(reg):
            reg("argname", SimpleCache)
        """,
    )
    assert "Argument(s) {'reg'} are declared in the hookimpl" in message
    listed = next(p for p in get_plugins() if p["name"] == "mistake")
    # `cacheplug plugins` prints it in a table column
    assert "\n" not in message and "\n" not in listed["error"]


def test_one_plugin_registering_a_name_twice_is_refused() -> None:
    class Twice:
        @hookimpl
        def cacheplug_register_backends(self, register: hookspecs.RegisterFn) -> None:
            register("twice", RuntimeCache)
            register("twice", "test_plugins:Holder.Cache")

    with pytest.raises(PluginError, match="registers cache scheme 'twice' twice"):
        register_plugin(Twice(), name="twice-plugin")
    register_plugin(_Plugin({"once": RuntimeCache, "again": RuntimeCache}), name="same-target")
    assert get_backend_class("once") is get_backend_class("again") is RuntimeCache


class NoSecretCache(SimpleCache):
    """A plugin author's backend whose constructor forgot a shared option and its own option."""

    url_options: ClassVar[Mapping[str, type]] = {"size": int}

    def __init__(self, default_timeout: float = 300, key_prefix: str = "") -> None:
        super().__init__(default_timeout=default_timeout, key_prefix=key_prefix)


@pytest.mark.parametrize("query", ["secret=Zr9qK", "size=3"])
def test_a_backend_not_taking_an_option_is_a_plugin_error(query: str) -> None:
    register_plugin(_Plugin({"nosecret": NoSecretCache}), name="nosecret-plugin")
    assert isinstance(from_url("nosecret://?default_timeout=5"), NoSecretCache)
    with pytest.raises(PluginError, match="test_plugins:NoSecretCache, the backend of") as caught:
        from_url(f"nosecret://?{query}")
    assert f"has no constructor parameter for {query.partition('=')[0]!r}" in str(caught.value)
    assert "Zr9qK" not in str(caught.value)
    assert isinstance(caught.value.__cause__, TypeError)


@pytest.mark.parametrize("options", [{"size": "int"}, {"size": 3}, ["size"]], ids=repr)
def test_url_options_without_types_are_a_plugin_error(options: Any) -> None:
    holder = type("BadOptionsCache", (SimpleCache,), {"url_options": options})
    register_plugin(_Plugin({"badoptions": holder}), name="badoptions-plugin")
    with pytest.raises(PluginError, match="it must map each option name to a type"):
        from_url("badoptions://?size=3")


def test_a_plugin_class_given_instead_of_an_instance_says_so() -> None:
    with pytest.raises(PluginError, match=r"is the class _Plugin, .* register _Plugin\(\) instead"):
        register_plugin(_Plugin, name="a-class")

    class Static:
        @staticmethod
        @hookimpl
        def cacheplug_register_backends(register: hookspecs.RegisterFn) -> None:
            register("static", RuntimeCache)

    register_plugin(Static, name="static-hooks")  # a class whose hooks need no instance is fine
    assert get_backend_class("static") is RuntimeCache
