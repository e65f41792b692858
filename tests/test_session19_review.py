"""Second read of session 19's changes: what the review found, each proven against real servers."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterator

import pytest
from servers import MemcachedServer
from test_memcached_leftovers import TricklingRelay
from test_memcached_multi import cacheplug_lines

from cacheplug import MemcachedCache

# -- a reply that trickles in whole records ------------------------------------------------------

#: Where a reply may be cut so that each piece is whole lines, a value's header with its data.
_UNITS = re.compile(rb"(?<=\r\n)(?=VALUE |END\r\n|STORED\r\n|DELETED\r\n|NOT_FOUND\r\n)")


class RecordTricklingRelay(TricklingRelay):
    """A relay that, once told to, passes each reply a whole record (a reply line, a value with
    its header) every ``interval`` seconds: every read finds whole records, never a cut one."""

    def _pass(self, client: socket.socket, data: bytes) -> None:
        if not self.trickle:
            client.sendall(data)
            return
        for number, piece in enumerate(_UNITS.split(data)):
            if number and self.stopped.wait(self._interval):
                return
            client.sendall(piece)


TIMEOUT = 0.5
INTERVAL = 0.1  # each record well within TIMEOUT; 12 of them over twice TIMEOUT
KEYS = [f"r{i}" for i in range(12)]
#: Calls whose reply is 12 or more records, and their outage answer.
RECORDS: dict[str, tuple[Callable[[MemcachedCache], object], object]] = {
    "get_many": (lambda cache: cache.get_many(*KEYS), [None] * len(KEYS)),
    "set_many": (lambda cache: cache.set_many(dict.fromkeys(KEYS, "w")), []),
    "delete_many": (lambda cache: cache.delete_many(*KEYS), []),
}


@pytest.fixture
def record_relay(memcached_server: MemcachedServer) -> Iterator[RecordTricklingRelay]:
    made = RecordTricklingRelay(memcached_server.address, INTERVAL)
    yield made
    made.stopped.set()
    made.close()


@pytest.mark.parametrize("call", list(RECORDS))
@pytest.mark.parametrize("key_prefix", ["", "t:"])
def test_a_reply_that_trickles_in_whole_records_fails_the_call_as_a_timeout(
    record_relay: RecordTricklingRelay, caplog: pytest.LogCaptureFixture, call: str, key_prefix: str
) -> None:
    cache = MemcachedCache(
        [f"127.0.0.1:{record_relay.port}"], key_prefix=key_prefix, timeout=TIMEOUT, dead_timeout=0
    )
    assert cache.set_many(dict.fromkeys(KEYS, "v")) == KEYS  # connected, the token known
    record_relay.trickle = True
    run, outage = RECORDS[call]
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer = run(cache)
    record_relay.stopped.set()
    assert answer == outage
    assert cache.stats()["errors"] == 1
    (line,) = cacheplug_lines(caplog)
    assert "timed out" in line
