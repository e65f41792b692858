"""The ``cacheplug check`` command: call every cache method once against a URL, under a fresh key
prefix, and print each result and its time."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cacheplug._cli_problem import EXIT_USAGE, Problem
from cacheplug._cli_target import ENV_URL, Target, token, url_of

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from cacheplug.core.base import BaseCache

__all__ = ["run_check"]


def run_check(args: argparse.Namespace) -> int:
    """Run ``cacheplug check``; the exit status."""
    import time

    from cacheplug.backends.null import NullCache
    from cacheplug.core.cache_url import parse_url

    if not args.url and not os.environ.get(ENV_URL):  # simple:// would check nothing deployed
        args.usage_error(f"the following arguments are required: url (or set {ENV_URL})")
    url, origin = url_of(args)
    try:
        outer = parse_url(url).query.get("key_prefix", "")
    except ValueError as err:
        raise Problem(f"{err} {origin}".rstrip(), EXIT_USAGE) from err
    target = Target(url, origin, key_prefix=f"{outer}cacheplug-check:{token()}:")
    print(f"checking {target.url.redacted()} ({target.scrub(repr(target.cache))})")
    failed: list[str] = []
    with target as cache:
        try:
            for name, run, expected in _round_trip(cache):
                started = time.perf_counter()
                try:
                    got: object = run()
                except Exception as err:
                    got = err
                elapsed = 1000 * (time.perf_counter() - started)
                if got == expected:
                    print(f"  {name:<12} ok      {elapsed:8.3f} ms")
                    continue
                failed.append(name)
                detail = f"{type(got).__name__}: {got}" if isinstance(got, Exception) else repr(got)
                shown = target.scrub(f"got {detail}, expected {expected!r}")
                print(f"  {name:<12} FAILED  {elapsed:8.3f} ms  {shown}")
                if cache.stats().get("errors", 0) and name == _STEPS[0]:
                    break  # the server is down: every other method would fail the same way
        except BaseException:  # cut short (a reader gone, Ctrl-C): leave no key behind
            cache.clear()
            raise
        errors = cache.stats().get("errors", 0)
    if not failed:
        print(f"all {len(_STEPS)} methods ok")
        return 0
    if errors:
        raise Problem(target.unreachable())
    message = f"{len(failed)} of {len(_STEPS)} methods failed: {', '.join(failed)}"
    if isinstance(cache, NullCache):
        message += (
            f"; {target.url.scheme}:// (NullCache) stores nothing by design, so every read "
            "misses: check the cache you mean to deploy instead"
        )
    raise Problem(message)


_STEPS = (
    "set",
    "get",
    "add",
    "has",
    "inc",
    "dec",
    "set_many",
    "get_many",
    "get_dict",
    "delete_many",
    "delete",
    "get_or_set",
    "clear",
)


def _round_trip(cache: BaseCache) -> list[tuple[str, Callable[[], object], object]]:
    """One ``(method, call, expected result)`` per contract method, in an order that builds up."""
    value = {"text": "cacheplug", "numbers": [1, 2, 3]}
    factory_calls: list[int] = []

    def factory() -> str:
        factory_calls.append(1)
        return "made"

    def get_or_set_twice() -> tuple[object, object, int]:
        first = cache.get_or_set("made", factory, 60)
        return first, cache.get_or_set("made", factory, 60), len(factory_calls)

    steps: list[tuple[str, Callable[[], object], object]] = [
        ("set", lambda: cache.set("value", value, 60), True),
        ("get", lambda: cache.get("value"), value),
        ("add", lambda: (cache.add("value", "other"), cache.add("added", "x")), (False, True)),
        ("has", lambda: (cache.has("value"), cache.has("missing")), (True, False)),
        ("inc", lambda: (cache.inc("counter"), cache.inc("counter", 4)), (1, 5)),
        ("dec", lambda: (cache.dec("counter", 2), cache.get("counter")), (3, 3)),
        ("set_many", lambda: sorted(cache.set_many({"a": 1, "b": 2}, 60)), ["a", "b"]),
        ("get_many", lambda: cache.get_many("a", "b", "missing"), [1, 2, None]),
        ("get_dict", lambda: cache.get_dict("a", "b"), {"a": 1, "b": 2}),
        ("delete_many", lambda: sorted(cache.delete_many("a", "b", "missing")), ["a", "b"]),
        ("delete", lambda: (cache.delete("value"), cache.get("value")), (True, None)),
        ("get_or_set", get_or_set_twice, ("made", "made", 1)),
        ("clear", lambda: (cache.clear(), cache.has("added")), (True, False)),
    ]
    assert tuple(name for name, _, _ in steps) == _STEPS
    return steps
