"""Plugins as users meet them: real distributions, discovered through real entry points.

The first half installs cacheplug and ``examples/cacheplug-example-plugin`` into a fresh
virtualenv; the second builds small ``*.dist-info`` trees on a directory put on ``PYTHONPATH``.
Every case runs in its own interpreter, so discovery, ``sys.modules`` and the environment are
those of a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from plugin_dists import MARK, backend_module, imported, write_distribution

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cacheplug-example-plugin"
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*cache")


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without cacheplug's variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CACHEPLUG_") and k not in {"PYTHONPATH", "CACHE_URL"}
    }
    env.update(extra)
    return env


def _run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        check=False,
        cwd=cwd,
        env=_clean_env(env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_json(python: str | Path, code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a new interpreter; what it printed last, parsed as JSON."""
    done = _run([str(python), "-c", textwrap.dedent(code)], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# -- the example plugin, installed into a fresh virtualenv -------------------------------------


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv holding cacheplug (this working copy), the example plugin and pytest."""
    root = tmp_path_factory.mktemp("venv")
    # Copies, so pip's in-tree build leaves no build/ or *.egg-info in the working copy.
    source = root / "cacheplug-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "cacheplug", source / "cacheplug", ignore=_COPY_IGNORE)
    shutil.copytree(EXAMPLE, root / "example", ignore=_COPY_IGNORE)
    env_dir = root / "env"
    # No pip inside: this interpreter's pip (>= 22.3) installs into it, saving ensurepip's time.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120
    )
    install = _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python")),
            *("install", "--quiet", "--disable-pip-version-check"),
            *(str(source), str(root / "example"), "pytest"),
        ]
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return env_dir


def test_installed_plugin_serves_its_scheme_and_serializer(venv: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}?serializer=zpickle"
    python = venv / "bin" / "python"
    writer = _run_json(
        python,
        f"""
        import json, sys, cacheplug
        cache = cacheplug.from_url({url!r})
        print(json.dumps([type(cache).__name__, type(cache.serializer).__name__,
                          cache.set("report", {{"rows": [1, 2, 3]}})]))
        """,
    )
    reader = _run_json(
        python,
        f"""
        import json, cacheplug
        print(json.dumps(cacheplug.from_url({url!r}).get("report")))
        """,
    )
    assert writer == ["SQLiteCache", "ZlibPickleSerializer", True]
    assert reader == {"rows": [1, 2, 3]}


def test_plugin_classes_are_imported_only_when_used(venv: Path) -> None:
    seen = _run_json(
        venv / "bin" / "python",
        """
        import json, sys, cacheplug
        from cacheplug.core.plugins import get_plugins
        get_plugins()
        loaded = lambda: sorted(m for m in sys.modules if m.startswith("cacheplug_example"))
        before = loaded()
        cacheplug.from_url("sqlite://")
        print(json.dumps([before, loaded()]))
        """,
    )
    assert seen == [
        ["cacheplug_example", "cacheplug_example.plugin"],
        ["cacheplug_example", "cacheplug_example.plugin", "cacheplug_example.sqlite"],
    ]


def test_cacheplug_plugins_command_lists_the_plugin(venv: Path) -> None:
    table = _run([str(venv / "bin" / "cacheplug"), "plugins"])
    listed = _run([str(venv / "bin" / "cacheplug"), "plugins", "--json"])
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("example"))
    assert row[:3] == ["example", "cacheplug-example-plugin", "0.1.0"]
    assert "sqlite" in table.stdout and "zpickle" in table.stdout
    example = next(p for p in json.loads(listed.stdout) if p["name"] == "example")
    assert example == {
        "name": "example",
        "distribution": "cacheplug-example-plugin",
        "version": "0.1.0",
        "hooks": ["cacheplug_register_backends", "cacheplug_register_serializers"],
        "schemes": ["sqlite"],
        "serializers": ["zpickle"],
        "error": None,
    }


def test_example_plugin_passes_its_own_suite(venv: Path) -> None:
    example = venv.parent / "example"
    done = _run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], example
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_the_guide_s_contract_test_runs_as_written(venv: Path, tmp_path: Path) -> None:
    guide = (REPO / "docs" / "plugins.md").read_text()
    section = guide[guide.index("## 6. Test against the contract") :]
    snippet = section[section.index("```python\n") + len("```python\n") :]
    (tmp_path / "test_from_the_guide.py").write_text(snippet[: snippet.index("```")])
    done = _run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert " passed" in done.stdout


# -- the contract suite, from a third-party test file --------------------------------------------

_THIRD_PARTY_SUITE = """
import pytest
from cacheplug import SimpleCache
from cacheplug.testing import CacheContract


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class AddOverwrites(SimpleCache):
    def add(self, key, value, timeout=None):
        return self.set(key, value, timeout)


class IncRestartsExpiry(SimpleCache):
    def inc(self, key, delta=1):
        value = (self.get(key) or 0) + delta
        self.set(key, value)
        return value


class SortedGetMany(SimpleCache):
    def get_many(self, *keys):
        found = {key: self.get(key) for key in keys}
        return [found[key] for key in sorted(found)]


class UncountedMisses(SimpleCache):
    def get(self, key):
        value = super().get(key)
        if value is None:
            self._misses -= 1
        return value


def contract_for(cls):
    class Contract(CacheContract):
        @pytest.fixture
        def clock(self):
            return FakeClock()

        @pytest.fixture
        def cache_factory(self, clock):
            yield lambda **kwargs: cls(clock=clock, **kwargs)

        @pytest.fixture
        def advance(self, clock):
            return clock.advance

    return Contract


TestSimpleCache = contract_for(SimpleCache)
TestAddOverwrites = contract_for(AddOverwrites)
TestIncRestartsExpiry = contract_for(IncRestartsExpiry)
TestSortedGetMany = contract_for(SortedGetMany)
TestUncountedMisses = contract_for(UncountedMisses)
"""


def test_the_contract_suite_catches_broken_backends(tmp_path: Path) -> None:
    (tmp_path / "test_third_party.py").write_text(_THIRD_PARTY_SUITE)
    done = _run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider"], cwd=tmp_path
    )
    failed: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("FAILED "):
            _, cls, test = line.split()[1].split("::")
            failed.setdefault(cls, set()).add(test.partition("[")[0])
    assert "TestSimpleCache" not in failed, done.stdout[-3000:]
    assert "test_add_does_not_overwrite" in failed["TestAddOverwrites"]
    assert "test_inc_keeps_the_expiry_of_an_existing_counter" in failed["TestIncRestartsExpiry"]
    assert "test_get_many_follows_its_arguments_with_repeats" in failed["TestSortedGetMany"]
    # A backend that does not count misses fails the stats test instead of hanging the suite.
    assert "test_stats_count_hits_misses_sets_deletes" in failed["TestUncountedMisses"]
    assert set(failed) == {
        "TestAddOverwrites",
        "TestIncRestartsExpiry",
        "TestSortedGetMany",
        "TestUncountedMisses",
    }


# -- hand-made distributions on PYTHONPATH -------------------------------------------------------


_REPORT = """
import json, warnings
import cacheplug
from cacheplug.core.plugins import get_plugins

def attempt(url):
    try:
        cache = cacheplug.from_url(url)
    except Exception as err:
        cause = err.__cause__
        return {"error": type(err).__name__, "message": str(err),
                "cause": None if cause is None else f"{type(cause).__name__}: {cause}"}
    cache.set("k", "v")
    return {"class": type(cache).__name__, "value": cache.get("k")}

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = {url: attempt(url) for url in URLS}
    try:
        plugins = [p for p in get_plugins() if not p["name"].startswith("cacheplug.")]
    except Exception as err:
        plugins = f"{type(err).__name__}: {err}"
print(json.dumps({
    "results": results,
    "plugins": plugins,
    "warnings": [{"category": w.category.__name__, "message": str(w.message),
                  "filename": w.filename} for w in caught],
}))
"""


def _report(site: Path, *urls: str, **env: str) -> Any:
    return _run_json(
        sys.executable, f"URLS = {list(urls)!r}\n{_REPORT}", {"PYTHONPATH": str(site), **env}
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory of distributions: one good, one failing at import, two with broken hooks."""
    write_distribution(
        tmp_path,
        "cacheplug-good",
        "1.0",
        {"good": "good_plugin"},
        {
            "good_plugin": backend_module("good"),
        },
    )
    write_distribution(
        tmp_path,
        "cacheplug-broken",
        "1.2.3",
        {"broken": "broken_plugin"},
        {
            "broken_plugin": MARK + "raise ImportError('needs libfoo')\n",
        },
    )
    write_distribution(
        tmp_path,
        "cacheplug-halfway",
        "0.5",
        {"halfway": "halfway_plugin"},
        {
            "halfway_plugin": backend_module("halfway", body="    raise RuntimeError('oops')\n"),
        },
    )
    write_distribution(
        tmp_path,
        "cacheplug-typo",
        "0.1",
        {"typo": "typo_plugin"},
        {
            "typo_plugin": """
            from cacheplug import hookimpl
            @hookimpl
            def cacheplug_register_backend(register):
                register("typo", "typo_plugin:Nothing")
        """,
        },
    )
    return tmp_path


def test_broken_plugins_warn_and_the_rest_works(site: Path) -> None:
    report = _report(site, "simple://", "good://", "broken://", "halfway://")
    results = report["results"]
    assert results["simple://"] == {"class": "SimpleCache", "value": "v"}
    assert results["good://"] == {"class": "PluginCache", "value": "v"}
    messages = {w["message"].split("'")[1]: w for w in report["warnings"]}
    assert sorted(messages) == ["broken", "halfway", "typo"]
    assert {w["category"] for w in report["warnings"]} == {"PluginLoadWarning"}
    broken = messages["broken"]["message"]
    for part in (
        "'broken'",
        "cacheplug-broken 1.2.3",
        "ImportError: needs libfoo",
        "CACHEPLUG_DISABLE_PLUGINS=broken",
    ):
        assert part in broken
    assert "RuntimeError: oops" in messages["halfway"]["message"]
    assert "unknown hook 'cacheplug_register_backend'" in messages["typo"]["message"]
    # The warning points at the code that first used cacheplug, not into cacheplug.
    assert messages["broken"]["filename"] == "<string>"
    assert imported(site, "broken_plugin")


def test_scheme_of_a_broken_plugin_raises_plugin_error_chained_to_the_cause(site: Path) -> None:
    results = _report(site, "broken://", "halfway://")["results"]
    assert results["broken://"]["error"] == "PluginError"
    assert "unknown cache scheme 'broken'" in results["broken://"]["message"]
    assert results["broken://"]["cause"] == "ImportError: needs libfoo"
    # A plugin whose hook failed half-way registered nothing.
    assert results["halfway://"]["error"] == "PluginError"
    assert results["halfway://"]["cause"] == "RuntimeError: oops"


def test_broken_plugins_are_listed_with_their_error(site: Path) -> None:
    plugins = {p["name"]: p for p in _report(site)["plugins"]}
    assert plugins["good"]["error"] is None
    assert plugins["good"]["schemes"] == ["good"]
    assert plugins["broken"] == {
        "name": "broken",
        "distribution": "cacheplug-broken",
        "version": "1.2.3",
        "hooks": [],
        "schemes": [],
        "serializers": [],
        "error": "ImportError: needs libfoo",
    }
    assert plugins["halfway"]["schemes"] == []


def test_strict_mode_raises_at_load(site: Path) -> None:
    report = _report(
        site, "simple://", CACHEPLUG_STRICT_PLUGINS="1", CACHEPLUG_DISABLE_PLUGINS="halfway,typo"
    )
    failure = report["results"]["simple://"]
    assert failure["error"] == "PluginError"
    assert "plugin 'broken' (cacheplug-broken 1.2.3) failed to load" in failure["message"]
    assert failure["cause"] == "ImportError: needs libfoo"
    assert report["warnings"] == []


@pytest.mark.parametrize("disabled", ["broken,halfway,typo", "*"])
def test_disabled_plugins_are_notimported(site: Path, disabled: str) -> None:
    report = _report(site, "simple://", "good://", CACHEPLUG_DISABLE_PLUGINS=disabled)
    assert report["warnings"] == []
    assert report["results"]["simple://"] == {"class": "SimpleCache", "value": "v"}
    assert not imported(site, "broken_plugin")
    assert not imported(site, "halfway_plugin")
    good = report["results"]["good://"]
    if disabled == "*":
        assert good["error"] == "ConfigurationError"
        assert not imported(site, "good_plugin")
        assert report["plugins"] == []
    else:
        assert good == {"class": "PluginCache", "value": "v"}
        assert [p["name"] for p in report["plugins"]] == ["good"]


def test_two_distributions_claiming_one_scheme(tmp_path: Path) -> None:
    write_distribution(
        tmp_path,
        "cacheplug-alpha",
        "1.0",
        {"alpha": "alpha_plugin"},
        {
            "alpha_plugin": backend_module("dup", "memory"),
        },
    )
    write_distribution(
        tmp_path,
        "cacheplug-beta",
        "2.0",
        {"beta": "beta_plugin"},
        {
            "beta_plugin": backend_module("dup"),
        },
    )
    results = _report(tmp_path, "dup://", "memory://", "simple://")["results"]
    dup = results["dup://"]
    assert dup["error"] == "PluginError"
    for part in (
        "cacheplug-alpha 1.0",
        "cacheplug-beta 2.0",
        "CACHEPLUG_DISABLE_PLUGINS=alpha or CACHEPLUG_DISABLE_PLUGINS=beta",
    ):
        assert part in dup["message"]
    memory = results["memory://"]["message"]
    assert "cacheplug.backends.simple" in memory and "cacheplug-alpha 1.0" in memory
    assert memory.endswith("disable one of them with CACHEPLUG_DISABLE_PLUGINS=alpha")
    assert results["simple://"] == {"class": "SimpleCache", "value": "v"}
    listed = {p["name"]: p["error"] for p in _report(tmp_path)["plugins"]}
    assert dup["message"] in listed["alpha"] and memory in listed["alpha"]
    assert listed["beta"] == dup["message"]

    settled = _report(tmp_path, "dup://", CACHEPLUG_DISABLE_PLUGINS="beta")["results"]
    assert settled["dup://"] == {"class": "PluginCache", "value": "v"}

    strict = _report(tmp_path, "simple://", CACHEPLUG_STRICT_PLUGINS="1")["results"]
    assert strict["simple://"]["error"] == "PluginError"
    assert "is claimed by" in strict["simple://"]["message"]


def test_two_distributions_with_one_entry_point_name_are_told_apart(tmp_path: Path) -> None:
    """Entry-point names are unique only within a distribution: two "sqlite" plugins used to
    leave one silently serving the other's scheme, and disabling "sqlite" disabled both."""
    for dist, version in (("cacheplug-sqlite-a", "1.0"), ("cacheplug-sqlite-b", "2.0")):
        module = dist.replace("-", "_")
        write_distribution(
            tmp_path, dist, version, {"sqlite": module}, {module: backend_module("sqlite")}
        )
    report = _report(tmp_path, "sqlite://")
    message = report["results"]["sqlite://"]["message"]
    assert report["results"]["sqlite://"]["error"] == "PluginError"
    for part in (
        "plugin 'cacheplug-sqlite-a:sqlite' (cacheplug-sqlite-a 1.0)",
        "plugin 'cacheplug-sqlite-b:sqlite' (cacheplug-sqlite-b 2.0)",
        "CACHEPLUG_DISABLE_PLUGINS=cacheplug-sqlite-a:sqlite or "
        "CACHEPLUG_DISABLE_PLUGINS=cacheplug-sqlite-b:sqlite",
    ):
        assert part in message
    assert report["warnings"] == []
    listed = {p["name"]: p["error"] for p in report["plugins"]}
    assert listed["cacheplug-sqlite-a:sqlite"] == listed["cacheplug-sqlite-b:sqlite"] == message
    # the advice works: each one alone
    for keep, drop in (("a", "b"), ("b", "a")):
        settled = _report(
            tmp_path, "sqlite://", CACHEPLUG_DISABLE_PLUGINS=f"cacheplug-sqlite-{drop}:sqlite"
        )
        assert settled["results"]["sqlite://"] == {"class": "PluginCache", "value": "v"}
        names = [p["name"] for p in settled["plugins"] if "sqlite" in p["name"]]
        assert names == [f"cacheplug-sqlite-{keep}:sqlite"]
        assert settled["warnings"] == []
    both = _report(tmp_path, "sqlite://", CACHEPLUG_DISABLE_PLUGINS="sqlite")["results"]
    assert both["sqlite://"]["error"] == "ConfigurationError"  # the plain name: both


def test_string_targets_are_imported_when_their_name_is_used(tmp_path: Path) -> None:
    write_distribution(
        tmp_path,
        "cacheplug-lazy",
        "3.1",
        {"lazy": "lazy_plugin"},
        {
            "lazy_plugin": """
            from cacheplug import hookimpl
            @hookimpl
            def cacheplug_register_backends(register):
                register("lazy", "lazy_backend:LazyCache")
                register("missing", "lazy_backend:NoSuchCache")
        """,
            "lazy_backend": MARK + "from cacheplug import SimpleCache\n"
            "class LazyCache(SimpleCache):\n    pass\n",
        },
    )
    registry_only = _report(tmp_path)
    assert registry_only["plugins"][0]["schemes"] == ["lazy", "missing"]
    assert not imported(tmp_path, "lazy_backend")

    results = _report(tmp_path, "lazy://", "missing://")["results"]
    assert results["lazy://"] == {"class": "LazyCache", "value": "v"}
    assert imported(tmp_path, "lazy_backend")
    missing = results["missing://"]
    assert missing["error"] == "PluginError"
    assert "'lazy_backend:NoSuchCache'" in missing["message"]
    assert missing["cause"].startswith("AttributeError")
