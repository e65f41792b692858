"""Follow-up review of today's engine backend changes: what they mask stays fast on long
texts, and their new paths keep the contract."""

from __future__ import annotations

import pytest

from cacheplug import ConfigurationError, RedisCache
from cacheplug.backends._redis_clients import shown_host


def test_a_long_host_holding_a_slash_is_refused_at_once() -> None:
    # Masking "user:password@" tried its pattern at every letter, each reading to the end of
    # the text: a 100,000-character host took minutes to refuse (quadratic).
    host = "a/" * 50_000
    with pytest.raises(ConfigurationError, match="not a host name"):
        RedisCache(host=host)
    with pytest.raises(ConfigurationError, match="startup_nodes"):
        RedisCache(startup_nodes=[object(), ("b" * 100_000 + "@", 7000)])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("user:pw@host", "***@host"),
        (":pw@host/0", "***@host/0"),
        ("('user:pw@host', 6379)", "('***@host', 6379)"),
        ("ClusterNode(host='u:p@h', port=1)", "ClusterNode(host='***@h', port=1)"),
        ("a/b", "a/b"),
    ],
)
def test_a_hosts_user_info_is_still_masked(text: str, shown: str) -> None:
    assert shown_host(text) == shown
