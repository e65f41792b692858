"""MemcachedCache over three real servers, as operators run it: one server stopped, killed
mid-batch, restarted empty or never answering; where keys live when processes list the servers
differently, and how many move when a server is added."""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from interpreter import run_python
from servers import MemcachedServer
from test_memcached import accepted_connections, address, raw_client
from waiting import paused_process, process_state, wait_until

from cacheplug import MemcachedCache
from cacheplug.backends import _memcached_counter_wire as counter_wire
from cacheplug.backends import _memcached_wire as wire

PREFIXES = ["", "m:"]
KEYS = [f"key{i}" for i in range(60)]  # enough that each of three servers holds some
ITEM_LIMIT = 1024 * 1024  # memcached's default item size limit (-I 1m)


@pytest.fixture
def three() -> Iterator[list[MemcachedServer]]:
    """Three memcached servers of the test's own, free to be stopped, killed or restarted."""
    servers: list[MemcachedServer] = []
    try:
        for _ in range(3):
            servers.append(MemcachedServer().start())
        yield servers
    finally:
        for server in servers:
            server.kill()
            server.stop()


def owners(servers: list[MemcachedServer], names: list[str]) -> dict[str, int]:
    """The port of the server holding each of ``names`` (as stored: no prefix), read raw;
    fails when one is on none or on several."""
    found: dict[str, list[int]] = {name: [] for name in names}
    for server in servers:
        for name in raw_client(server).get_many(names):
            found[name.decode() if isinstance(name, bytes) else name].append(server.port)
    assert all(len(ports) == 1 for ports in found.values()), found
    return {name: ports[0] for name, ports in found.items()}


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[int]:
    """Requests the wire modules send, by server port: each is one round trip (a batch of
    writes, a ``get`` of many keys, a ``has``, an ``incr``, each with its token read back)."""
    counted: collections.Counter[int] = collections.Counter()
    send = wire.send_request

    def counting(sock: Any, data: bytes) -> None:
        try:
            counted[sock.getpeername()[1]] += 1
        except OSError:
            counted[0] += 1  # a connection the server already reset
        send(sock, data)

    # each module that sends looks the function up in its own namespace
    for module in (wire, counter_wire):
        monkeypatch.setattr(module, "send_request", counting)
    return counted


def cacheplug_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "cacheplug"]


def stop_gracefully(server: MemcachedServer) -> None:
    """SIGTERM, as a service manager stops memcached; ``restart()`` brings it back."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGTERM)
    wait_until(lambda: not server.running, timeout=10)


def trips(sends: collections.Counter[int], call: Callable[[], Any]) -> tuple[Any, dict[int, int]]:
    """What ``call()`` answers, and the round trips it made, by server port."""
    before = sends.copy()
    answer = call()
    return answer, dict(sends - before)


def stored_keys(
    servers: list[MemcachedServer], key_prefix: str, keys: list[str] = KEYS
) -> list[str]:
    """The ``keys`` a fresh cache of ``servers`` can store now: those of the servers that
    answer."""
    with MemcachedCache([address(s) for s in servers], key_prefix=key_prefix) as probe:
        return probe.set_many(dict.fromkeys(keys, "probe"))


# -- one server of three down ----------------------------------------------------------------------


@pytest.mark.parametrize("down", [MemcachedServer.kill, stop_gracefully], ids=["kill", "stop"])
@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_one_server_down_every_batch_call_answers_for_the_other_two_then_recovers(
    three: list[MemcachedServer],
    sends: collections.Counter[int],
    caplog: pytest.LogCaptureFixture,
    key_prefix: str,
    down: Callable[[MemcachedServer], None],
) -> None:
    cache = MemcachedCache([address(s) for s in three], key_prefix=key_prefix, dead_timeout=0.05)
    assert cache.set_many(dict.fromkeys(KEYS, 1)) == KEYS
    counters = [f"n{i}" for i in range(40)]  # some on every server
    assert [cache.inc(name, 10) for name in counters] == [10] * len(counters)
    victim = three[1]
    down(victim)
    held = cache.get_many(*KEYS)  # the first call meets the outage and logs it
    live = [key for key, value in zip(KEYS, held, strict=True) if value == 1]
    assert held == [1 if key in live else None for key in KEYS]
    assert 0 < len(live) < len(KEYS)  # every server holds some keys
    others = {server.port: 1 for server in three if server is not victim}
    errors = cache.stats()["errors"]
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert trips(sends, lambda: cache.get_many(*KEYS)) == (held, others)
        got = trips(sends, lambda: cache.get_dict(*KEYS))
        assert got == (dict(zip(KEYS, held, strict=True)), others)
        assert trips(sends, lambda: cache.set_many(dict.fromkeys(KEYS, 2))) == (live, others)
        has, made = trips(sends, lambda: [cache.has(key) for key in KEYS])
        assert has == [key in live for key in KEYS]
        assert victim.port not in made  # without a prefix, has goes through pymemcache
        counted = [cache.inc(name) for name in counters]
        assert None in counted and set(counted) <= {None, 11}
        back = [cache.dec(name) for name in counters]
        assert back == [None if n is None else 10 for n in counted]
        assert trips(sends, lambda: cache.delete_many(*KEYS)) == (live, others)
        assert cache.clear() is False  # the dead server's namespace or entries stay
        assert cache.get_many(*live) == [None] * len(live)
    assert len(cacheplug_lines(caplog)) == 1  # the first failure's: the rest rate-limited
    assert cache.stats()["errors"] > errors  # and every failure is counted
    victim.restart()  # empty
    wait_until(lambda: cache.set_many(dict.fromkeys(KEYS, 3)) == KEYS, timeout=5)
    assert cache.get_many(*KEYS) == [3] * len(KEYS)
    assert [cache.inc(name) for name in counters] == [1] * len(counters)  # cleared, or lost
    assert cache.clear() is True
    assert cache.get_many(*KEYS) == [None] * len(KEYS)


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_the_log_line_of_an_outage_names_the_server_that_failed(
    three: list[MemcachedServer], caplog: pytest.LogCaptureFixture, key_prefix: str
) -> None:
    cache = MemcachedCache([address(s) for s in three], key_prefix=key_prefix)
    assert cache.set_many(dict.fromkeys(KEYS, 1)) == KEYS
    three[2].kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert None in cache.get_many(*KEYS)
    (line,) = cacheplug_lines(caplog)
    assert address(three[2]) in line
    assert all(address(server) not in line for server in three[:2])


# -- killed mid-batch ------------------------------------------------------------------------------


def unread_bytes(port: int) -> bool:
    """Whether a connection of the local server on ``port`` holds bytes it has not read."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(
        row[1].endswith(f":{port:04X}") and row[3] == "01" and int(row[4].split(":")[1], 16) > 0
        for row in rows
    )


BATCHES: dict[str, Callable[[MemcachedCache], Any]] = {
    "get_many": lambda cache: cache.get_many(*KEYS),
    "set_many": lambda cache: cache.set_many(dict.fromkeys(KEYS, 2)),
    "delete_many": lambda cache: cache.delete_many(*KEYS),
}


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_server_killed_while_a_batch_waits_on_it_fails_only_its_keys(
    three: list[MemcachedServer], key_prefix: str, batch: str
) -> None:
    cache = MemcachedCache([address(s) for s in three], key_prefix=key_prefix, timeout=5)
    assert cache.set_many(dict.fromkeys(KEYS, 1)) == KEYS
    victim = three[0]
    answers: list[Any] = []
    pid = victim.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: process_state(pid) == "T", timeout=5)
    worker = threading.Thread(target=lambda: answers.append(BATCHES[batch](cache)))
    worker.start()
    try:
        wait_until(lambda: unread_bytes(victim.port), timeout=5)  # the batch reached it
    finally:
        victim.kill()  # SIGKILL ends a stopped process too
        worker.join(timeout=10)
    assert not worker.is_alive()
    live = stored_keys(three, key_prefix)
    assert 0 < len(live) < len(KEYS)
    expected = [1 if key in live else None for key in KEYS] if batch == "get_many" else live
    assert answers == [expected]
    assert cache.stats()["errors"] == 1


# -- restarted empty -----------------------------------------------------------------------------


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_server_restarted_empty_loses_only_its_keys_and_costs_no_failure(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    """With a prefix, its namespace token is lost with it: two cache objects that both knew
    the old one agree on the new one."""
    servers = [address(s) for s in three]
    with (
        MemcachedCache(servers, key_prefix=key_prefix) as writer,
        MemcachedCache(servers, key_prefix=key_prefix) as reader,
    ):
        assert writer.set_many(dict.fromkeys(KEYS, 1)) == KEYS
        assert reader.get_many(*KEYS) == [1] * len(KEYS)  # both know every token
        assert writer.inc("count", 5) == 5
        three[2].restart()
        held = reader.get_many(*KEYS)
        assert 0 < held.count(None) < len(KEYS) and set(held) == {1, None}
        assert writer.delete_many(*KEYS) == [k for k, v in zip(KEYS, held, strict=True) if v]
        assert writer.set_many(dict.fromkeys(KEYS, 2)) == KEYS
        assert reader.get_many(*KEYS) == [2] * len(KEYS)
        assert [reader.has(key) for key in KEYS] == [True] * len(KEYS)
        assert reader.inc("count") in (6, 1)  # on a live server, or counted anew
        assert writer.get("count") == reader.get("count")
        assert reader.clear() is True
        assert writer.get_many(*KEYS) == [None] * len(KEYS)
        assert writer.stats()["errors"] == reader.stats()["errors"] == 0


# -- never answering -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_server_that_never_answers_costs_one_timeout_then_is_skipped(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    with socket.socket() as silent:  # accepts connections in the kernel, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        host, port = silent.getsockname()
        servers = [address(three[0]), address(three[1]), f"{host}:{port}"]
        cache = MemcachedCache(servers, key_prefix=key_prefix, timeout=0.2, dead_timeout=30)
        stored = cache.set_many(dict.fromkeys(KEYS, 1))  # the one timeout
        assert 0 < len(stored) < len(KEYS)
        held = [1 if key in stored else None for key in KEYS]
        assert cache.get_many(*KEYS) == held
        assert cache.get_dict(*KEYS) == dict(zip(KEYS, held, strict=True))
        assert [cache.has(key) for key in KEYS] == [key in stored for key in KEYS]
        assert [cache.inc(key) is None for key in KEYS] == [key not in stored for key in KEYS]
        assert cache.delete_many(*KEYS) == stored
        assert cache.clear() is False
        silent.setblocking(False)
        assert len(accepted_connections(silent)) == 1  # only the first call tried it


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_clear_that_missed_a_hung_server_leaves_its_entries_to_come_back(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    """What docs/backends.md should say: clear answers False, and the server it could not
    reach serves its old entries again once it answers (nothing replays the clear)."""
    cache = MemcachedCache(
        [address(s) for s in three], key_prefix=key_prefix, timeout=0.2, dead_timeout=3
    )
    assert cache.set_many(dict.fromkeys(KEYS, "old")) == KEYS
    hung = three[1]
    assert hung.pid is not None
    with paused_process(hung.pid):
        held = cache.get_many(*KEYS)  # one timeout: the server is skipped for dead_timeout
        assert cache.clear() is False  # not sent to the skipped server
    missed = [key for key, value in zip(KEYS, held, strict=True) if value is None]
    assert 0 < len(missed) < len(KEYS)
    back = [("old" if key in missed else None) for key in KEYS]
    wait_until(lambda: cache.get_many(*KEYS) == back, timeout=15)


# -- where keys live -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_processes_listing_the_servers_in_another_order_agree_where_keys_live(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    """Placement hashes each server's name, not its position: another process (another hash
    seed) listing the same servers in another order, by URL, finds every key."""
    backwards = ",".join(address(server) for server in reversed(three))
    run_python(
        "from cacheplug import from_url\n"
        f"cache = from_url('memcached://{backwards}', key_prefix={key_prefix!r})\n"
        f"keys = {KEYS!r}\n"
        "assert cache.set_many({key: key.upper() for key in keys}) == keys\n",
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    cache = MemcachedCache([address(server) for server in three], key_prefix=key_prefix)
    assert cache.get_many(*KEYS) == [key.upper() for key in KEYS]
    if not key_prefix:
        assert len(set(owners(three, KEYS).values())) == 3  # each key on one server, all used


def test_a_server_named_by_host_name_in_one_process_and_ip_in_another_splits_the_keys(
    three: list[MemcachedServer],
) -> None:
    """What docs/backends.md should say: placement follows the names as written, so every
    client must list the same names (the order does not matter)."""
    by_ip = MemcachedCache([address(server) for server in three])
    by_name = MemcachedCache([f"localhost:{three[0].port}", address(three[1]), address(three[2])])
    assert by_ip.set_many(dict.fromkeys(KEYS, "ip")) == KEYS
    seen = by_name.get_many(*KEYS)
    assert by_name.stats()["errors"] == 0  # the same three servers answered
    assert 0 < seen.count(None) < len(KEYS)  # but some keys are looked for elsewhere
    # a write by one is then not seen by the other: each reads its own copy
    missed = [key for key, value in zip(KEYS, seen, strict=True) if value is None]
    assert by_name.set_many(dict.fromkeys(missed, "name")) == missed
    assert by_ip.get_many(*missed) == ["ip"] * len(missed)


def test_a_server_written_in_other_letter_case_is_the_same_server(
    three: list[MemcachedServer],
) -> None:
    """Host names are told apart as DNS does, whatever their letter case: a client writing
    ``LocalHost`` finds every key another wrote through ``localhost``, and a server listed
    twice in two spellings is one server (its keys not split between two of them)."""
    lower = MemcachedCache([f"localhost:{server.port}" for server in three])
    mixed = MemcachedCache([f"LocalHost:{server.port}" for server in reversed(three)])
    assert lower.set_many(dict.fromkeys(KEYS, "lower")) == KEYS
    assert mixed.get_many(*KEYS) == ["lower"] * len(KEYS)
    assert mixed.stats()["errors"] == 0
    port = three[0].port
    twice = MemcachedCache([f"localhost:{port}", f"LOCALHOST:{port}", f"localhost:{port}"])
    assert [server.name for server in twice._servers] == [f"localhost:{port}"]  # as first written
    assert twice.set("only", 1) and owners(three, ["only"]) == {"only": port}


@pytest.mark.parametrize(
    ("spellings", "identity"),
    [
        (["[::1]:11211", "[0:0:0:0:0:0:0:1]:11211", ("::1", 11211), "[0::0:1]"], "[::1]:11211"),
        (["[2001:DB8::A]:1", ("2001:db8:0::a", 1)], "[2001:db8::a]:1"),
        (["Cache.Example.COM:1", ("cache.example.com", 1)], "cache.example.com:1"),
        (["BÜCHER.example:1", "bücher.example:1"], "xn--bcher-kva.example:1"),
    ],
)
def test_one_server_spelled_several_ways_is_one_server_placing_keys_alike(
    spellings: list[Any], identity: str
) -> None:
    """What placement hashes: host names in lower case (a non-ASCII one as the resolver
    looks it up), IP addresses in their standard spelling. Nothing connects here."""
    listed = MemcachedCache(spellings)
    assert [server.identity for server in listed._servers] == [identity]
    for spelling in spellings:
        alone = MemcachedCache([spelling])
        assert alone._servers[0].identity == identity


def test_servers_written_in_standard_spelling_keep_their_placement() -> None:
    """An upgrade moves no key of servers written as before: lower-case names, dotted IPv4
    and standard IPv6 hash to what their names as written did."""
    servers = ["10.0.0.1:11211", "cache-b:11211", "[2001:db8::1]:11211", "/run/mc.sock"]
    cache = MemcachedCache(servers)
    assert [server.identity for server in cache._servers] == servers
    assert [server.name for server in cache._servers] == servers


def test_adding_a_fourth_server_moves_about_a_quarter_of_the_keys_all_onto_it(
    three: list[MemcachedServer],
) -> None:
    keys = [f"spread{i}" for i in range(3000)]
    with MemcachedServer() as fourth:
        before = MemcachedCache([address(server) for server in three])
        after = MemcachedCache([address(server) for server in [*three, fourth]])
        assert before.set_many(dict.fromkeys(keys, 1)) == keys
        seen = after.get_many(*keys)
        moved = [key for key, value in zip(keys, seen, strict=True) if value is None]
        # 1/4 expected; 300 random port sets gave 0.20 to 0.32 for these keys
        assert 0.12 < len(moved) / len(keys) < 0.40
        for server in three:
            server.flush()  # what follows reads where the four-server cache puts each key
        assert after.set_many(dict.fromkeys(keys, 2)) == keys
        assert sorted(raw_client(fourth).get_many(keys)) == sorted(moved)  # all onto it
        # and taking a server out moves only its own keys
        without = MemcachedCache([address(server) for server in [three[1], three[2], fourth]])
        held = without.get_many(*keys)
        on_first = set(raw_client(three[0]).get_many(keys))
        assert [key for key, v in zip(keys, held, strict=True) if v is None] == [
            key for key in keys if key in on_first
        ]
        fourth.kill()


@pytest.mark.parametrize("key_prefix", ["", "app:"])
def test_keys_near_the_250_byte_limit_spread_over_three_servers(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    """Under a prefix, memcached's key is ``<prefix><12-character token>:<key>``: the keys
    here make names of 246 to 254 bytes."""
    room = 250 - (len(key_prefix) + 13 if key_prefix else 0)
    keys = [f"{i:02d}" + "k" * (room + i % 9 - 4 - 2) for i in range(45)]
    assert {len(key) for key in keys} == set(range(room - 4, room + 5))
    servers = [address(server) for server in three]
    with (
        MemcachedCache(servers, key_prefix=key_prefix) as cache,
        MemcachedCache(servers, key_prefix=key_prefix) as other,
    ):
        assert cache.set_many({key: len(key) for key in keys}) == keys
        assert other.get_many(*keys) == [len(key) for key in keys]
        assert all(other.has(key) for key in keys)
        assert [other.inc(key) for key in keys[:9]] == [len(key) + 1 for key in keys[:9]]
        assert cache.delete_many(*keys) == keys
        assert cache.stats()["errors"] == other.stats()["errors"] == 0  # every name taken
    token = 1 if key_prefix else 0  # a namespace token is an item too
    assert all(int(raw_client(s).stats()[b"total_items"]) > token for s in three)  # spread


def test_values_near_the_item_size_limit_while_another_server_is_down(
    three: list[MemcachedServer], caplog: pytest.LogCaptureFixture
) -> None:
    cache = MemcachedCache([address(server) for server in three], dead_timeout=30)
    three[0].kill()
    # placement follows the servers' random ports: nine keys all miss the dead one in one run
    # of ~40 ((2/3) ** 9), so six live and three dead are chosen from sixty
    pool = [f"big{i}" for i in range(60)]
    on_live = stored_keys(three, "", pool)
    chosen = set(on_live[:6] + [key for key in pool if key not in on_live][:3])
    keys = [key for key in pool if key in chosen]
    live = stored_keys(three, "", keys)
    assert len(live) == 6 and len(keys) == 9
    big = b"x" * (ITEM_LIMIT - 2048)
    values: dict[str, Any] = dict.fromkeys(keys, big)
    too_large = next(f"huge{i}" for i in range(100) if stored_keys(three, "", [f"huge{i}"]))
    values[too_large] = b"x" * ITEM_LIMIT  # on a live server, over its limit
    caplog.clear()  # the probes' lines
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.set_many(values) == live
    assert cache.get_many(*keys, too_large) == [big if key in live else None for key in keys] + [
        None
    ]
    lines = cacheplug_lines(caplog)
    assert len(lines) == 1 and "set_many failed" in lines[0]  # the refusal's is held back
    # the dead server in set_many and get_many, the refused value
    assert cache.stats()["errors"] == 3
