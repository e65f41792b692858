"""URL edge cases: secrets written with the old ``;`` query separator are still secrets."""

from __future__ import annotations

import pytest

from cacheplug import from_url
from cacheplug.cli import main
from cacheplug.core.errors import ConfigurationError
from cacheplug.core.url import parse_url, redact_url

SECRET = "Zr9qK"


@pytest.mark.parametrize(
    "url",
    [
        f"simple://?bogus=1;secret={SECRET}",
        f"simple://?threshold=5;secret={SECRET}",
        f"simple://?threshold=5;password={SECRET}",
        f"simple://?threshold=5;s%65cret={SECRET}",
        f"redis://h/0?db=1;password={SECRET}",
    ],
)
def test_errors_never_show_a_secret_after_a_semicolon(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in redact_url(url)


def test_parsed_url_masks_a_value_hiding_a_secret_option() -> None:
    parsed = parse_url(f"simple://?key_prefix=app;secret={SECRET}&threshold=5;limit=2")
    assert parsed.query["key_prefix"] == f"app;secret={SECRET}"
    for text in (repr(parsed), str(parsed)):
        assert SECRET not in text
        assert "key_prefix=***" in text
        assert "threshold=5%3Blimit%3D2" in text


def test_check_never_shows_a_secret_after_a_semicolon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", f"simple://?key_prefix=app;secret={SECRET}"]) == 0
    out, err = capsys.readouterr()
    assert "all 13 methods ok" in out
    assert SECRET not in out + err


@pytest.mark.parametrize(
    "url",
    [
        f"simple://?secret=k3y#{SECRET}",
        f"simple://?secret=k3y&{SECRET}",
        f"simple://?secret=k3y&{SECRET}&threshold=5",
        f"redis://h/0?password=p#{SECRET}&db=1",
        f"simple://?threshold=5#secret={SECRET}",
    ],
)
def test_errors_never_show_the_tail_of_a_secret_holding_a_raw_hash_or_ampersand(
    url: str,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://[::1]:6380/2", "RedisCache([::1]:6380/2,"),
        (
            "redis+cluster://[::1]:7000,[fe80::1%25eth0]:7001",
            "cluster [::1]:7000,[fe80::1%eth0]:7001,",
        ),
        ("memcached://[::1]:11211,10.0.0.1", "servers=[[::1]:11211, 10.0.0.1:11211]"),
    ],
)
def test_an_ipv6_server_is_shown_in_brackets(url: str, shown: str) -> None:
    # "::1:6380" cannot be read back: is 6380 the port or the address's last group?
    assert shown in repr(from_url(url))
