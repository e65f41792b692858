"""A review of ``cacheplug`` (the command) and ``cacheplug.flask`` as a user and an operator meet
them: broken servers, TLS mismatches, secrets, odd terminals, Ctrl-C, app factories."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask_caching import Cache
from waiting import wait_until

from cacheplug import BaseCache, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from servers import MemcachedServer, RedisCluster, RedisServer

SECRET = "Qx7vW"
QUICK_DEMO = ("--keys", "2", "--rounds", "2", "--delay-ms", "1")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m cacheplug ARGS`` to completion, without the caller's CACHE_URL."""
    child = spawn(*args, env=env)
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        child.kill()  # harmless once it has ended; stops a hung one
        child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def spawn(
    *args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``python -m cacheplug ARGS`` started without the caller's CACHE_URL, stderr piped."""
    environment = {k: v for k, v in os.environ.items() if k != "CACHE_URL"}
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "cacheplug", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


class _RudeServer:
    """A port that accepts connections and then never answers (``silent``) or hangs up at once."""

    def __init__(self, *, silent: bool) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._silent = silent
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            if self._silent:
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    server = _RudeServer(silent=True)
    yield server.port
    server.close()


@pytest.fixture
def hangup_port() -> Iterator[int]:
    server = _RudeServer(silent=False)
    yield server.port
    server.close()


# -- broken servers ----------------------------------------------------------------------------


def test_a_server_that_never_answers_fails_within_the_default_timeouts(silent_port: int) -> None:
    # redis: socket_timeout 5 s, memcached: timeout 1 s (docs/configuration.md); all in parallel
    urls = (
        f"redis://:{SECRET}@127.0.0.1:{silent_port}/0",
        f"rediss://127.0.0.1:{silent_port}/0",
        f"redis+cluster://127.0.0.1:{silent_port}",
        f"memcached://127.0.0.1:{silent_port}",
    )
    children = [(url, spawn(command, url)) for url in urls for command in ("check", "demo")]
    for url, child in children:
        out, err = child.communicate(timeout=30)  # a hang would be cut here
        assert child.returncode == 1, (url, out, err)
        assert "cannot reach the cache at " in err
        assert "Traceback" not in err
        assert SECRET not in out + err


def test_a_server_that_hangs_up_at_once_fails_cleanly(hangup_port: int) -> None:
    for url in (
        f"redis://:{SECRET}@127.0.0.1:{hangup_port}/0",
        f"redis+cluster://127.0.0.1:{hangup_port}",
        f"memcached://127.0.0.1:{hangup_port}",
    ):
        for command in ("check", "demo"):
            result = run(command, url, *(QUICK_DEMO if command == "demo" else ()))
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr
            assert "the error: " in result.stderr
            assert SECRET not in result.stdout + result.stderr


# -- TLS on one side only ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _TLSRedis:
    def __init__(self, server: RedisServer, tls_port: int, ca: Path) -> None:
        self.server, self.tls_port, self.ca = server, tls_port, ca


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TLSRedis]:
    """A Redis with a password and a TLS-only port, its certificate self-signed for localhost."""
    from servers import RedisServer

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls_port = _free_port()
    config = {
        "tls-port": str(tls_port),
        "tls-cert-file": str(cert),
        "tls-key-file": str(key),
        "tls-ca-cert-file": str(cert),
        "tls-auth-clients": "no",
    }
    with RedisServer(password=SECRET, config=config) as server:
        yield _TLSRedis(server, tls_port, cert)


def _verdict(stderr: str) -> str:
    """The command's own error line, without the engine error and the log lines around it."""
    (line,) = (line for line in stderr.splitlines() if line.startswith("cacheplug check: error:"))
    return line


def test_tls_urls_that_match_the_server_work(tls_redis: _TLSRedis) -> None:
    port, ca = tls_redis.tls_port, tls_redis.ca
    for url in (
        f"rediss://:{SECRET}@localhost:{port}/0?ssl_ca_certs={ca}",
        f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=none",
    ):
        result = run("check", url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert SECRET not in result.stdout + result.stderr


def test_a_plain_url_on_a_tls_port_suggests_tls(tls_redis: _TLSRedis) -> None:
    port = tls_redis.tls_port
    for url in (
        f"redis://:{SECRET}@127.0.0.1:{port}/0",
        f"redis+cluster://:{SECRET}@127.0.0.1:{port}",
    ):
        result = run("check", url)
        assert result.returncode == 1
        assert SECRET not in result.stdout + result.stderr
        assert "rediss://" in _verdict(result.stderr)


def test_a_refused_certificate_is_named_as_such(tls_redis: _TLSRedis) -> None:
    port, ca = tls_redis.tls_port, tls_redis.ca
    for url in (
        f"rediss://:{SECRET}@localhost:{port}/0",  # self-signed, no CA given
        f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs={ca}",  # certificate for localhost
        f"redis+cluster://:{SECRET}@127.0.0.1:{port}?ssl=true&ssl_ca_certs={ca}",
    ):
        result = run("check", url)
        assert result.returncode == 1
        assert SECRET not in result.stdout + result.stderr
        message = _verdict(result.stderr)
        assert "certificate" in message
        assert "ssl_ca_certs" in message
        assert "Does it speak TLS" not in message


# -- secrets, URLs and the environment ----------------------------------------------------------


def test_secrets_stay_hidden_however_the_url_spells_them(hangup_port: int) -> None:
    for url in (
        f"redis://:p%40{SECRET}@127.0.0.1:{hangup_port}/0",
        f"redis://ada:{SECRET}%2Fx@127.0.0.1:{hangup_port}/0",
        f"redis://127.0.0.1:{hangup_port}/0?password=a%26{SECRET}",
        f"redis://127.0.0.1:{hangup_port}/0?secret={SECRET}&secret={SECRET}",
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://:{SECRET}@[::1/0",
        f"memcached://ada:{SECRET}@127.0.0.1:{hangup_port}",
        f"simple://?token={SECRET}&threshold=many",
    ):
        result = run("check", url)
        assert result.returncode in (1, 2), url
        assert "Traceback" not in result.stderr
        assert SECRET not in result.stdout + result.stderr, url


@pytest.mark.parametrize(
    ("value", "code", "said"),
    [
        ("", 0, "url:        simple://"),
        (" ", 2, "malformed cache URL ' '"),
        ("simple:// ", 2, "malformed host ' '"),
        ("simple://?threshold=5&threshold=6", 2, "option 'threshold' appears twice"),
    ],
)
def test_cache_url_empty_blank_or_bad(value: str, code: int, said: str) -> None:
    result = run("demo", *QUICK_DEMO, env={"CACHE_URL": value})
    assert result.returncode == code
    assert said in result.stdout + result.stderr
    if code:
        assert result.stderr.rstrip().endswith("(from environment variable CACHE_URL)")
        assert "Traceback" not in result.stderr


def test_a_very_long_url_is_refused_or_served_without_a_traceback() -> None:
    long = "a" * 100_000
    assert run("check", f"simple://?key_prefix={long}").returncode == 0
    for url in (f"redis://{long}:6379/0", f"simple://?bogus={long}"):
        result = run("check", url)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr


def test_a_non_utf8_terminal_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "café"
    folder.mkdir()
    for command in (
        ("check", "simple://?key_prefix=ü:"),
        ("check", f"file://{folder}"),
        ("demo", f"file://{folder}", *QUICK_DEMO),
    ):
        result = run(*command, env={"PYTHONIOENCODING": "ascii"})
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    assert [name for name in os.listdir(folder) if not name.startswith(".cacheplug-")] == []


# -- the command line itself -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "check", "plugins"])
def test_every_subcommand_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: cacheplug {command} ")
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("frob",), "invalid choice: 'frob' (choose from demo, check, plugins)\n"),
        (
            ("chek", "simple://"),
            "invalid choice: 'chek' (choose from demo, check, plugins); did you mean 'check'?",
        ),
        (("demo", "--frob"), "unrecognized arguments: --frob"),
        (("check",), "the following arguments are required: url"),
        (("check", "simple://", "simple://"), "unrecognized arguments: simple://"),
        (("plugins", "--jsn"), "unrecognized arguments: --jsn"),
        (("demo", "--keys"), "expected one argument"),
    ],
)
def test_a_wrong_command_line_exits_2_with_a_message(args: tuple[str, ...], said: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert said in result.stderr
    assert result.stdout == ""


def test_an_option_given_twice_takes_the_last() -> None:
    result = run("demo", "simple://", "--keys", "1", "--keys", "2", "--rounds", "1")
    assert result.returncode == 0
    assert "1 round over 2 arguments" in result.stdout


# -- Ctrl-C ------------------------------------------------------------------------------------


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as wchan:
        return wchan.read()


def _nearly_full_pipe() -> tuple[int, int]:
    """A pipe with room for about one line of output: a writer to it soon blocks."""
    read_end, write_end = os.pipe()
    size = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.write(write_end, bytes(size - 400))
    return read_end, write_end


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux /proc wchan")
@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_during_check_exits_130_and_leaves_no_key(redis_server: RedisServer) -> None:
    read_end, write_end = _nearly_full_pipe()
    url = redis_server.url + "?key_prefix=cc:"
    child = spawn("check", url, env={"PYTHONUNBUFFERED": "1"}, stdout=write_end)
    os.close(write_end)
    try:
        wait_until(lambda: child.poll() is not None or "pipe_write" in _wchan(child.pid))
        assert child.poll() is None, "check finished without filling the pipe"
        assert redis_server.command("KEYS", "cc:cacheplug-check:*") != []  # part-way
        child.send_signal(signal.SIGINT)
        _, errors = child.communicate(timeout=30)
    finally:
        os.close(read_end)
    assert (child.returncode, errors) == (130, "")
    assert redis_server.command("KEYS", "cc:cacheplug-check:*") == []


@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_during_demo_exits_130_without_a_traceback() -> None:
    child = spawn("demo", "simple://", "--keys", "3", "--rounds", "2", "--delay-ms", "60000")
    # the first real execution waits a minute: the demo's table is printed only at the end
    wait_until(lambda: "futex" in _wchan(child.pid))  # waiting in the slow function
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert (child.returncode, out, err) == (130, "", "")


# -- Flask --------------------------------------------------------------------------------------


def _serve(cache: Cache, **config: Any) -> tuple[Flask, BaseCache]:
    """A new app whose ``cache`` is cacheplug's, configured by ``config``; and its backend."""
    app = Flask(__name__)
    app.config.update(CACHE_TYPE="cacheplug.flask.cache_factory", **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Flask-Caching's own
        cache.init_app(app)
    backend: BaseCache = app.extensions["cache"][cache]
    return app, backend


def test_an_app_factory_gives_each_app_the_cache_of_its_own_url(
    tmp_path: Path, redis_server: RedisServer, memcached_server: MemcachedServer
) -> None:
    cache = Cache()  # one extension object, initialised for each app the factory makes
    urls = (redis_server.url, memcached_server.url, f"file://{tmp_path}", "simple://")
    apps = [_serve(cache, CACHE_URL=url, CACHE_KEY_PREFIX="fac:") for url in urls]
    assert [type(backend).__name__ for _, backend in apps] == [
        *("RedisCache", "MemcachedCache", "FileSystemCache", "SimpleCache")
    ]
    for number, (app, _) in enumerate(apps):
        with app.app_context():
            assert cache.set("who", number) is True
    for number, (app, _) in enumerate(apps):
        with app.app_context():
            assert cache.get("who") == number
            assert cache.clear() is True
    assert redis_server.command("KEYS", "fac:*") == []


@pytest.mark.parametrize("engine", ["redis", "memcached", "cluster"])
def test_clear_forgets_only_its_own_prefix_and_the_url_prefix_wins(
    engine: str,
    redis_server: RedisServer,
    memcached_server: MemcachedServer,
    redis_cluster: RedisCluster,
) -> None:
    urls = {"redis": redis_server.url, "memcached": memcached_server.url}
    url = urls.get(engine) or redis_cluster.url
    joiner = "&" if "?" in url else "?"
    ours, theirs = Cache(), Cache()
    mine, backend = _serve(
        ours, CACHE_URL=f"{url}{joiner}key_prefix=urlp:", CACHE_KEY_PREFIX="ignored:"
    )
    other, _ = _serve(theirs, CACHE_URL=url, CACHE_KEY_PREFIX="otherp:")
    assert backend.key_prefix == "urlp:"  # the URL's query wins, as documented
    calls: list[str] = []

    @mine.route("/v")
    @ours.cached()
    def view() -> str:
        calls.append("v")
        return f"v #{len(calls)}"

    @ours.memoize()
    def square(x: int) -> int:
        calls.append(f"sq{x}")
        return x * x

    with other.app_context():
        assert theirs.set("keep", "theirs") is True
    client = mine.test_client()
    with mine.app_context():
        assert [client.get("/v").data, client.get("/v").data] == [b"v #1", b"v #1"]
        assert (square(3), square(3)) == (9, 9)
        assert ours.clear() is True
        assert client.get("/v").data == b"v #3"
        assert square(3) == 9
        ours.clear()
    assert calls == ["v", "sq3", "v", "sq3"]
    with other.app_context():
        assert theirs.get("keep") == "theirs"
        theirs.clear()


def test_views_answer_while_the_cache_server_never_replies(silent_port: int) -> None:
    cache = Cache()
    url = f"redis://:{SECRET}@127.0.0.1:{silent_port}/0?socket_timeout=0.2&retries=0"
    app, _ = _serve(cache, CACHE_URL=url)
    served: list[str] = []

    @cache.memoize(timeout=30)
    def profile(user: str) -> dict[str, str]:
        served.append(user)
        return {"user": user}

    @app.get("/profile/<user>")
    @cache.cached(timeout=30)
    def page(user: str) -> dict[str, Any]:
        return {"profile": profile(user), "served": len(served)}

    client = app.test_client()
    with app.app_context():
        answers = [client.get(f"/profile/{user}") for user in ("ada", "ada", "bob")]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.get_json()["served"] for a in answers] == [1, 2, 3]  # nothing cached
        assert (cache.get("anything"), cache.clear()) == (None, False)


def test_flask_url_mistakes_are_configuration_errors_without_the_password() -> None:
    for url, said in (
        (" ", "malformed cache URL ' '"),
        (f"redis://:{SECRET}@127.0.0.1:1/0?bogus=1", "unknown option 'bogus'"),
    ):
        with pytest.raises(ConfigurationError, match=said) as info:
            _serve(Cache(), CACHE_URL=url)
        assert SECRET not in str(info.value)
    _, backend = _serve(Cache(), CACHE_URL="")  # empty: the in-process default
    assert type(backend).__name__ == "SimpleCache"
