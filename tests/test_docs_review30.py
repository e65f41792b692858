"""Figures the pages quote from elsewhere in the repository agree with their source.

A regenerated benchmark report, or a changed rule in the code, fails here until the page that
quotes it is brought up to date.
"""

from __future__ import annotations

import re
from pathlib import Path

import cachelib
import pytest
from servers import MemcachedServer, RedisServer

from cacheplug import MemcachedCache, RedisCache, SimpleCache, hookimpl
from cacheplug.core.errors import PluginError
from cacheplug.core.plugins import register_plugin, reset_plugins

ROOT = Path(__file__).resolve().parent.parent
REPORT = (ROOT / "benchmarks" / "results" / "REPORT.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_readme_quotes_the_benchmark_reports_run_time_and_memory() -> None:
    run = re.search(r"Run time: ([\d,]+) s; peak memory: ([\d,]+) MiB", REPORT)
    assert run is not None
    quoted = re.search(r"\((\d+) s and ([\d.]+) GiB\s+in the report\)", README)
    assert quoted is not None
    assert int(quoted[1]) == _number(run[1])
    assert float(quoted[2]) == round(_number(run[2]) / 1024, 1)


def test_security_quotes_the_reports_signing_cost() -> None:
    added = [
        _number(ns) / 1000
        for ns in re.findall(r"UserRecord \(pickled\)\s*\|.*\| \+([\d,]+) ns", REPORT)
    ]
    assert len(set(added)) == 2  # get and set, each in the section and in the targets
    quoted = re.search(
        r"about ([\d.]+) µs for a\s+small pickled object", (ROOT / "docs/security.md").read_text()
    )
    assert quoted is not None
    assert min(added) - 0.1 <= float(quoted[1]) <= max(added) + 0.1


@pytest.mark.parametrize("name", ["_x", ".x", "-x"])
def test_a_serializer_name_must_start_with_a_letter_or_digit_as_plugins_md_says(name: str) -> None:
    assert (
        "a serializer name is letters, digits, `_`, `.` or `-`, starting with a letter or digit"
        in (" ".join((ROOT / "docs/plugins.md").read_text().split()))
    )

    class Plugin:
        @hookimpl
        def cacheplug_register_serializers(self, register: object) -> None:
            register(name, "cacheplug.serializers.json:JSONSerializer")  # type: ignore[operator]

    try:
        with pytest.raises(PluginError, match="starting with a letter or digit"):
            register_plugin(Plugin(), name="review30-serializer")
    finally:
        reset_plugins()
    assert SimpleCache(serializer="json").serializer.name == "json"


def test_readme_quotes_the_reports_range_of_engine_to_driver_ratios() -> None:
    section = REPORT.split("## RedisCache and MemcachedCache vs raw drivers", 1)[1].split(
        "\n## ", 1
    )[0]
    ratios = []
    for table in re.split(r"\n### ", section)[1:]:
        rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("|")]
        column = [cell.strip() for cell in rows[0]].index(
            "cacheplug/redis-py" if table.startswith("redis") else "cacheplug/pymemcache"
        )
        ratios += [float(row[column].strip().rstrip("x")) for row in rows[2:]]
    assert len(ratios) == 8
    quoted = re.search(r"engine backends take ([\d.]+)x to ([\d.]+)x the raw driver's time", README)
    assert quoted is not None
    assert (float(quoted[1]), float(quoted[2])) == (min(ratios), max(ratios))


def test_cachelib_and_cacheplug_on_one_store_read_each_other_as_the_pages_say(
    redis_server: RedisServer, memcached_server: MemcachedServer
) -> None:
    row = next(line for line in CONFIGURATION.splitlines() if line.startswith("| moving from"))
    assert "except Redis counters" in row and "raises `ValueError`" in row and "2**62 more" in row
    redis_theirs = cachelib.RedisCache(host=redis_server.host, port=redis_server.port, db=14)
    redis_ours = RedisCache(host=redis_server.host, port=redis_server.port, db=14)
    redis_ours.clear()
    redis_theirs.set("value", {"a": 1})
    redis_theirs.inc("count")
    assert (redis_ours.get("value"), redis_ours.get("count")) == (None, 1)
    redis_ours.set("mine", {"b": 2})
    redis_ours.inc("ours", 3)
    assert isinstance(redis_theirs.get("mine"), bytes)
    assert redis_theirs.get("ours") == 3
    redis_ours.clear()

    memcached_server.flush()
    servers = [f"{memcached_server.host}:{memcached_server.port}"]
    memcached_theirs = cachelib.MemcachedCache(servers)
    memcached_ours = MemcachedCache(servers)
    memcached_theirs.set("value", {"a": 1})
    memcached_theirs.set("count", 5)
    assert (memcached_ours.get("value"), memcached_ours.get("count")) == (None, None)
    memcached_ours.set("mine", {"b": 2})
    memcached_ours.inc("ours", 3)
    with pytest.raises(ValueError, match="flags"):
        memcached_theirs.get("mine")
    assert memcached_theirs.get("ours") == 2**62 + 3
    memcached_ours.close()
    redis_ours.close()
