"""The ``cacheplug`` command, run as a real console script, as ``python -m`` and in-process."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from waiting import wait_until

import cacheplug
from cacheplug.cli import main
from cacheplug.core.plugins import backend_schemes

if TYPE_CHECKING:
    from pathlib import Path

    from servers import MemcachedServer, RedisCluster, RedisServer

SECRET = "Zr9qK"
FAST_DEMO = ("--keys", "3", "--rounds", "4", "--delay-ms", "5")
CHECKED_METHODS = (
    *("set", "get", "add", "has", "inc", "dec", "set_many", "get_many", "get_dict"),
    *("delete_many", "delete", "get_or_set", "clear"),
)


def run(
    *args: str, module: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cacheplug`` script (or ``python -m cacheplug``) to completion."""
    script = shutil.which("cacheplug")
    assert script is not None, "the cacheplug console script is not installed"
    command = [sys.executable, "-m", "cacheplug"] if module else [script]
    environment = {k: v for k, v in os.environ.items() if k != "CACHE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [*command, *args], check=False, capture_output=True, text=True, timeout=60, env=environment
    )


def fields(output: str) -> dict[str, str]:
    """The ``label: value`` lines of ``cacheplug demo``."""
    pairs = (line.partition(":") for line in output.splitlines())
    return {label: value.strip() for label, sep, value in pairs if sep}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- --version, --help ---------------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    for module in (False, True):
        result = run("--version", module=module)
        assert result.returncode == 0
        assert result.stdout.strip() == f"cacheplug {cacheplug.__version__}"


def test_help_lists_the_commands_without_importing_engines() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "check", "plugins"):
        assert command in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cacheplug.cli; "
            "print(sorted(m for m in ('redis', 'pymemcache', 'pluggy', 'importlib.metadata') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_a_command_is_required() -> None:
    result = run()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


# -- demo ----------------------------------------------------------------------------------------


def test_demo_on_simple_serves_repeats_from_the_cache() -> None:
    result = run("demo", "simple://", *FAST_DEMO)
    assert result.returncode == 0, result.stderr
    shown = fields(result.stdout)
    assert shown["url"] == "simple://"
    assert shown["cache"].startswith("SimpleCache(")
    assert shown["serializer"] == "pickle"
    assert shown["calls"] == "12"
    assert shown["executions"] == "3"
    assert shown["hit ratio"] == "75.0%"
    cold = float(shown["cold"].split()[0])
    warm = float(shown["warm"].split()[0])
    assert cold >= 4.5  # every first call really ran the 5 ms function
    assert warm < cold
    assert float(shown["speed-up"].rstrip("x")) > 2


def test_demo_reports_the_serializer_of_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "memory://?serializer=msgpack", *FAST_DEMO]) == 0
    shown = fields(capsys.readouterr().out)
    assert shown["serializer"] == "msgpack"
    assert shown["executions"] == "3"
    assert shown["calls"] == "12"


def test_demo_on_null_runs_the_function_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "null://", *FAST_DEMO]) == 0
    shown = fields(capsys.readouterr().out)
    assert shown["executions"] == shown["calls"] == "12"
    assert shown["hit ratio"] == "0.0%"
    assert float(shown["warm"].split()[0]) >= 4.5
    # no speed-up to claim: warm calls ran the function too, and their ratio was noise
    assert shown["speed-up"] == "none: no call was served from the cache"


def test_demo_of_one_round_has_no_warm_calls_to_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "simple://", "--keys", "2", "--rounds", "1", "--delay-ms", "1"]) == 0
    shown = fields(capsys.readouterr().out)
    assert (shown["calls"], shown["executions"]) == ("2", "2")
    assert (shown["warm"], shown["speed-up"]) == ("n/a (one round)", "n/a")
    assert shown["workload"] == "1 round over 2 arguments, 1 ms each"


def test_demo_takes_its_url_from_cache_url() -> None:
    result = run("demo", *FAST_DEMO, module=True, env={"CACHE_URL": "null://"})
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["url"] == "null://"


def test_demo_says_a_bad_url_came_from_cache_url() -> None:
    result = run("demo", *FAST_DEMO, env={"CACHE_URL": "simpel://"})
    assert result.returncode == 2
    assert result.stderr.rstrip().endswith(
        "did you mean 'simple'? (in 'simpel://') (from environment variable CACHE_URL)"
    )


def test_check_takes_its_url_from_cache_url_as_demo_does() -> None:
    # an operator checks the deployment's own CACHE_URL without copying it (and its password)
    result = run("check", env={"CACHE_URL": "simple://"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("checking simple:// (SimpleCache(")
    wrong = run("check", env={"CACHE_URL": "simpel://"})
    assert wrong.returncode == 2
    assert wrong.stderr.rstrip().endswith("(from environment variable CACHE_URL)")
    given = run("check", "null://", env={"CACHE_URL": "simple://"})  # the command line wins
    assert (given.returncode, given.stdout.split(" (")[0]) == (1, "checking null://")


def test_demo_with_a_bad_url_exits_2_with_the_message() -> None:
    result = run("demo", f"simpel://?secret={SECRET}")
    assert result.returncode == 2
    assert "did you mean 'simple'?" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("delay", ["inf", "1e300", "nan", "-5"])
def test_demo_refuses_a_delay_it_cannot_wait(
    delay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "simple://", "--keys", "1", "--rounds", "1", "--delay-ms", delay])
    assert info.value.code == 2
    assert (
        f"argument --delay-ms: must be from 0 to 3.6e+06 ms, got {delay}" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("option", "text", "said"),
    [
        ("--keys", "ten", "must be a whole number, got 'ten'"),
        ("--rounds", "0", "must be 1 or more, got 0"),
        ("--delay-ms", "soon", "must be a number of ms, got 'soon'"),
    ],
)
def test_demo_says_what_a_bad_option_should_be(
    option: str, text: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "simple://", option, text])
    assert info.value.code == 2
    assert f"argument {option}: {said}" in capsys.readouterr().err


def test_demo_against_redis(redis_server: RedisServer) -> None:
    result = run("demo", redis_server.url + "?serializer=json", *FAST_DEMO)
    assert result.returncode == 0, result.stderr
    shown = fields(result.stdout)
    assert shown["cache"].startswith("RedisCache(")
    assert shown["serializer"] == "json"
    assert shown["executions"] == "3"
    assert redis_server.command("KEYS", "cacheplug-demo:*") == []


def test_demo_on_an_unreachable_server_explains_and_fails() -> None:
    result = run("demo", f"redis://ada:{SECRET}@127.0.0.1:{closed_port()}/0")
    assert result.returncode == 1
    assert "cannot reach the cache at redis://ada:***@127.0.0.1" in result.stderr
    assert "is the server running" in result.stderr
    assert SECRET not in result.stderr + result.stdout


# -- check ---------------------------------------------------------------------------------------


PIPED = (("check", "simple://"), ("demo", *FAST_DEMO), ("plugins",))


def check_lines(output: str) -> dict[str, str]:
    """``{method: 'ok' | 'FAILED'}`` from the output of ``cacheplug check``."""
    lines = (line.split() for line in output.splitlines() if line.startswith("  "))
    return {words[0]: words[1] for words in lines}


@pytest.mark.parametrize(
    ("command", "buffered"),
    [
        *((command, buffered) for command in PIPED for buffered in (True, False)),
        # unbuffered, argparse ignores a failed write of its help (exit 0)
        (("--help",), True),
    ],
    ids=repr,
)
def test_output_into_a_closed_pipe_ends_without_a_traceback(
    command: tuple[str, ...], buffered: bool
) -> None:
    # A pipe's stdout is block-buffered unless PYTHONUNBUFFERED is set: then the first write
    # comes at exit, after main() returned.
    hidden = {"CACHE_URL", "PYTHONUNBUFFERED"} if buffered else {"CACHE_URL"}
    environment = {k: v for k, v in os.environ.items() if k not in hidden}
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `cacheplug check URL | head -0`
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cacheplug", *command],
            env=environment,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr == ""


def blocked_writing_to_a_pipe(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as wchan:
        return "pipe_write" in wchan.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux /proc wchan")
def test_check_cut_short_by_its_reader_still_clears_its_keys(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    # Room for the first line and a step or two: check blocks on a full pipe part-way.
    os.write(write_end, b"x" * (fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) - 400))
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "cacheplug", "check", f"file://{tmp_path}"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write_end)
        wait_until(lambda: child.poll() is not None or blocked_writing_to_a_pipe(child.pid))
        assert child.poll() is None, "check finished without filling the pipe"
    finally:
        os.close(read_end)  # the reader goes away
    _, errors = child.communicate(timeout=60)
    assert (child.returncode, errors) == (1, "")
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".cacheplug-")] == []


def test_check_simple_runs_every_method() -> None:
    result = run("check", "simple://")
    assert result.returncode == 0, result.stderr
    assert check_lines(result.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")
    for line in result.stdout.splitlines():
        if line.startswith("  "):
            assert line.endswith(" ms")
            assert float(line.split()[2]) >= 0
    assert f"all {len(CHECKED_METHODS)} methods ok" in result.stdout


def test_check_with_every_serializer(capsys: pytest.CaptureFixture[str]) -> None:
    for serializer in ("pickle", "json", "msgpack"):
        assert main(["check", f"simple://?serializer={serializer}&secret={SECRET}"]) == 0
        output = capsys.readouterr().out
        assert check_lines(output) == dict.fromkeys(CHECKED_METHODS, "ok")
        assert SECRET not in output


def test_check_reports_a_cache_that_keeps_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "null://"]) == 1
    captured = capsys.readouterr()
    lines = check_lines(captured.out)
    assert lines["set"] == "ok"
    assert lines["get"] == "FAILED"
    assert "methods failed: get," in captured.err
    assert "null:// (NullCache) stores nothing by design" in captured.err


def test_check_with_a_bad_url_exits_2_with_the_message() -> None:
    result = run("check", "simple://?threshold=many", module=True)
    assert result.returncode == 2
    assert "option 'threshold' must be an int, got 'many'" in result.stderr
    assert result.stdout == ""


def test_check_on_a_closed_port_says_the_server_is_unreachable() -> None:
    assert "redis" in backend_schemes()
    url = f"redis://ada:{SECRET}@127.0.0.1:{closed_port()}/0?secret={SECRET}"
    result = run("check", url)
    assert result.returncode == 1
    assert check_lines(result.stdout) == {"set": "FAILED"}
    assert "cannot reach the cache at redis://ada:***@127.0.0.1:" in result.stderr
    assert "is the server running" in result.stderr
    assert "\n  the error: ConnectionError: " in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_check_names_a_refused_login_or_command_without_the_password() -> None:
    from servers import RedisServer

    with RedisServer(password="right-one") as server:
        wrong = run("check", f"redis://:{SECRET}@{server.host}:{server.port}/0")
        missing = run("check", f"redis://{server.host}:{server.port}/0")
        server.command("ACL", "SETUSER", "reader", "on", f">{SECRET}", "~*", "+get")
        forbidden = run("check", f"redis://reader:{SECRET}@{server.host}:{server.port}/0")
    for result in (wrong, missing, forbidden):
        assert result.returncode == 1
        assert SECRET not in result.stdout + result.stderr
    # the engine's own reason, not "is the server running?"
    assert "server at redis://:***@127.0.0.1:" in wrong.stderr
    assert "refused the login: are the user name and password right?" in wrong.stderr
    assert "the error: AuthenticationError: invalid username-password pair" in wrong.stderr
    assert "asks for a password and the URL gives none: put ':password@'" in missing.stderr
    assert "refused a command: may this user (ACL) run it?" in forbidden.stderr
    assert "the error: NoPermissionError: " in forbidden.stderr
    assert "is the server running" not in wrong.stderr + missing.stderr + forbidden.stderr


def test_check_names_what_a_reachable_redis_server_refused() -> None:
    from servers import RedisServer

    with RedisServer() as server:
        port, where = server.port, f"redis://:{SECRET}@{server.host}:{server.port}"
        results = {"no such db": run("check", f"{where}/99")}
        server.command("CONFIG", "SET", "maxmemory", "1")
        results["full"] = run("check", f"{where}/0")
        server.command("CONFIG", "SET", "maxmemory", "0")
        server.command("CONFIG", "SET", "min-replicas-to-write", "1")
        results["no replica"] = run("check", f"{where}/0")
        server.command("CONFIG", "SET", "min-replicas-to-write", "0")
        # a primary it cannot reach: no sync, so no LOADING answer racing the check
        server.command("REPLICAOF", "127.0.0.1", str(closed_port()))
        results["replica"] = run("check", f"{where}/0")
    expected = {
        "no such db": (
            "has no database of that number: Redis numbers them from 0 to its 'databases' "
            "setting minus one (0 to 15 by default)",
            "ResponseError: DB index is out of range",
        ),
        "full": (
            "is full (maxmemory) and refuses writes: raise its maxmemory, or give it an eviction "
            "policy such as maxmemory-policy allkeys-lru",
            "OutOfMemoryError: command not allowed when used memory > 'maxmemory'",
        ),
        "no replica": (
            "answered the write with an error",
            "ResponseError: NOREPLICAS Not enough good replicas to write",
        ),
        "replica": (
            "is a read-only replica: point the URL at its primary",
            "ReadOnlyError: You can't write against a read only replica",
        ),
    }
    for case, (message, error) in expected.items():
        result = results[case]
        assert result.returncode == 1, case
        assert check_lines(result.stdout) == {"set": "FAILED"}, case
        assert f"the server at redis://:***@127.0.0.1:{port}/" in result.stderr, case
        assert message in result.stderr, (case, result.stderr)
        assert f"\n  the error: {error}" in result.stderr, (case, result.stderr)
        assert "is the server running" not in result.stderr, case
        assert SECRET not in result.stdout + result.stderr, case


def test_check_against_redis_touches_only_its_own_keys(redis_server: RedisServer) -> None:
    redis_server.command("SET", "cli-test:keep", "1")
    for url in (
        redis_server.url,
        redis_server.url + "?key_prefix=app:&serializer=msgpack",
        f"redis+unix://{redis_server.unix_socket}?db=0",
    ):
        result = run("check", url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert check_lines(result.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")
    assert redis_server.command("GET", "cli-test:keep") == b"1"
    assert redis_server.command("KEYS", "*cacheplug-check:*") == []
    redis_server.command("DEL", "cli-test:keep")


def test_check_and_demo_against_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    checked = run("check", redis_cluster.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_lines(checked.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")
    demo = run("demo", redis_cluster.url, *FAST_DEMO)
    assert demo.returncode == 0, demo.stderr
    assert fields(demo.stdout)["executions"] == "3"


def test_check_and_demo_against_memcached(memcached_server: MemcachedServer) -> None:
    checked = run("check", memcached_server.url + "?serializer=json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_lines(checked.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")
    demo = run("demo", memcached_server.url, *FAST_DEMO)
    assert demo.returncode == 0, demo.stderr
    assert fields(demo.stdout)["executions"] == "3"
    assert fields(demo.stdout)["cache"].startswith("MemcachedCache(")


@pytest.mark.parametrize("engine", ["redis", "memcached"])
def test_check_and_demo_follow_a_server_that_goes_down_and_comes_back(
    engine: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | MemcachedServer = request.getfixturevalue(f"fresh_{engine}_server")
    url = server.url
    assert run("check", url).returncode == 0
    server.kill()
    for command in (("check", url), ("demo", url, *FAST_DEMO)):
        result = run(*command)
        assert result.returncode == 1
        assert f"cannot reach the cache at {engine}://127.0.0.1:{server.port}" in result.stderr
    server.restart()
    checked = run("check", url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_lines(checked.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")


def test_check_on_the_port_of_the_other_engine_says_another_server_answered(
    redis_server: RedisServer, memcached_server: MemcachedServer
) -> None:
    for url in (
        f"redis://{memcached_server.host}:{memcached_server.port}/0",
        f"memcached://{redis_server.host}:{redis_server.port}",
    ):
        result = run("check", url)
        assert result.returncode == 1
        scheme = url.partition(":")[0]
        assert f"answered, but not as {scheme}:// expects: is another kind of server" in (
            result.stderr
        )
        assert "is the server running" not in result.stderr


def test_check_with_tls_on_a_plain_server_asks_whether_it_speaks_tls(
    redis_server: RedisServer,
) -> None:
    url = f"rediss://{redis_server.host}:{redis_server.port}/0?socket_timeout=0.2"
    result = run("check", url)
    assert result.returncode == 1
    assert "is the server running and reachable from here? Does it speak TLS" in result.stderr
    plain = run("check", f"memcached://127.0.0.1:{closed_port()}")
    assert "TLS" not in plain.stderr


def test_check_of_a_cluster_url_names_what_the_server_answered(
    redis_server: RedisServer, memcached_server: MemcachedServer
) -> None:
    from servers import RedisServer

    single = run("check", f"redis+cluster://{redis_server.host}:{redis_server.port}")
    foreign = run("check", f"redis+cluster://{memcached_server.host}:{memcached_server.port}")
    with RedisServer(password="right-one") as server:
        missing = run("check", f"redis+cluster://{server.host}:{server.port}")
        wrong = run("check", f"redis+cluster://:{SECRET}@{server.host}:{server.port}")
    for result in (single, foreign, missing, wrong):
        assert result.returncode == 1
        assert "is the server running" not in result.stderr
        assert SECRET not in result.stdout + result.stderr
    assert "is not a Redis Cluster node (cluster mode is not enabled)" in single.stderr
    assert "answered, but not as redis+cluster:// expects" in foreign.stderr
    assert "asks for a password and the URL gives none" in missing.stderr
    assert "refused the login: are the user name and password right?" in wrong.stderr


def test_check_on_a_closed_memcached_port_says_it_is_unreachable() -> None:
    result = run("check", f"memcached://127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    assert check_lines(result.stdout) == {"set": "FAILED"}
    assert "cannot reach the cache at memcached://127.0.0.1:" in result.stderr


def test_check_and_demo_against_a_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    url = f"file://{tmp_path}?serializer=msgpack"
    checked = run("check", url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_lines(checked.stdout) == dict.fromkeys(CHECKED_METHODS, "ok")
    demo = run("demo", url, *FAST_DEMO)
    assert demo.returncode == 0, demo.stderr
    shown = fields(demo.stdout)
    assert shown["cache"].startswith("FileSystemCache(")
    assert (shown["serializer"], shown["executions"]) == ("msgpack", "3")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_check_leaves_a_directory_as_it_found_it(tmp_path: Path) -> None:
    url = f"file://{tmp_path}?key_prefix=app:"
    cacheplug.from_url(url).set("mine", 1)  # the application's entry and lock file
    before = sorted(os.listdir(tmp_path))
    for _ in range(3):
        assert run("check", url).returncode == 0
    assert sorted(os.listdir(tmp_path)) == before
    assert cacheplug.from_url(url).get("mine") == 1


def no_file_growth() -> None:
    """In the child: a file-size limit of 0, as a full disk refuses every write."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.parametrize("command", ["check", "demo"])
def test_a_directory_refusing_writes_is_not_called_a_server(tmp_path: Path, command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cacheplug", command, f"file://{tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=no_file_growth,
    )
    assert result.returncode == 1
    assert "File too large" in result.stderr  # the logged cause
    assert f"cannot write to the cache at file://{tmp_path}: " in result.stderr
    assert "server" not in result.stderr


# -- plugins -------------------------------------------------------------------------------------


def test_plugins_table_lists_names_and_versions() -> None:
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["name", "distribution", "version", "schemes", "serializers", "error"]
    by_name = {row.split()[0]: row.split() for row in rows}
    simple = by_name["cacheplug.backends.simple"]
    assert simple[1:4] == ["cacheplug", cacheplug.__version__, "memory,simple"]
    assert by_name["cacheplug.serializers.json"][4] == "json"


def test_plugins_json_is_what_get_plugins_returns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    assert plugins == cacheplug.get_plugins()
    names = {plugin["name"]: plugin for plugin in plugins}
    assert names["cacheplug.backends.null"]["schemes"] == ["null"]
    assert names["cacheplug.serializers.msgpack"]["version"] == cacheplug.__version__
