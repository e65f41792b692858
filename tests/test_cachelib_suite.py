"""cachelib's own test suite, run on cacheplug's classes: the drop-in, proven by their tests.

At test time pip downloads the sdist of the installed cachelib version (their tests are theirs:
fetched and run as an external conformance suite, never copied here), and their tests for
``SimpleCache``, ``FileSystemCache``, ``RedisCache`` and ``MemcachedCache`` and their interface
test run in pytest processes of their own, side by side, with cachelib's classes replaced by
cacheplug's through ``tests/cachelib_suite/cachelib_shim.py`` (which also sends their fixed
server addresses to servers we start on free ports). Every test of theirs must pass, except
those in ``KNOWN_DIVERGENCES``, which must still fail: one that starts passing fails here too,
so the list stays true. A skipped test never counts as passing; only the ``pylibmc`` variants
may skip (cacheplug always speaks through pymemcache, so it ignores ``memcache_client_lib``; the
``python-memcached`` variants run the same tests on it).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import MemcachedServer, RedisServer

CACHELIB_VERSION = importlib.metadata.version("cachelib")
SHIM_DIR = Path(__file__).parent / "cachelib_suite"
DOWNLOAD_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0  # for all groups together; they take about 30 s

#: Their test files run by each group (one pytest process each), and the Redis db it gets.
GROUPS: dict[str, tuple[list[str], int]] = {
    "simple": (["test_simple_cache.py"], 0),
    "filesystem": (["test_file_system_cache.py"], 0),
    "redis": (["test_redis_cache.py"], 0),
    # the interface test flushes Redis db 0 and all of memcached: it runs beside the memcached
    # tests, in the process that owns memcached, on a Redis db of its own
    "memcached": (["test_memcached_cache.py", "test_interface_uniformity.py"], 1),
}

#: Their test files that do not run here, and why.
NOT_RUN = {
    "test_base_cache.py": "tests cachelib's BaseCache itself, a cache that stores nothing; "
    "cacheplug's BaseCache is the abstract contract (its do-nothing cache is NullCache), and "
    "half of the file calls the private _normalize_timeout",
    "test_serializers.py": "tests cachelib's serializer classes, which cacheplug does not "
    "replace; its caches take them as they are, which their SerializerTests check here",
    "test_dynamodb_cache.py": "no cacheplug counterpart",
    "test_mongodb_cache.py": "no cacheplug counterpart",
    "test_uwsgi_cache.py": "no cacheplug counterpart",
    "test_valkey_cache.py": "no cacheplug counterpart",
}

_DELETE_MANY = (
    "delete_many answers the keys that existed and were deleted, not every key asked for "
    "(docs/contract.md, 'Where cacheplug differs': cachelib 0.16+ lists keys never there)"
)
_MEMCACHED_CLIENT = (
    "reads MemcachedCache._client, the python-memcached/pylibmc client object inside "
    "cachelib's MemcachedCache; cacheplug speaks the protocol through its own per-server pools"
)

_SIMPLE = "test_simple_cache.py::TestSimpleCache::"
_FILE = "test_file_system_cache.py::TestFileSystemCache::"
_REDIS = "test_redis_cache.py::TestRedisCache::"
_MEMCACHED = "test_memcached_cache.py::TestMemcachedCache"
_FILE_COUNT = (
    "reads the private FileSystemCache._file_count; cacheplug keeps its entry count in the "
    "prefix's lock file, shared by every process using the directory"
)
_RUN_SAFELY = (
    "calls the private FileSystemCache._run_safely (cachelib's retry of Windows "
    "PermissionErrors) and patches cachelib.file.sleep"
)
_POOL = _MEMCACHED_CLIENT + " (and calls the private _client_context)"

#: Their tests that fail on cacheplug, on purpose. A key names a test function (every
#: parametrization of it must fail), or ends in " (teardown)" for an error in the teardown of
#: the tests under that prefix.
KNOWN_DIVERGENCES: dict[str, str] = {
    _SIMPLE + "test_delete_many_raise_errors_nonexistent_key": _DELETE_MANY,
    _FILE + "test_delete_many_raise_errors_nonexistent_key": _DELETE_MANY,
    _FILE + "test_EOFError": "calls the private FileSystemCache._get_filename",
    _FILE + "test_threshold": _FILE_COUNT,
    _FILE + "test_file_counting": _FILE_COUNT,
    _FILE + "test_file_counting_on_override": _FILE_COUNT,
    _FILE + "test_mgmt_element_set_not_counted": _FILE_COUNT,
    _FILE + "test_mgmt_element_delete_not_counted": _FILE_COUNT,
    _FILE + "test_run_safely_succeeds_on_first_try": _RUN_SAFELY,
    _FILE + "test_run_safely_retries_on_permission_error": _RUN_SAFELY,
    _FILE + "test_run_safely_exhausts_retries_and_returns_none": _RUN_SAFELY,
    _FILE + "test_run_safely_does_not_retry_other_errors": _RUN_SAFELY,
    _FILE + "test_run_safely_exponential_backoff": _RUN_SAFELY,
    _REDIS + "test_delete_many_raise_errors_nonexistent_key": _DELETE_MANY,
    _REDIS + "test_callable_key": (
        "a key that is not a str is a TypeError (docs/contract.md, 'Where cacheplug differs'): "
        "cachelib stores a function under str(key), which holds its address, so another "
        "process never finds the entry"
    ),
    _MEMCACHED + "::test_delete_many_raise_errors_nonexistent_key": _DELETE_MANY,
    _MEMCACHED + "::test_pool_enforces_capacity_and_blocking_waits_for_release": _POOL,
    _MEMCACHED + "::test_non_blocking_pool_raises_when_exhausted": _POOL,
    _MEMCACHED + " (teardown)": (
        "their cache_factory fixture " + _MEMCACHED_CLIENT + ", to disconnect it after each "
        "test; the test's own assertions ran before"
    ),
}

#: A skip is allowed only when its reason says this: cacheplug ignores memcache_client_lib.
ALLOWED_SKIP = "pylibmc"

TEARDOWN_SUFFIX = " (teardown)"


@dataclass
class TheirTest:
    """The reports of one of their tests, by phase: ``{"call": ("passed", "")}``."""

    nodeid: str
    phases: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The id without ``tests/`` and parameters, as ``KNOWN_DIVERGENCES`` names tests."""
        return re.sub(r"\[.*\]$", "", self.nodeid.removeprefix("tests/"))

    def failed(self, *phases: str) -> list[str]:
        return [
            self.phases[when][1] for when in phases if self.phases.get(when, ("",))[0] == "failed"
        ]

    @property
    def skip_reason(self) -> str | None:
        for when in ("setup", "call"):
            outcome, detail = self.phases.get(when, ("", ""))
            if outcome == "skipped":
                return detail
        return None


@dataclass
class GroupRun:
    """One group's pytest process, its output and its report."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path
    report: Path
    command: list[str]
    seconds: float = 0.0

    def tail(self, lines: int = 60) -> str:
        text = self.output.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def tests(self) -> tuple[dict[str, TheirTest], list[str]]:
        """Their tests by node id, and the collection errors."""
        tests: dict[str, TheirTest] = {}
        collect_errors = []
        if self.report.exists():
            for line in self.report.read_text().splitlines():
                record = json.loads(line)
                if record["when"] == "collect":
                    collect_errors.append(f"{record['nodeid']}: {record['detail']}")
                    continue
                test = tests.setdefault(record["nodeid"], TheirTest(record["nodeid"]))
                test.phases[record["when"]] = (record["outcome"], record["detail"])
        return tests, collect_errors


def _download_sdist(dest: Path) -> Path:
    """cachelib's sdist of the installed version, unpacked; its ``tests`` hold their suite."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"cachelib=={CACHELIB_VERSION}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(dest),
    ]
    why = ""
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        why = f"pip did not finish within {DOWNLOAD_TIMEOUT:.0f} s"
    else:
        if done.returncode != 0:
            why = f"pip failed with status {done.returncode}:\n{done.stdout}\n{done.stderr}"
    archives = list(dest.glob(f"cachelib-{CACHELIB_VERSION}.tar.gz"))
    if why or len(archives) != 1:
        pytest.fail(
            f"cannot download cachelib {CACHELIB_VERSION}'s sdist, whose tests this runs on "
            f"cacheplug (is the package index reachable?): {why or 'no archive saved'}\n"
            f"$ {shlex.join(command)}",
            pytrace=False,
        )
    with tarfile.open(archives[0]) as archive:
        archive.extractall(dest, filter="data")
    root = dest / f"cachelib-{CACHELIB_VERSION}"
    assert (root / "tests" / "conftest.py").is_file(), f"no tests in {archives[0]}"
    return root


@pytest.fixture(scope="module")
def cachelib_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _download_sdist(tmp_path_factory.mktemp("cachelib-sdist"))


def _start(
    name: str, files: list[str], redis_db: int, root: Path, work: Path, ports: dict[str, int]
) -> GroupRun:
    report, output = work / f"{name}.jsonl", work / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "cachelib_shim",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        "-rfEs",
        f"--basetemp={work / name}",
        *(f"tests/{file}" for file in files),
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    }
    env.update(
        CI="true",  # their conftest then starts no servers of its own
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(SHIM_DIR), env.get("PYTHONPATH")])),
        PYTHONDONTWRITEBYTECODE="1",
        CACHEPLUG_SUITE_REDIS_PORT=str(ports["redis"]),
        CACHEPLUG_SUITE_REDIS_DB=str(redis_db),
        CACHEPLUG_SUITE_MEMCACHED_PORT=str(ports["memcached"]),
        CACHEPLUG_SUITE_REPORT=str(report),
    )
    with open(output, "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    return GroupRun(name, process, output, report, command)


def _selected_groups(session: pytest.Session) -> list[str]:
    """The groups whose test this session runs (``-k redis`` runs one)."""
    chosen = set()
    for item in session.items:
        params = getattr(item, "callspec", None)
        if item.path == Path(__file__) and params is not None and "group" in params.params:
            chosen.add(params.params["group"])
    return [name for name in GROUPS if name in chosen]


@pytest.fixture(scope="module")
def group_runs(
    request: pytest.FixtureRequest,
    cachelib_sdist: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, GroupRun]]:
    """The finished run of each group this session tests, side by side on our own servers."""
    work = tmp_path_factory.mktemp("cachelib-suite")
    redis, memcached = RedisServer(), MemcachedServer()
    runs: dict[str, GroupRun] = {}
    try:
        redis.start()
        memcached.start()
        ports = {"redis": redis.port, "memcached": memcached.port}
        started = time.monotonic()
        for name in _selected_groups(request.session):
            files, db = GROUPS[name]
            runs[name] = _start(name, files, db, cachelib_sdist, work, ports)
        deadline = started + RUN_TIMEOUT
        for run in runs.values():
            try:
                run.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
                pytest.fail(
                    f"cachelib's tests ({run.name}) did not finish within {RUN_TIMEOUT:.0f} s:\n"
                    f"{run.tail()}",
                    pytrace=False,
                )
            run.seconds = time.monotonic() - started
        yield runs
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
        for server in (redis, memcached):
            server.kill()  # nothing to save: skip memcached's graceful second
            server.stop()


def test_every_file_of_their_suite_is_run_or_said_why_not(cachelib_sdist: Path) -> None:
    theirs = {path.name for path in (cachelib_sdist / "tests").glob("test_*.py")}
    run = {file for files, _ in GROUPS.values() for file in files}
    unknown = [key for key in KNOWN_DIVERGENCES if key.split("::")[0] not in run]
    assert not unknown, f"KNOWN_DIVERGENCES names files no group runs: {unknown}"
    assert theirs == run | set(NOT_RUN), (
        f"cachelib {CACHELIB_VERSION}'s test files changed: run or give NOT_RUN a reason for "
        f"{sorted(theirs - run - set(NOT_RUN))}; gone: {sorted((run | set(NOT_RUN)) - theirs)}"
    )


def judge(group: str, tests: dict[str, TheirTest]) -> tuple[list[str], dict[str, int]]:
    """What went wrong in a group's run beside its known divergences, and its counts."""
    files = GROUPS[group][0]
    keys = [key for key in KNOWN_DIVERGENCES if key.split("::")[0] in files]
    call_keys = {key for key in keys if not key.endswith(TEARDOWN_SUFFIX)}
    teardown_keys = {key.removesuffix(TEARDOWN_SUFFIX) for key in keys} - call_keys
    problems: list[str] = []
    counts = dict.fromkeys(("ran", "passed", "diverged", "skipped", "teardown errors"), 0)
    seen_families: set[str] = set()
    teardown_seen: set[str] = set()
    for test in tests.values():
        seen_families.add(test.family)
        reason = test.skip_reason
        if reason is not None:
            counts["skipped"] += 1
            if ALLOWED_SKIP not in reason:
                problems.append(f"SKIPPED (skips are not passes): {test.nodeid}: {reason}")
            continue
        counts["ran"] += 1
        failures = test.failed("setup", "call")
        if test.family in call_keys:
            if failures:
                counts["diverged"] += 1
            else:
                problems.append(
                    f"PASSES NOW, remove it from KNOWN_DIVERGENCES: {test.nodeid} "
                    f"(listed because {KNOWN_DIVERGENCES[test.family]})"
                )
        elif failures:
            problems.append(f"FAILED: {test.nodeid}\n" + "\n".join(failures))
        else:
            counts["passed"] += 1
        for detail in test.failed("teardown"):
            prefix = next((p for p in teardown_keys if test.family.startswith(p)), None)
            if prefix is None:
                problems.append(f"ERROR in teardown: {test.nodeid}\n{detail}")
            else:
                teardown_seen.add(prefix)
                counts["teardown errors"] += 1
    for key in sorted(call_keys - seen_families):
        problems.append(f"NOT RUN, though in KNOWN_DIVERGENCES: {key}")
    for prefix in sorted(teardown_keys - teardown_seen):
        problems.append(f"NO TEARDOWN ERROR now, remove it from KNOWN_DIVERGENCES: {prefix}")
    return problems, counts


@pytest.mark.parametrize("group", list(GROUPS))
def test_cachelib_suite_passes_on_cacheplug(group: str, group_runs: dict[str, GroupRun]) -> None:
    run = group_runs[group]
    tests, collect_errors = run.tests()
    problems, counts = judge(group, tests)
    summary = ", ".join(f"{count} {what}" for what, count in counts.items())
    print(f"cachelib {CACHELIB_VERSION} {group}: {summary} ({run.seconds:.1f} s)")
    status = run.process.returncode
    assert status in (0, 1) and not collect_errors and counts["ran"], (
        f"cachelib's tests ({group}) did not run through (pytest status {status}):\n"
        + "\n".join(collect_errors)
        + f"\n$ {shlex.join(run.command)}\n{run.tail()}"
    )
    assert not problems, f"cachelib {CACHELIB_VERSION}'s own tests on cacheplug ({group}: " + (
        f"{summary}):\n\n" + "\n\n".join(problems)
    )


def test_judge_fails_a_listed_divergence_that_passes() -> None:
    key = "test_redis_cache.py::TestRedisCache::test_callable_key"
    test = TheirTest(f"tests/{key}[RedisCache-no_key_prefix]", {"call": ("passed", "")})
    problems, _ = judge("redis", {test.nodeid: test})
    assert any(line.startswith("PASSES NOW") and key in line for line in problems)


def test_judge_fails_a_skip_and_a_teardown_error_it_was_not_told_of() -> None:
    skipped = TheirTest(
        "tests/test_simple_cache.py::TestSimpleCache::test_has[SimpleCache]",
        {"setup": ("skipped", "Skipped: could not import 'redis'")},
    )
    torn = TheirTest(
        "tests/test_simple_cache.py::TestSimpleCache::test_add[SimpleCache]",
        {"call": ("passed", ""), "teardown": ("failed", "AttributeError: _cache")},
    )
    problems, counts = judge("simple", {test.nodeid: test for test in (skipped, torn)})
    assert [line.split(":")[0] for line in problems[:2]] == [
        "SKIPPED (skips are not passes)",
        "ERROR in teardown",
    ]
    assert counts["skipped"] == 1 and counts["passed"] == 1
