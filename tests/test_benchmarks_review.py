"""Are the benchmarks honest? Checks that need no timing: peers configured like cacheplug,
interleaving, what a target measures, what the report says about the peers' settings.

A benchmark that favours cacheplug, or hides a cost, misleads the people who decide on its
numbers; these tests pin the parts of that which can be checked without a clock.
"""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report as report_module
from benchmarks.drivers import _memcached_clients, _redis_clients, drivers_section
from benchmarks.engines import Engines
from benchmarks.payloads import FLAT, NESTED, UserRecord
from benchmarks.peers import DEFAULT_TIMEOUT, simple_peers
from benchmarks.report import Context, SectionResult, fmt_ns
from benchmarks.signing import SECRET, signing_section
from benchmarks.threads import throughput
from benchmarks.timing import Case, Timing, compare, ratio
from cacheplug import MemcachedCache, SimpleCache
from cacheplug.backends import simple as simple_backend


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    with Engines() as running:
        yield running


@pytest.fixture(scope="module")
def drivers(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> SectionResult:
    ctx = Context(out_dir=tmp_path_factory.mktemp("drivers"), quick=True, engines=engines)
    return drivers_section(ctx)


# -- the harness -----------------------------------------------------------------------------


def test_compare_runs_every_case_each_repeat_in_a_rotating_order_with_gc_off() -> None:
    runs: list[tuple[str, bool]] = []

    def case(name: str) -> Case:
        return Case(lambda n: runs.append((name, gc.isenabled())), 1)

    compare({"a": case("a"), "b": case("b"), "c": case("c")}, 3)
    assert [name for name, _ in runs] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert not any(enabled for _, enabled in runs)


def test_ratio_is_ours_over_theirs_and_units_scale() -> None:
    ours, theirs = Timing(100.0, 100.0, 1, 1), Timing(400.0, 400.0, 1, 1)
    assert ratio(ours, theirs) == 0.25  # below 1: cacheplug faster, as the report says
    assert fmt_ns(999) == "999 ns"
    assert fmt_ns(12_345) == "12.3 µs"
    assert fmt_ns(2_500_000) == "2.50 ms"


class _Recorder:
    """A cache that only notes which of the compared caches served each call."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def get(self, key: str) -> Any:
        self.log.append(self.name)
        return None

    def set(self, key: str, value: Any) -> None:
        self.log.append(self.name)


def test_thread_throughput_interleaves_the_caches_of_a_group() -> None:
    if "caches" not in inspect.signature(throughput).parameters:
        pytest.fail("throughput() times one cache at a time")
    log: list[str] = []
    caches = {name: _Recorder(name, log) for name in ("a", "b")}
    best: Any = throughput(caches, ["k0", "k1"], 1, 10, 3)  # type: ignore[arg-type,unused-ignore]
    assert set(best) == {"a", "b"} and all(value > 0 for value in best.values())
    assert log[::10] == ["a", "b", "b", "a", "a", "b"]  # one run = 10 calls


# -- peers configured like cacheplug -----------------------------------------------------------


def test_in_memory_peers_hold_as_many_entries_for_as_long() -> None:
    peers = simple_peers(1234)
    ours, theirs = peers["cacheplug"], peers["cachelib"]
    assert isinstance(ours, SimpleCache)
    assert (ours.threshold, ours.default_timeout) == (1234, DEFAULT_TIMEOUT)
    assert (theirs._threshold, theirs.default_timeout) == (1234, DEFAULT_TIMEOUT)  # type: ignore[attr-defined]
    locked = peers["cachetools+lock"]._cache  # type: ignore[attr-defined]
    bare = peers["cachetools"].get.__self__  # type: ignore[attr-defined]
    for ttl_cache in (locked, bare):
        assert (ttl_cache.maxsize, ttl_cache.ttl) == (1234, DEFAULT_TIMEOUT)


def test_nested_value_really_takes_the_pickled_path_and_flat_one_does_not() -> None:
    # the report's labels: "flat dict" is kept unpickled, "nested dict" is pickled by every set
    # and, read over and over as in the get-hit loop, kept unpickled from its eighth get on
    cache = SimpleCache(10)
    cache.set("flat", FLAT)
    cache.set("nested", NESTED)
    assert cache._cache["flat"][1] == simple_backend._SHALLOW
    assert cache._cache["nested"][1] == simple_backend._SERIALIZED
    for _ in range(7):
        cache.get("nested")
    assert cache._cache["nested"][1] == simple_backend._DUE
    cache.get("nested")
    assert cache._cache["nested"][1] == simple_backend._NESTED


def test_redis_peers_store_for_as_long_and_timed_peer_has_our_timeouts(
    engines: Engines, tmp_path: Path
) -> None:
    clients = _redis_clients(Context(out_dir=tmp_path, quick=True, engines=engines))
    ours = clients["cacheplug"].get.__self__  # type: ignore[attr-defined]
    theirs = clients["cachelib"].get.__self__  # type: ignore[attr-defined]
    assert ours.default_timeout == theirs.default_timeout == 300
    timed = clients["redis-py with timeouts"].get.__self__  # type: ignore[attr-defined]
    settings = ("socket_timeout", "socket_connect_timeout")
    our_kwargs = ours._client.connection_pool.connection_kwargs
    timed_kwargs = timed.connection_pool.connection_kwargs
    assert [timed_kwargs[name] for name in settings] == [our_kwargs[name] for name in settings]


def test_memcached_timed_peer_has_our_timeouts_and_nodelay(
    engines: Engines, tmp_path: Path
) -> None:
    clients = _memcached_clients(Context(out_dir=tmp_path, quick=True, engines=engines))
    defaults = inspect.signature(MemcachedCache).parameters
    for name in ("pymemcache", "pymemcache with timeouts"):
        client = clients[name].get.__self__  # type: ignore[attr-defined]
        assert client.default_noreply is False  # set waits for the reply, as ours does
    timed = clients["pymemcache with timeouts"].get.__self__  # type: ignore[attr-defined]
    for name in ("timeout", "connect_timeout", "no_delay"):
        assert getattr(timed, name) == defaults[name].default, name


def test_drivers_section_states_the_installed_drivers_defaults(drivers: SectionResult) -> None:
    import redis

    text = "\n".join(drivers.body)
    read = inspect.signature(redis.Redis).parameters["socket_timeout"].default
    if read is not None:
        assert "with no socket timeout" not in text
        assert f"read timeout {read:g} s" in text


def test_drivers_section_shows_keys_off_the_ascii_path(drivers: SectionResult) -> None:
    headers = [line for line in drivers.body if line.startswith("| operation")]
    assert len(headers) == 2  # redis, memcached
    assert all("non-ASCII" in line for line in headers)


# -- what the targets measure -------------------------------------------------------------------


def _signed_by_simple_cache(value: Any) -> bool:
    cache = SimpleCache(10, secret=SECRET)
    cache.set("k", value)
    return bool(cache._cache["k"][1] == simple_backend._SIGNED)


def test_signing_targets_only_time_values_that_are_signed(tmp_path: Path) -> None:
    known = {"flat dict": FLAT, "UserRecord": UserRecord(1, "Ada", "ada@example.com", True, 3.5)}
    assert not _signed_by_simple_cache(FLAT) and _signed_by_simple_cache(known["UserRecord"])
    ctx = Context(out_dir=tmp_path, quick=True)
    try:
        section = signing_section(ctx)
    finally:
        ctx.engines.close()
    assert section.targets
    for target in section.targets:
        (value,) = [value for label, value in known.items() if label in target.name]
        assert _signed_by_simple_cache(value), target.name


def test_report_names_hiredis_version() -> None:
    assert any(
        line.startswith("- Libraries:") and "hiredis" in line
        for line in report_module.machine_lines()
    )
