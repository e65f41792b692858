"""Second read of session 18's changes, against real servers: each test marked xfail is a
defect the change introduced or left (fixes: /tmp/s18/session-fixes.patch)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import address
from test_memcached_multi import KEYS, three, unread_bytes
from waiting import paused_process, wait_until

from cacheplug import MemcachedCache

__all__ = ["three"]  # the fixture, imported for pytest


@pytest.mark.parametrize("reassigned", [False, True])
def test_a_prefixed_batch_reaches_every_server_before_tokens_are_known(
    three: list[MemcachedServer], reassigned: bool
) -> None:
    cache = MemcachedCache([address(s) for s in three], key_prefix="p:", timeout=10)
    if reassigned:  # every token known, then forgotten with the old prefix
        assert cache.set_many(dict.fromkeys(KEYS, 1)) == KEYS
        cache.key_prefix = "q:"
    first, second = three[0], three[1]
    assert first.pid is not None and second.pid is not None
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.append(cache.get_many(*KEYS)), daemon=True)
    try:
        with paused_process(first.pid), paused_process(second.pid):
            worker.start()
            # the second paused server must get its request while the batch waits on the first
            wait_until(lambda: unread_bytes(first.port) and unread_bytes(second.port), timeout=3)
    finally:
        if worker.ident is not None:
            worker.join(timeout=25)
    assert not worker.is_alive()
    assert answers == [[None] * len(KEYS)]
    assert cache.stats()["errors"] == 0
