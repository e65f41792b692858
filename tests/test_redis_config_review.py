"""RedisCache's reading of its configuration: keyword overrides against the URL's credentials and
database, and the local TLS files, checked when the cache is built and never asking for a
passphrase on the terminal later.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import servers
from servers import RedisServer
from tls_files import make_certificates, openssl, tls_server_config

from cacheplug import ConfigurationError, RedisCache, from_url

PASSWORD = "cfg-review-pw"
KEY_PHRASE = "k3y-phr4se"


@dataclass(frozen=True)
class _Server:
    plain: RedisServer  # with PASSWORD, also listening for TLS on tls_port
    tls_port: int
    files: dict[str, str]  # ca, ca-key, cert, key and locked: the key under KEY_PHRASE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    folder = tmp_path_factory.mktemp("tls")
    files = make_certificates(folder)
    files["locked"] = str(folder / "locked-key.pem")
    openssl("pkey", "-in", files["key"], "-aes256", "-passout", f"pass:{KEY_PHRASE}",
            "-out", files["locked"])  # fmt: skip
    port = servers._free_port()
    config = tls_server_config(files, port)
    with RedisServer(password=PASSWORD, config=config) as plain:
        yield _Server(plain, port, files)


# -- keywords against the URL ----------------------------------------------------------------------


def test_keyword_credentials_win_over_the_urls_user_info(server: _Server) -> None:
    port = server.plain.port
    with from_url(f"redis://:stale@127.0.0.1:{port}/0", password=PASSWORD) as cache:
        assert cache.set("k", 1) is True
    with from_url(
        f"redis://ada:stale@127.0.0.1:{port}/0", username="default", password=PASSWORD
    ) as cache:
        assert cache.set("k", 1) is True
    # a keyword also wins over a ?password= that agrees with the user-info
    with from_url(f"redis://:stale@127.0.0.1:{port}/0?password=stale", password=PASSWORD) as cache:
        assert cache.set("k", 1) is True


def test_keyword_db_wins_over_the_urls_path(server: _Server) -> None:
    port = server.plain.port
    for url in (f"redis://127.0.0.1:{port}/1", f"redis://127.0.0.1:{port}/1?db=1"):
        with from_url(url, db=2, password=PASSWORD, key_prefix="db-kw:") as cache:
            assert cache.set("k", url) is True
        raw = redis.Redis(port=port, password=PASSWORD, db=2)
        assert raw.get("db-kw:k") is not None
        assert raw.delete("db-kw:k") == 1
        raw.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:stale-pw@cache/0?password=fresh-pw",
        "rediss://ada:stale-pw@cache/0?username=bob",
        "redis+cluster://ada:stale-pw@n1:7000,n2:7001?password=fresh-pw",
    ],
)
def test_a_url_naming_two_credentials_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"names two (passwords|usernames); give it in"):
        from_url(url, password="kw-pw")  # the URL contradicts itself: no keyword settles it
    with pytest.raises(ConfigurationError) as raised:
        from_url(url)
    assert "stale-pw" not in str(raised.value)
    assert "fresh-pw" not in str(raised.value)


def test_a_url_giving_one_password_twice_works(server: _Server) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.plain.port}/0?password={PASSWORD}"
    with from_url(url) as cache:
        assert cache.set("k", 1) is True
    with pytest.raises(ConfigurationError, match="names two passwords"):
        from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.plain.port}/0?password=other")


# -- TLS files checked when the cache is built --------------------------------------------------


def tls_cache(spelling: str, port: int, options: dict[str, str]) -> Any:
    """A TLS cache on 127.0.0.1:``port`` with ``options``, written in ``spelling``."""
    query = urlencode({"password": PASSWORD, **options})
    if spelling == "keyword":
        return RedisCache("127.0.0.1", port, password=PASSWORD, ssl=True, **options)
    if spelling == "rediss":
        return from_url(f"rediss://127.0.0.1:{port}/0?{query}")
    if spelling == "ssl=true":
        return from_url(f"redis://127.0.0.1:{port}/0?ssl=true&{query}")
    return from_url(f"redis+cluster://127.0.0.1:{port}?ssl=true&{query}")


def bad_material(files: dict[str, str]) -> dict[str, tuple[dict[str, str], tuple[str, ...]]]:
    """Options naming unusable TLS files, and what the error says about each."""
    missing = files["ca"] + ".missing"
    pair = {"ssl_certfile": files["cert"], "ssl_keyfile": files["locked"]}
    return {
        "missing CA": ({"ssl_ca_certs": missing}, ("ssl_ca_certs", missing, "No such file")),
        "CA file without a certificate": (
            {"ssl_ca_certs": files["key"]},
            ("ssl_ca_certs", files["key"], "no CA certificate"),
        ),
        "CA path that is a file": (
            {"ssl_ca_path": files["ca"]},
            ("ssl_ca_path", files["ca"], "not a directory"),
        ),
        "missing certfile": (
            {"ssl_certfile": missing, "ssl_keyfile": files["key"]},
            ("ssl_certfile", missing, "No such file"),
        ),
        "missing keyfile": (
            {"ssl_certfile": files["cert"], "ssl_keyfile": missing},
            ("ssl_keyfile", missing, "No such file"),
        ),
        "keyfile without certfile": (  # redis-py raised TypeError from every call
            {"ssl_keyfile": files["key"]},
            ("ssl_keyfile", files["key"], "needs ssl_certfile"),
        ),
        "encrypted key without passphrase": (
            pair,
            ("ssl_keyfile", files["locked"], "encrypted key", "ssl_password"),
        ),
        "wrong passphrase": (
            {**pair, "ssl_password": "wr0ng-phr4se"},
            ("ssl_password does not unlock", files["locked"]),
        ),
        "key of another certificate": (
            {"ssl_certfile": files["cert"], "ssl_keyfile": files["ca-key"]},
            ("ssl_keyfile", files["ca-key"], "does not hold the key of ssl_certfile"),
        ),
    }


CASES = (
    "missing CA",
    "CA file without a certificate",
    "CA path that is a file",
    "missing certfile",
    "missing keyfile",
    "keyfile without certfile",
    "encrypted key without passphrase",
    "wrong passphrase",
    "key of another certificate",
)


@pytest.mark.parametrize("case", CASES)
def test_unusable_tls_files_are_a_configuration_error(server: _Server, case: str) -> None:
    options, said = bad_material(server.files)[case]
    with pytest.raises(ConfigurationError) as raised:
        tls_cache("rediss", server.tls_port, options)
    message = str(raised.value)
    assert all(part in message for part in said), message
    assert "wr0ng-phr4se" not in message
    assert PASSWORD not in message


@pytest.mark.parametrize("spelling", ["rediss", "ssl=true", "keyword", "cluster"])
def test_every_tls_spelling_checks_its_files(server: _Server, spelling: str) -> None:
    files = server.files
    for case in ("missing CA", "encrypted key without passphrase", "wrong passphrase"):
        options, said = bad_material(files)[case]
        with pytest.raises(ConfigurationError, match=said[0]):
            tls_cache(spelling, server.tls_port, options)
    good = {
        "ssl_certfile": files["cert"],
        "ssl_keyfile": files["locked"],
        "ssl_password": KEY_PHRASE,
    }
    cache = tls_cache(spelling, server.tls_port, {"ssl_ca_certs": files["ca"], **good})
    if spelling != "cluster":  # the server is no cluster: built, not used
        assert (cache.set("k", [1]), cache.get("k")) == (True, [1])
    cache.close()


# -- no passphrase prompt when connecting ---------------------------------------------------------

CHILD = """
import logging, shutil, sys, time
from cacheplug import RedisCache
port, password, ca, cert, key, locked = sys.argv[1:]
logging.basicConfig(level=logging.WARNING, format="%(message)s")
cache = RedisCache("127.0.0.1", int(port), password=password, ssl=True, ssl_ca_certs=ca,
                   ssl_certfile=cert, ssl_keyfile=key)
shutil.copy(locked, key)  # replaced by an encrypted key after the cache was built
print("answered", cache.get("k"), flush=True)
"""


def test_a_key_encrypted_later_fails_the_connect_instead_of_prompting(
    server: _Server, tmp_path: Path
) -> None:
    files = server.files
    key = tmp_path / "key.pem"
    key.write_bytes(Path(files["key"]).read_bytes())
    argv = [str(server.tls_port), PASSWORD, files["ca"], files["cert"], str(key), files["locked"]]
    # OpenSSL asks for a passphrase on the controlling terminal: the child gets one (setsid -c:
    # a session of its own with the pty as its terminal; pty.fork() would fork this
    # multi-threaded process, which 3.12+ warns about)
    fd, terminal = pty.openpty()
    child = subprocess.Popen(
        ["setsid", "-c", sys.executable, "-c", CHILD, *argv],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 10  # far beyond the connect; a prompt waits forever
    try:
        while time.monotonic() < deadline:  # until the child exits and its terminal closes
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed its terminal
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        child.kill()  # gone already unless it waits for a passphrase
        child.wait()
        os.close(fd)
    text = output.decode(errors="replace")
    assert "pass phrase" not in text
    assert "answered None" in text, text
    assert "holds an encrypted key; give ssl_password" in text  # the outage's log line says why
