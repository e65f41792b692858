"""Security, as a user deploys cacheplug (docs/security.md): secrets never shown, anywhere an
error or a log line can carry them; a signed cache never decodes a payload that does not verify
for its secret and serializer, on every store and every reading method; the cache directory's
files and links; memoize keys of different calls never meet.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pathlib
import pickle
import traceback
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from servers import RedisServer

from cacheplug import (
    ConfigurationError,
    PluginError,
    RedisCache,
    SimpleCache,
    from_url,
)
from cacheplug.cli import main

SECRET = "Zr9qK"  # distinctive: any piece of a URL's secrets in a text is found
SIGNING_KEY = "k3y-of-the-service"
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "security.md"


def every_text(err: BaseException) -> str:
    """What an error can show: message, repr and args of it and of every error chained to it
    (as cause or context, shown or not), and its formatted traceback."""
    texts = ["".join(traceback.format_exception(err))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        stack += [current.__cause__, current.__context__]
    return "\n".join(texts)


# -- secrets in URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"simple://?secret=k3y&{SECRET}",  # a raw '&' in a secret: urllib's error showed the tail
        f"simple://?secret=k3y&{SECRET}&threshold=5",
        f"simple://?threshold=5;secret={SECRET}",  # int() of the value, kept as context
        f"simple://?default_timeout=1;secret={SECRET}",  # float() of the value, as context
        f"redis://h/0?db=1;password={SECRET}",
        f"redis://ada:{SECRET}@h:port/0",
        f"redis://ada:{SECRET}#x@h/0",
        f"redis://ada:{SECRET}?x@h/0",
        f"redis://ada:{SECRET}/x@h/0",
        f"redis://ada:{SECRET}@[::1/0",
        f"redis://:{SECRET}@h:99999/0",
        f"redis://u:{SECRET}@h/x",
        f"redis://u:{SECRET}@h,g/0",
        f"rediss://u:{SECRET}@h/0?ssl=false",
        f"redis+cluster://u:{SECRET}@h:1/3",
        f"redis+unix://u:{SECRET}@/",
        f"memcached://u:{SECRET}@h",
        f"file://:{SECRET}@/tmp/x",
        f"null://:{SECRET}@",
        f"redis://h/0?ssl_password={SECRET}&ssl_cert_reqs=bad",
        f"redis://h/0?password={SECRET}&password=x",
        f"redis://:{SECRET}@h/0?bogus=1",
        f"reddis://ada:{SECRET}@h/0",
        f"simple://?secret={SECRET}&serializer=yaml",
        f"simple://?secret={SECRET}&threshold=-1",
    ],
)
def test_url_errors_never_show_a_secret_in_their_chain_or_traceback(url: str) -> None:
    with pytest.raises((ConfigurationError, PluginError)) as info:
        from_url(url)
    assert SECRET not in every_text(info.value)


PASSWORD = "p@ss:w/rd?#%" + SECRET  # every character a URL gives a meaning


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


def redis_url(server: RedisServer, password: str, query: str = "") -> str:
    return f"redis://ada:{quote(password, safe='')}@{server.host}:{server.port}/0{query}"


def test_a_percent_encoded_password_with_url_characters_logs_in(locked_redis: RedisServer) -> None:
    # requirepass is the default user's password; a user name picks an ACL user instead
    url = f"redis://:{quote(PASSWORD, safe='')}@{locked_redis.host}:{locked_redis.port}/0"
    with from_url(url) as cache:
        assert cache.set("k", "v") is True
        assert cache.get("k") == "v"
        assert PASSWORD not in repr(cache) and SECRET not in str(cache)


def run_cli(*argv: str) -> tuple[int, str]:
    """Exit status and everything ``cacheplug`` printed, log lines included."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("cacheplug")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(list(argv))
    finally:
        logger.removeHandler(handler)
    return status, out.getvalue()


def test_refused_login_shows_no_password_in_errors_logs_or_the_command(
    locked_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = redis_url(locked_redis, "x" + PASSWORD)
    with caplog.at_level(logging.DEBUG), from_url(wrong) as cache:
        assert cache.set("k", 1) is False
        assert cache.get("k") is None
    with pytest.raises(RuntimeError) as info:
        RedisCache(
            locked_redis.host, locked_redis.port, password=PASSWORD[1:], check_connection=True
        )
    texts = [every_text(info.value)]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args)]
    for command in ("check", "demo"):
        status, shown = run_cli(command, wrong)
        assert status == 1
        assert "refused the login" in shown
        texts.append(shown)
    for text in texts:
        for piece in (SECRET, quote(PASSWORD, safe="")):
            assert piece not in text


def test_the_command_shows_no_secret_of_a_working_signed_cache(locked_redis: RedisServer) -> None:
    query = f"?secret={quote(PASSWORD, safe='')}"
    url = f"redis://:{quote(PASSWORD, safe='')}@{locked_redis.host}:{locked_redis.port}/0{query}"
    for argv in (("check", url), ("demo", url, "--keys", "2", "--rounds", "2", "--delay-ms", "0")):
        status, shown = run_cli(*argv)
        assert status == 0, shown
        assert "signed=True" in shown
        assert SECRET not in shown and quote(PASSWORD, safe="") not in shown


def test_secret_from_the_environment_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CACHEPLUG_SECRET", SECRET)
    cache = SimpleCache()
    cache.set("k", pickle.dumps)  # a function, pickled by reference: signed
    with caplog.at_level(logging.DEBUG):
        cache.serializer = type(cache.serializer)()  # another pickle object: the same MAC
        assert cache.get("k") is pickle.dumps
    status, shown = run_cli("demo", "simple://", "--keys", "1", "--rounds", "1", "--delay-ms", "0")
    assert status == 0
    assert "signed=True" in shown
    assert SECRET not in shown + repr(cache) + caplog.text
