"""cacheplug as a user gets it: the sdist and wheel built from this tree, the wheel installed
without extras into a clean virtualenv.

tests/test_plugin_distribution.py installs the source tree; this file checks the artifacts: what
they hold, their metadata, and what a no-extras install can and cannot do.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION: str = next(
    node.value.value
    for node in ast.parse((REPO / "cacheplug" / "__init__.py").read_text()).body
    if isinstance(node, ast.Assign)
    and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
    and isinstance(node.value, ast.Constant)
    and isinstance(node.value.value, str)
)
SHIPPED_SOURCES = sorted(
    path.relative_to(REPO).as_posix()
    for path in (REPO / "cacheplug").rglob("*")
    if path.suffix == ".py" or path.name == "py.typed"
    if "__pycache__" not in path.parts
)


def _run(argv: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``cwd`` (never the checkout, whose ``cacheplug/`` would shadow the
    installed one) without this session's cacheplug or Python path settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CACHEPLUG_") and k not in {"PYTHONPATH", "CACHE_URL", "MYPYPATH"}
    }
    return subprocess.run(
        argv, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _pip_install(python: Path, *requirements: str, cwd: Path) -> None:
    """Install into the venv of ``python`` with this interpreter's pip (the venv has none)."""
    done = _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install"),
            *("--quiet", "--disable-pip-version-check", *requirements),
        ],
        cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    #: what the build printed: the backend's warnings
    log: str


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist of this tree as a fresh clone has it, and the wheel built from that sdist."""
    root = tmp_path_factory.mktemp("shipped")
    # What a commit of this tree would hold: tracked and new files, not the ignored
    # build leftovers (*.egg-info, __pycache__) of the working copy.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split("\0")
    source = root / "src"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # The backend pyproject asks for, without pip's per-build isolated environment.
    tools = root / "build-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tools)], check=True)
    python = tools / "bin" / "python"
    _pip_install(python, "build", *PYPROJECT["build-system"]["requires"], cwd=root)
    done = _run([str(python), "-m", "build", "--no-isolation", "--outdir", "dist", "src"], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = (root / "dist").glob("*.tar.gz")
    (wheel,) = (root / "dist").glob("*.whl")
    return Built(sdist, wheel, done.stdout + done.stderr)


@pytest.fixture(scope="session")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv holding the wheel alone, no extras: the bin/ directory."""
    root = tmp_path_factory.mktemp("user")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    _pip_install(root / "env" / "bin" / "python", str(built.wheel), cwd=root)
    return root / "env" / "bin"


def _wheel_names(built: Built) -> list[str]:
    with zipfile.ZipFile(built.wheel) as wheel:
        return wheel.namelist()


def _dist_info(built: Built, name: str) -> str:
    with zipfile.ZipFile(built.wheel) as wheel:
        return wheel.read(f"cacheplug-{VERSION}.dist-info/{name}").decode()


def _sdist_names(built: Built) -> list[str]:
    with tarfile.open(built.sdist) as sdist:
        prefix = f"cacheplug-{VERSION}/"
        return [m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()]


def _metadata(built: Built) -> email.message.Message:
    return email.parser.Parser().parsestr(_dist_info(built, "METADATA"))


# -- the artifacts -------------------------------------------------------------------------------


def test_artifacts_are_named_for_the_version(built: Built) -> None:
    assert built.sdist.name == f"cacheplug-{VERSION}.tar.gz"
    # pure Python, any 3.x: one wheel for every platform
    assert built.wheel.name == f"cacheplug-{VERSION}-py3-none-any.whl"


def test_wheel_holds_every_module_and_the_typed_marker_and_nothing_else(built: Built) -> None:
    names = _wheel_names(built)
    package = sorted(n for n in names if not n.startswith(f"cacheplug-{VERSION}.dist-info/"))
    assert package == SHIPPED_SOURCES
    assert "cacheplug/py.typed" in package
    for sub in ("backends", "core", "serializers", "testing"):
        assert f"cacheplug/{sub}/__init__.py" in package
    assert _dist_info(built, "top_level.txt").split() == ["cacheplug"]


def test_sdist_carries_what_the_build_needs(built: Built) -> None:
    names = _sdist_names(built)
    for needed in ("pyproject.toml", "README.md", "PKG-INFO", *SHIPPED_SOURCES):
        assert needed in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[0] in {".ci", "benchmarks", "docs", "scripts"}]


def test_sdist_carries_no_half_test_suite(built: Built) -> None:
    assert not [n for n in _sdist_names(built) if n.startswith("tests/")]


def test_the_license_text_ships_in_both_artifacts(built: Built) -> None:
    assert "LICENSE" in _sdist_names(built)
    assert f"cacheplug-{VERSION}.dist-info/licenses/LICENSE" in _wheel_names(built)
    assert _metadata(built)["License-Expression"] == "MIT"


def test_the_build_warns_of_nothing_deprecated(built: Built) -> None:
    warned = [line.strip() for line in built.log.splitlines() if "deprecat" in line.lower()]
    assert not warned


def test_entry_points_are_the_command_alone(built: Built) -> None:
    # Built-in backends and serializers register themselves (BUILTIN_PLUGINS); an entry point
    # in the `cacheplug` group naming one would register it a second time.
    assert _dist_info(built, "entry_points.txt").split() == [
        "[console_scripts]",
        "cacheplug",
        "=",
        "cacheplug.cli:main",
    ]


def test_metadata_is_the_pyproject_s(built: Built) -> None:
    meta = _metadata(built)
    project = PYPROJECT["project"]
    assert meta["Name"] == project["name"]
    assert meta["Version"] == VERSION
    assert meta["Summary"] == project["description"]
    assert SpecifierSet(meta["Requires-Python"]) == SpecifierSet(project["requires-python"])
    assert meta["Description-Content-Type"] == "text/markdown"
    assert str(meta.get_payload()).strip() == (REPO / "README.md").read_text().strip()
    assert sorted(meta.get_all("Provides-Extra") or []) == sorted(project["optional-dependencies"])
    declared = {str(Requirement(r)) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        for r in requirements:
            req = Requirement(r)
            req.marker = None
            declared.add(f'{req}; extra == "{extra}"')
    assert {str(Requirement(r)) for r in meta.get_all("Requires-Dist") or []} == {
        str(Requirement(r)) for r in declared
    }
    # the sdist's PKG-INFO tells an index the same
    with tarfile.open(built.sdist) as sdist:
        member = sdist.extractfile(f"cacheplug-{VERSION}/PKG-INFO")
        assert member is not None
        pkg_info = email.parser.Parser().parsestr(member.read().decode())
    for field in ("Name", "Version", "Requires-Python"):
        assert pkg_info[field] == meta[field]
    for field in ("Requires-Dist", "Provides-Extra"):
        assert sorted(pkg_info.get_all(field) or []) == sorted(meta.get_all(field) or [])


def test_classifiers_name_the_python_versions(built: Built) -> None:
    classifiers = _metadata(built).get_all("Classifier") or []
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert version in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers


# -- the wheel installed without extras ----------------------------------------------------------


def test_no_extras_install_brings_the_three_dependencies_only(venv: Path) -> None:
    (site,) = venv.parent.glob("lib/python3.*/site-packages")
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert installed == {"cacheplug", "msgpack", "orjson", "pluggy"}


def test_installed_package_imports_and_serves_simple(venv: Path, tmp_path: Path) -> None:
    code = """
        import importlib.metadata, cacheplug
        cache = cacheplug.from_url("simple://")
        print(cacheplug.__file__)
        print(cacheplug.__version__, importlib.metadata.version("cacheplug"))
        print(cache.set("k", {"v": [1]}), cache.get("k"))
        from cacheplug import *
    """
    done = _run([str(venv / "python"), "-c", textwrap.dedent(code)], tmp_path)
    assert done.returncode == 0, done.stderr
    where, versions, round_trip = done.stdout.splitlines()
    assert Path(where).is_relative_to(venv.parent)
    assert versions == f"{VERSION} {VERSION}"
    assert round_trip == "True {'v': [1]}"


@pytest.mark.parametrize("how", ["script", "module"])
def test_demo_runs_from_the_wheel(venv: Path, tmp_path: Path, how: str) -> None:
    script, python = str(venv / "cacheplug"), str(venv / "python")
    argv = [script] if how == "script" else [python, "-m", "cacheplug"]
    done = _run([*argv, "demo"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hit ratio:" in done.stdout and "speed-up:" in done.stdout
    version = _run([*argv, "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    assert VERSION in version.stdout


_MISSING_DRIVER = """
import sys
from cacheplug import ConfigurationError, from_url
try:
    from_url(sys.argv[1])
except ConfigurationError as err:
    print(err)
"""


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("redis://localhost:6379/0", "redis"),
        ("rediss://localhost:6380/0", "redis"),
        ("redis+unix:///run/redis.sock", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("redis+cluster://node1:7000,node2:7001", "redis"),
        ("memcached://localhost:11211", "memcached"),
        ("memcached://a:11211,b:11211?key_prefix=p", "memcached"),
    ],
)
def test_a_missing_driver_names_its_extra(venv: Path, tmp_path: Path, url: str, extra: str) -> None:
    done = _run([str(venv / "python"), "-c", _MISSING_DRIVER, url], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"pip install 'cacheplug[{extra}]'" in done.stdout


def test_the_contract_kit_without_pytest_says_to_install_it(venv: Path, tmp_path: Path) -> None:
    done = _run([str(venv / "python"), "-c", "import cacheplug.testing"], tmp_path)
    assert done.returncode != 0
    assert "ModuleNotFoundError" in done.stderr and "pip install pytest" in done.stderr


def test_types_reach_a_user_s_mypy(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent("""
        from cacheplug import SimpleCache, from_url

        cache = from_url("simple://")
        reveal_type(cache)
        hits: int = SimpleCache().inc("hits")
        """)
    )
    # This session's mypy, reading the packages of the venv's interpreter only.
    done = _run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-incremental"),
            *("--python-executable", str(venv / "python"), "app.py"),
        ],
        tmp_path,
    )
    assert 'Revealed type is "cacheplug.core.base.BaseCache"' in done.stdout, done.stdout
    # typed, not Any: inc may return None
    assert 'expression has type "int | None", variable has type "int"' in done.stdout
    assert "Found 1 error" in done.stdout, done.stdout
