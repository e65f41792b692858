"""Secrets a review found shown: argparse's own errors, misspelt secret options, credentials
whose ``@host`` was forgotten, the CLI's scrubbing of short passwords, and from_env blaming
the environment variable for a keyword's mistake."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from cacheplug import ConfigurationError, from_env, from_url
from cacheplug.cli import main
from cacheplug.core.url import is_secret_option, parse_url, redact_url

if TYPE_CHECKING:
    from servers import RedisServer

SECRET = "Zr9qK"  # distinctive, so a leak of any part of a URL's secrets is found
FROM_ENV = "(from environment variable CACHE_URL)"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The last line ``cacheplug argv...`` prints when argparse refuses the command line."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err.strip().splitlines()[-1]


# -- the command line's own errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (  # the command forgotten
            [f"redis://:{SECRET}@cache:6379/0"],
            "cacheplug: error: argument COMMAND: invalid choice: 'redis://:***@cache:6379/0' "
            "(choose from demo, check, plugins)",
        ),
        (  # a second URL
            ["check", "simple://", f"redis://ada:{SECRET}@cache/0"],
            "cacheplug: error: unrecognized arguments: redis://ada:***@cache/0",
        ),
        (
            ["demo", f"redis://:{SECRET}@cache/0", f"rediss://:{SECRET}@cache2/0?secret={SECRET}"],
            "cacheplug: error: unrecognized arguments: rediss://:***@cache2/0?secret=***",
        ),
        (  # a URL where a number goes, also as --option=value
            ["demo", "--keys", f"redis://:{SECRET}@cache/0"],
            "cacheplug demo: error: argument --keys: must be a whole number, "
            "got 'redis://:***@cache/0'",
        ),
        (
            ["demo", f"--delay-ms=memcached://cache?secret={SECRET}"],
            "cacheplug demo: error: argument --delay-ms: must be a number of ms, "
            "got 'memcached://cache?secret=***'",
        ),
        (  # a space or both quotes in the password: masked whole all the same
            ["check", "simple://", f"redis://:a {SECRET}@cache/0"],
            "cacheplug: error: unrecognized arguments: redis://:***@cache/0",
        ),
        (
            ["demo", "--rounds", f"redis://:'\"{SECRET}@cache/0"],
            "cacheplug demo: error: argument --rounds: must be a whole number, "
            "got 'redis://:***@cache/0'",
        ),
    ],
)
def test_command_line_errors_never_echo_a_password(
    capsys: pytest.CaptureFixture[str], argv: list[str], shown: str
) -> None:
    assert usage_error(capsys, *argv) == shown


def test_the_installed_command_masks_a_url_given_without_its_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cacheplug", f"redis://:{SECRET}@cache:6379/0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert "invalid choice: 'redis://:***@cache:6379/0'" in result.stderr


# -- unknown options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://cache:6379/0?pasword={SECRET}", "redis://cache:6379/0?pasword=***"),
        (f"simple://?secert={SECRET}", "simple://?secert=***"),
        (f"rediss://cache/0?ssl_passphrase={SECRET}", "rediss://cache/0?ssl_passphrase=***"),
        (f"redis://cache/0?db=1&pass={SECRET}", "redis://cache/0?db=1&pass=***"),
        (f"simple://?threshold=5&pw={SECRET}", "simple://?threshold=5&pw=***"),
    ],
)
def test_an_unknown_options_value_is_never_shown(url: str, masked: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as raised:
        from_url(url)
    assert f"in {masked!r}; accepted options:" in str(raised.value)
    parsed = parse_url(url)
    for text in (str(raised.value), redact_url(url), repr(parsed), str(parsed)):
        assert SECRET not in text
    assert redact_url(url) == masked
    assert repr(parsed) == f"CacheURL({masked!r})"


def test_check_never_shows_a_misspelt_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", f"redis://cache/0?pasword={SECRET}"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "unknown option 'pasword'" in err
    assert "'redis://cache/0?pasword=***'" in err
    assert "did you mean 'password'?" in err


def test_misspelt_secret_options_are_masked_and_unknown_ones_in_their_error() -> None:
    """A name near a secret word is secret; any unknown option's value is masked in its error."""
    for name in ("pasword", "secert", "pass", "ssl_passphrase", "ssl_pasword", "tokn", "db_pw"):
        assert is_secret_option(name), name
    for name in ("treshold", "x", "threshold", "db", "socket_timeout", "mode", "key_prefix"):
        assert not is_secret_option(name), name
    with pytest.raises(ConfigurationError) as raised:
        from_url("simple://?db=1&foo=2")
    assert "'simple://?db=***&foo=2'" in str(raised.value)  # db is the unknown one here
    assert redact_url("simple://?treshold=5&pasword=x") == "simple://?treshold=5&pasword=***"


# -- credentials without '@host' ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"redis://:{SECRET}",
            "malformed host ':***' in cache URL 'redis://:***': expected 'host', 'host:port' "
            "or '[ipv6]:port', several separated by commas; a password goes before the host: "
            "'user:password@host'",
        ),
        (
            f"redis://default:{SECRET}/0",
            "invalid port '***' in cache URL 'redis://default:***/0': expected a number from 1 "
            "to 65535; a password goes before the host: 'user:password@host'",
        ),
        (
            f"rediss://app:{SECRET}?ssl_cert_reqs=none",
            "invalid port '***' in cache URL 'rediss://app:***?ssl_cert_reqs=none': expected a "
            "number from 1 to 65535; a password goes before the host: 'user:password@host'",
        ),
        (
            f"memcached://a:11211,b:{SECRET}",
            "invalid port '***' in cache URL 'memcached://a:11211,b:***': expected a number "
            "from 1 to 65535; a password goes before the host: 'user:password@host'",
        ),
        (
            f"redis://:1{SECRET}/0",
            "malformed host ':***' in cache URL 'redis://:***/0': expected 'host', 'host:port' "
            "or '[ipv6]:port', several separated by commas; a password goes before the host: "
            "'user:password@host'",
        ),
    ],
)
def test_a_password_without_its_host_is_never_shown(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_url(url)
    assert str(raised.value) == message
    assert SECRET not in redact_url(url)


def test_a_port_that_is_a_port_is_still_shown() -> None:
    """Masking stops at what may be a password: a number, or an '@' before the host."""
    for url, shown in (
        ("redis://h:99999", "invalid port '99999' in cache URL 'redis://h:99999'"),
        ("redis://:pw@h:sixty/0", "invalid port 'sixty' in cache URL 'redis://:***@h:sixty/0'"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            from_url(url)
        assert str(raised.value).startswith(shown)
    assert redact_url(f"redis://h:oops{SECRET}") == "redis://h:***"


def test_check_never_shows_a_password_without_its_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", f"redis://:{SECRET}"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "malformed host ':***' in cache URL 'redis://:***'" in err


# -- the CLI's scrubbing -----------------------------------------------------------------------


def test_a_short_password_leaves_the_printed_cache_readable(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """'1' is in 127.0.0.1, 'dis' in RedisCache, '0' in 300: masking them there showed them."""
    where = f"{redis_server.host}:{redis_server.port}"
    assert main(["check", f"redis://:1@{where}/0"]) == 0  # no requirepass: any password does
    out, _ = capsys.readouterr()
    assert out.startswith(f"checking redis://:***@{where}/0 (RedisCache({where}/0, ")

    demo = ["demo", "--keys", "2", "--rounds", "2", "--delay-ms", "0", f"redis://:1@{where}/0"]
    assert main(demo) == 0
    out, _ = capsys.readouterr()
    assert f"cache:      RedisCache({where}/0, default_timeout=300, key_prefix=''" in out

    port = closed_port()
    assert main(["check", f"redis://:dis@127.0.0.1:{port}/0"]) == 1
    out, err = capsys.readouterr()
    assert f"(RedisCache(127.0.0.1:{port}/0, default_timeout=300" in out + err
    assert f"the error: ConnectionError: Error 111 connecting to 127.0.0.1:{port}." in err

    assert main(["check", f"memcached://127.0.0.1:{port}?secret=0"]) == 1
    out, err = capsys.readouterr()
    assert "default_timeout=300, " in out
    assert f"servers=[127.0.0.1:{port}]" in out


def test_redact_text_masks_each_url_in_a_message() -> None:
    from cacheplug.core.url import redact_text

    text = (
        f"Error connecting to redis://ada:{SECRET}@h:6379/0. Retried 'rediss://:{SECRET}@h2/0' "
        f'and "memcached://h?secret={SECRET}&timeout=1" from 127.0.0.1, then redis://:{SECRET}'
    )
    assert redact_text(text) == (
        "Error connecting to redis://ada:***@h:6379/0. Retried 'rediss://:***@h2/0' "
        'and "memcached://h?secret=***&timeout=1" from 127.0.0.1, then redis://:***'
    )


# -- from_env --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"threshold": "lots"}, {"serializer": "yaml"}, {"treshold": 5}, {"default_timeout": "soon"}],
)
def test_from_env_blames_the_variable_only_for_the_url(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    monkeypatch.setenv("CACHE_URL", "simple://")
    with pytest.raises(ConfigurationError) as raised:
        from_env(**overrides)
    assert FROM_ENV not in str(raised.value)
    assert next(iter(overrides)) in str(raised.value)
    # the URL at fault is blamed, keywords or not
    monkeypatch.setenv("CACHE_URL", f"simple://?treshold={SECRET}")
    with pytest.raises(ConfigurationError) as raised:
        from_env(**overrides)
    assert str(raised.value).endswith(FROM_ENV)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["redis:///:Zq9SECRETx@127.0.0.1:6379/0", "rediss:///ada:Zq9SECRETx@cache/0"]
)
def test_user_info_after_a_slash_too_many_is_not_shown(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authority is empty, so ':password@host' reads as the path, which the error quoted."""
    with pytest.raises(ConfigurationError, match="user-info goes right after '//'") as raised:
        from_url(url)
    assert "SECRET" not in str(raised.value)
    assert main(["check", url]) == 2
    out, err = capsys.readouterr()
    assert "SECRET" not in out + err
