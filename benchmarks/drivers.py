"""RedisCache and MemcachedCache beside the raw drivers and cachelib's classes.

Every client stores the same 256-byte ``bytes`` payload; the raw drivers store it as it is,
cacheplug and cachelib run it through pickle (a few dozen ns for bytes). The ratio is the price
of the cache layer over a hand-written driver call, round trip included.
"""

from __future__ import annotations

import inspect
from typing import Any

import cachelib

from benchmarks.backends import BATCH, calls_per_repeat, per_backend
from benchmarks.payloads import bytes_payload
from benchmarks.report import Context, SectionResult, Target, fmt_ns, fmt_ratio
from benchmarks.timing import Case, Timing, call_loop, compare
from cacheplug.backends._redis_clients import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT
from cacheplug.backends.memcached import MemcachedCache

__all__ = ["driver_defaults", "drivers_section"]

TIMEOUT = 300
OPS = ("get hit", "set", f"get_many({BATCH})", f"set_many({BATCH})")
#: Issue 5: cacheplug's time over the raw driver's, per operation, at most (set_many: no goal).
GOALS = dict(zip(OPS, (1.05, 1.08, 1.10), strict=False))
#: cacheplug with a key_prefix, as most applications run it (memcached keeps a namespace token)
PREFIXED = "cacheplug key_prefix="
#: cacheplug with keys that are not ASCII: the hot calls pack their own commands for ASCII names
#: only, others go through the driver's client layer; the targets' keys are ASCII
NON_ASCII = "cacheplug non-ASCII keys"
#: the raw driver with the socket timeouts cacheplug gives it by default (not the target's peer)
TIMED = " with timeouts"


def _seconds(value: object) -> str:
    return "none" if value is None else f"{value:g} s"


def driver_defaults() -> str:
    """What the installed raw drivers do by default, read from their signatures: the report
    must not describe another version's defaults."""
    import redis
    from pymemcache.client.base import Client

    redis_args = inspect.signature(redis.Redis).parameters
    memcache_args = inspect.signature(Client).parameters
    connect, read = (
        _seconds(redis_args[name].default) for name in ("socket_connect_timeout", "socket_timeout")
    )
    mc_connect, mc_read = (
        _seconds(memcache_args[name].default) for name in ("connect_timeout", "timeout")
    )
    nodelay = "on" if memcache_args["no_delay"].default else "off"
    return (
        f"redis-py's own: connect timeout {connect}, read timeout {read}; pymemcache's own: "
        f"connect timeout {mc_connect}, read timeout {mc_read}, TCP_NODELAY {nodelay}; no "
        "timeout means a stalled server hangs the caller"
    )


class _Client:
    """One client's get, set, get_many and set_many, on its own keys."""

    def __init__(self, prefix: str, get: Any, set_: Any, get_many: Any, set_many: Any) -> None:
        self.keys = [f"{prefix}{i}" for i in range(BATCH)]
        self.get, self.set, self.get_many, self.set_many = get, set_, get_many, set_many


def _cache_client(prefix: str, cache: Any) -> _Client:
    return _Client(prefix, cache.get, cache.set, cache.get_many, cache.set_many)


def _redis_clients(ctx: Context) -> dict[str, _Client]:
    import redis

    ours = ctx.engines.cache("redis")
    server = ctx.engines.server("redis")
    raw = redis.Redis(host=server.host, port=server.port, db=0)
    timed = redis.Redis(
        host=server.host,
        port=server.port,
        db=0,
        socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT,
    )
    theirs = cachelib.RedisCache(host=server.host, port=server.port, default_timeout=TIMEOUT)
    prefixed = ctx.engines.cache("redis", key_prefix="kp:")

    def driver(prefix: str, client: Any) -> _Client:
        def set_many(mapping: dict[str, bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for key, value in mapping.items():
                pipe.set(key, value, ex=TIMEOUT)
            pipe.execute()

        return _Client(
            prefix,
            client.get,
            lambda k, v: client.set(k, v, ex=TIMEOUT),
            lambda *k: client.mget(k),
            set_many,
        )

    return {
        "cacheplug": _cache_client("cp:", ours),
        "redis-py": driver("raw:", raw),
        "cachelib": _cache_client("cl:", theirs),
        PREFIXED: _cache_client("", prefixed),
        NON_ASCII: _cache_client("cp:é", ours),
        "redis-py" + TIMED: driver("rawt:", timed),
    }


def _memcached_clients(ctx: Context) -> dict[str, _Client]:
    from pymemcache.client.base import Client

    ours = ctx.engines.cache("memcached")
    server = ctx.engines.server("memcached")
    # noreply off, as cacheplug does: set then reports whether memcached stored the value.
    raw = Client((server.host, server.port), default_noreply=False)
    defaults = inspect.signature(MemcachedCache).parameters
    timed = Client(
        (server.host, server.port),
        default_noreply=False,
        connect_timeout=defaults["connect_timeout"].default,
        timeout=defaults["timeout"].default,
        no_delay=True,
    )
    # cachelib finds no memcache library of its own here; it accepts a ready client.
    theirs = cachelib.MemcachedCache(
        Client((server.host, server.port), default_noreply=False), default_timeout=TIMEOUT
    )
    prefixed = ctx.engines.cache("memcached", key_prefix="kp:")

    def driver(prefix: str, client: Any) -> _Client:
        return _Client(
            prefix,
            client.get,
            lambda k, v: client.set(k, v, expire=TIMEOUT),
            lambda *k: client.get_many(k),
            lambda mapping: client.set_many(mapping, expire=TIMEOUT),
        )

    return {
        "cacheplug": _cache_client("cp:", ours),
        "pymemcache": driver("raw:", raw),
        "cachelib": _cache_client("cl:", theirs),
        PREFIXED: _cache_client("", prefixed),
        NON_ASCII: _cache_client("cp:é", ours),
        "pymemcache" + TIMED: driver("rawt:", timed),
    }


def _measure(
    clients: dict[str, _Client], number: int, repeats: int
) -> dict[str, dict[str, Timing]]:
    payload = bytes_payload()
    for client in clients.values():
        for key in client.keys:
            client.set(key, payload)
        if client.get(client.keys[0]) != payload:
            raise AssertionError(f"{client.keys[0]!r} did not read back its payload")
    cases = {
        "get hit": {n: Case(call_loop(c.get, c.keys[0]), number) for n, c in clients.items()},
        "set": {n: Case(call_loop(c.set, c.keys[0], payload), number) for n, c in clients.items()},
        OPS[2]: {
            n: Case(call_loop(c.get_many, *c.keys), max(1, number // 10))
            for n, c in clients.items()
        },
        OPS[3]: {
            n: Case(call_loop(c.set_many, dict.fromkeys(c.keys, payload)), max(1, number // 10))
            for n, c in clients.items()
        },
    }
    return {op: compare(by_name, repeats) for op, by_name in cases.items()}


def drivers_section(ctx: Context) -> SectionResult:
    """cacheplug's engine backends against the raw drivers and cachelib, same payload."""
    section = SectionResult("drivers", "RedisCache and MemcachedCache vs raw drivers and cachelib")
    # loopback latency swings between states of the machine: many short repeats let every
    # client's minimum come from the same fast state
    repeats = ctx.scale(80, 2)
    makers = {"redis": _redis_clients, "memcached": _memcached_clients}

    def run(backend: str) -> None:
        clients = makers[backend](ctx)
        timings = _measure(clients, calls_per_repeat(ctx, backend), repeats)
        raw = list(clients)[1]
        for op, t in timings.items():
            if op not in GOALS:
                continue
            measured = t["cacheplug"].best_ns / t[raw].best_ns
            section.targets.append(
                Target(
                    f"{backend} {op} vs {raw}",
                    f"<= {GOALS[op]:.2f}x {raw}'s time",
                    fmt_ratio(measured),
                    measured <= GOALS[op],
                )
            )
        section.highlights.append(
            f"{backend}: cacheplug / {raw} "
            + ", ".join(
                f"{op} {fmt_ratio(t['cacheplug'].best_ns / t[raw].best_ns)}"
                for op, t in timings.items()
            )
        )
        section.add(f"### {backend}", "")
        section.table(
            [
                "operation",
                *clients,
                f"cacheplug/{raw}",
                f"cacheplug/{raw}{TIMED}",
                "cacheplug/cachelib",
            ],
            [
                (
                    op,
                    *(fmt_ns(t[n].best_ns) for n in clients),
                    *(
                        fmt_ratio(t["cacheplug"].best_ns / t[peer].best_ns)
                        for peer in (raw, raw + TIMED, "cachelib")
                    ),
                )
                for op, t in timings.items()
            ],
        )

    section.add(
        f"256-byte bytes payload; minimum of {repeats} interleaved repeats; one connection "
        "each, to a server on the same machine. The targets compare cacheplug without a "
        "key_prefix (set_many has none; redis-py's is a pipeline of SETs); the "
        f"`{PREFIXED}` column shows the price of one (on memcached, reads fetch the namespace "
        "token with the keys and writes check it in the same round trip). The targets' keys are "
        f"ASCII; the `{NON_ASCII}` column (keys `cp:é0`…) shows the path other keys take. The "
        "raw drivers run "
        f"as their defaults have them ({driver_defaults()}); the `…{TIMED}` columns give them "
        "the settings cacheplug uses by default (redis-py: "
        f"{DEFAULT_CONNECT_TIMEOUT:g} s to connect, {DEFAULT_SOCKET_TIMEOUT:g} s per read; "
        "pymemcache: MemcachedCache's connect_timeout and timeout, and TCP_NODELAY); a timeout "
        "costs Python a poll(2) before every read.",
        "",
    )
    per_backend(ctx, section, tuple(makers), run)
    return section
