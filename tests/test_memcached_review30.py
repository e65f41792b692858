"""MemcachedCache where it differed from cachelib's ``MemcachedCache``, found in review 30."""

from __future__ import annotations

import cachelib
import pytest
from servers import MemcachedServer
from test_memcached import address

from cacheplug import MemcachedCache


@pytest.mark.parametrize("check", [False, True])
def test_check_connection_is_kept_as_an_attribute_as_cachelib_keeps_it(
    memcached_server: MemcachedServer, check: bool
) -> None:
    servers = [address(memcached_server)]
    ours = MemcachedCache(servers, check_connection=check)
    theirs = cachelib.MemcachedCache(servers, check_connection=check)
    assert ours.check_connection is theirs.check_connection is check
    assert MemcachedCache(servers).check_connection is False
