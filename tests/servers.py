"""Real Redis, Redis Cluster and Memcached servers for the test suite.

Each server runs the Debian binary (``redis-server``, ``memcached``) as a child process on a free
loopback port, in its own temporary directory, without persistence. A server is ready only once it
answers and reports our child's pid, so a foreign server that already holds the port is never
mistaken for ours. Every server started here is stopped at interpreter exit at the latest.

Example::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")

The pytest fixtures at the bottom of this module give one shared server per session
(``redis_server``, ``redis_cluster``, ``memcached_server``) and a private one per test
(``fresh_redis_server``, ``fresh_memcached_server``) for tests that stop, kill or restart it.

PYTEST_DONT_REWRITE: nothing here relies on assertion rewriting, and test modules may import this
module before pytest loads it as a plugin.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias

import pytest

__all__ = [
    "MemcachedServer",
    "RedisCluster",
    "RedisServer",
    "fresh_memcached_server",
    "fresh_redis_server",
    "join_cluster",
    "killed",
    "meet_cluster",
    "memcached_server",
    "redis_cluster",
    "redis_server",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 1.0
POLL_INTERVAL = 0.01
PORT_ATTEMPTS = 5
CLUSTER_SLOTS = 16384
CLUSTER_JOIN_TIMEOUT = 30.0  # only reached when something is broken
MEET_AGAIN = 1.5  # seconds; longer than the nodes' 1 s handshake timeout
INSTALL_HINT = "apt-get install -y redis-server memcached"
MEMCACHED_ONE_LINE = (b"VERSION ", b"SERVER_ERROR", b"CLIENT_ERROR")

Reply: TypeAlias = "str | int | bytes | list[Reply] | None"

_live: set[_ServerProcess] = set()


class _PortTakenError(RuntimeError):
    """The chosen port was taken by someone else between picking it and binding it."""


class _RespError(RuntimeError):
    """Redis answered a command with an error reply."""


class _NotReadyError(Exception):
    """The server does not answer yet; poll again."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30, offset: int = 0) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _RespConnection:
    """A minimal RESP2 client, enough to probe and configure a server without redis-py."""

    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")

    def call(self, *args: str | int) -> Reply:
        """Send one command and return its reply; an error reply raises _RespError."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        return self._read()

    def _read(self) -> Reply:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the server")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise _RespError(f"redis replied with an error: {body.decode()}")
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> _RespConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ServerProcess:
    """One engine process on a fixed loopback port, restartable in place."""

    binary: str
    kind: str

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log_offset = 0

    # -- to be provided by each engine -------------------------------------------------------
    def _argv(self, executable: str) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> int:
        """Ask the server for its pid; raise OSError or _NotReadyError while it cannot answer."""
        raise NotImplementedError

    def _pick_ports(self) -> None:
        self._port = _free_port()

    # -- public API ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.kind} server has not been started yet")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        """The pid of the running server process, None when it is not running."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path:
        """The server's private working directory (logs, sockets, cluster state)."""
        if self._dir is None:
            raise RuntimeError(f"{self.kind} server has not been started yet")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def start(self) -> Self:
        """Start the server on a free port and wait until it answers; no-op when running.

        :raises RuntimeError: the binary is missing, or the server did not come up in time.
        """
        if self.running:
            return self
        executable = shutil.which(self.binary)
        if executable is None:
            raise RuntimeError(
                f"{self.binary!r} not found on PATH; the tests need real servers, "
                f"install them with: {INSTALL_HINT}"
            )
        if self._port is not None:
            self._launch(executable)
            return self
        self._dir = Path(tempfile.mkdtemp(prefix=f"cacheplug-{self.kind}-"))
        _live.add(self)
        try:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self._pick_ports()
                try:
                    self._launch(executable)
                except _PortTakenError:
                    if attempt == PORT_ATTEMPTS:
                        raise
                else:
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after a grace period) and remove the files."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._port = None
        _live.discard(self)

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash would; ``restart()`` brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()

    def restart(self) -> None:
        """Stop the server if it runs and start it again on the same port (data is lost)."""
        if self._port is None:
            raise RuntimeError(f"{self.kind} server has no port yet; call start() first")
        self._terminate()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self._port} {state}>"

    # -- internals ----------------------------------------------------------------------------
    def _signal(self, signum: signal.Signals) -> None:
        assert self._proc is not None
        # The server leads its own session, so the group id is its pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signum)

    def _terminate(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def _launch(self, executable: str) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._argv(executable),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            self._proc = None
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            exit_code = self._proc.poll()
            if exit_code is not None:
                log = _tail(self.log_path, offset=self._log_offset)
                if "already in use" in log:
                    raise _PortTakenError(f"port {self._port} is already in use")
                raise RuntimeError(
                    f"{self.kind} server on port {self._port} exited with status {exit_code} "
                    f"during startup; command: {shlex.join(self._argv(self.binary))}\n"
                    f"log tail:\n{log}"
                )
            try:
                pid = self._probe()
            except (OSError, _NotReadyError):
                pid = None
            if pid == self._proc.pid:
                return
            if pid is not None:
                raise _PortTakenError(f"port {self._port} is served by another process ({pid})")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} server on port {self._port} did not answer within "
                    f"{START_TIMEOUT:.0f}s; log tail:\n"
                    f"{_tail(self.log_path, offset=self._log_offset)}"
                )
            time.sleep(POLL_INTERVAL)


class RedisServer(_ServerProcess):
    """A ``redis-server`` process without persistence.

    :param password: sets ``requirepass``; it is then part of :attr:`url`.
    :param unix_socket: also listen on a unix socket in the server's directory.
    :param config: further redis directives, e.g. ``{"maxmemory": "1mb"}``; they win over ours.
    :param extra_args: further command-line arguments, for directives given more than once or
        with several arguments (``--rename-command EVAL eval-off``).
    :param cluster: run as an empty cluster node (used by :class:`RedisCluster`).
    :param binary: the executable to run.
    """

    kind = "redis"

    def __init__(
        self,
        *,
        password: str | None = None,
        unix_socket: bool = False,
        config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        cluster: bool = False,
        binary: str = "redis-server",
    ) -> None:
        super().__init__(binary)
        self.password = password
        self._use_unix_socket = unix_socket
        self._config = dict(config or {})
        self._extra_args = list(extra_args)
        self._cluster = cluster
        self._bus_port: int | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def unix_socket(self) -> str | None:
        """Path of the unix socket, None unless created with ``unix_socket=True``."""
        return str(self.directory / "redis.sock") if self._use_unix_socket else None

    def command(self, *args: str | int, timeout: float = STOP_TIMEOUT) -> Reply:
        """Run one command on this server through a short-lived raw connection.

        :raises RuntimeError: redis answered with an error.
        :raises OSError: the server cannot be reached.
        """
        with _RespConnection(self.host, self.port, timeout=timeout) as conn:
            if self.password:
                conn.call("AUTH", self.password)
            return conn.call(*args)

    def flush(self) -> None:
        """Delete every key in every database."""
        self.command("FLUSHALL")

    @property
    def bus_port(self) -> int:
        """The cluster bus port of a cluster node."""
        if self._bus_port is None:
            raise RuntimeError("not a started cluster node")
        return self._bus_port

    def _pick_ports(self) -> None:
        super()._pick_ports()
        if self._cluster:
            # Set explicitly: the default bus port (port + 10000) may exceed 65535.
            self._bus_port = _free_port()

    def _argv(self, executable: str) -> list[str]:
        settings = {
            "port": str(self.port),
            "bind": HOST,
            "daemonize": "no",
            "save": "",
            "appendonly": "no",
            "dir": str(self.directory),
            "logfile": "",
        }
        if self.password:
            settings["requirepass"] = self.password
        if self._use_unix_socket:
            assert self.unix_socket is not None
            settings["unixsocket"] = self.unix_socket
            settings["unixsocketperm"] = "700"
        if self._cluster:
            assert self._bus_port is not None
            settings["cluster-enabled"] = "yes"
            settings["cluster-config-file"] = "nodes.conf"
            settings["cluster-node-timeout"] = "1000"
            settings["cluster-port"] = str(self._bus_port)
        settings.update(self._config)
        args = [executable]
        for name, value in settings.items():
            args += [f"--{name}", value]
        return args + self._extra_args

    def _probe(self) -> int:
        try:
            info = self.command("INFO", "server", timeout=PROBE_TIMEOUT)
        except _RespError as err:
            raise _NotReadyError from err
        if not isinstance(info, bytes):
            raise _NotReadyError
        for line in info.decode().splitlines():
            if line.startswith("process_id:"):
                return int(line.partition(":")[2])
        raise _NotReadyError


class MemcachedServer(_ServerProcess):
    """A ``memcached`` process (TCP only, UDP off).

    :param memory_mb: item memory limit, small values make eviction easy to provoke.
    :param extra_args: further command-line arguments for memcached.
    :param binary: the executable to run.
    """

    kind = "memcached"

    def __init__(
        self,
        *,
        memory_mb: int = 64,
        extra_args: Sequence[str] = (),
        binary: str = "memcached",
    ) -> None:
        super().__init__(binary)
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"memcached://{self.host}:{self.port}"

    def _request(self, line: str, timeout: float = STOP_TIMEOUT) -> list[str]:
        """Send a ``version``, ``stats`` or ``flush_all`` command and return the reply lines."""
        with socket.create_connection(self.address, timeout=timeout) as sock:
            sock.sendall(line.encode() + b"\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("memcached closed the connection")
                data += chunk
                lines = data.split(b"\r\n")
                if len(lines) > 1 and not lines[-1]:
                    last = lines[-2]
                    if last in (b"END", b"OK", b"ERROR") or last.startswith(MEMCACHED_ONE_LINE):
                        return [part.decode() for part in lines[:-1]]

    def flush(self) -> None:
        """Invalidate every item."""
        reply = self._request("flush_all")
        if reply != ["OK"]:
            raise RuntimeError(f"memcached flush_all failed: {reply}")

    def _argv(self, executable: str) -> list[str]:
        args = [executable, "-l", HOST, "-p", str(self.port), "-U", "0"]
        args += ["-m", str(self.memory_mb), "-c", "1024"]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root otherwise
        return args + self.extra_args

    def _probe(self) -> int:
        if not self._request("version", PROBE_TIMEOUT)[0].startswith("VERSION "):
            raise _NotReadyError
        for line in self._request("stats", PROBE_TIMEOUT):
            if line.startswith("STAT pid "):
                return int(line.split()[2])
        raise _NotReadyError


class RedisCluster:
    """A Redis Cluster of three masters without replicas, slots split evenly.

    The nodes are plain :class:`RedisServer` objects (``.servers``), so a test can kill or restart
    one of them.
    """

    def __init__(self, masters: int = 3, *, binary: str = "redis-server") -> None:
        self.servers = [RedisServer(cluster=True, binary=binary) for _ in range(masters)]

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [server.address for server in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.nodes)

    @property
    def running(self) -> bool:
        return all(server.running for server in self.servers)

    def start(self) -> RedisCluster:
        """Start the nodes, join them, assign the slots and wait for ``cluster_state:ok``.

        After a node was killed, start the dead nodes again on their ports instead.
        """
        if self.running:
            return self
        if any(server._port is not None for server in self.servers):
            # Bring back the nodes that died; they rejoin from their saved cluster config.
            for server in self.servers:
                server.start()
            self._wait_ok()
            return self
        try:
            for server in self.servers:
                server.start()
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def restart(self) -> None:
        """Restart every node on its port; the nodes rejoin from their saved cluster config."""
        for server in self.servers:
            server.restart()
        self._wait_ok()

    def flush(self) -> None:
        """Delete every key on every node."""
        for server in self.servers:
            server.flush()

    def _create(self) -> None:
        join_cluster(self.servers)
        self._wait_ok()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        expected = {
            "cluster_state": "ok",
            "cluster_slots_assigned": str(CLUSTER_SLOTS),
            "cluster_known_nodes": str(len(self.servers)),
        }
        while True:
            states = [self._info(server) for server in self.servers]
            if all(expected.items() <= state.items() for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis cluster {self.url} did not reach cluster_state:ok within "
                    f"{START_TIMEOUT:.0f}s: {states}; log tail of the first node:\n"
                    f"{_tail(self.servers[0].log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    @staticmethod
    def _info(server: RedisServer) -> dict[str, str]:
        reply = server.command("CLUSTER", "INFO")
        pairs = (line.partition(":") for line in _text(reply).splitlines())
        return {name: value for name, _, value in pairs}

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisCluster {self.url if self.running else 'stopped'}>"


def join_cluster(servers: Sequence[RedisServer], replicas: int = 0) -> None:
    """Make started cluster nodes one cluster: the first ``len(servers) // (1 + replicas)`` are
    primaries holding the slots in even spans, each of the others replicates one of them in turn.

    Returns once every node knows every other and each replica follows its primary.

    :raises RuntimeError: the nodes did not join within ``CLUSTER_JOIN_TIMEOUT``, with what each
        node saw.
    """
    count = len(servers) // (1 + replicas)
    primaries = servers[:count]
    for index, server in enumerate(primaries):
        start, end = CLUSTER_SLOTS * index // count, CLUSTER_SLOTS * (index + 1) // count
        # Distinct epochs, as `redis-cli --cluster create` does, so no epoch collision
        # has to be resolved before the cluster settles.
        server.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        server.command("CLUSTER", "ADDSLOTSRANGE", start, end - 1)
    deadline = time.monotonic() + CLUSTER_JOIN_TIMEOUT
    meet_cluster(servers, deadline)
    for index, server in enumerate(servers[count:]):
        primary = _text(primaries[index % count].command("CLUSTER", "MYID"))
        # Refused until the replica has heard that the node is a primary.
        while True:
            try:
                server.command("CLUSTER", "REPLICATE", primary)
                break
            except _RespError:
                _check_deadline(deadline, "replicate", {server: _peers(server)})
                time.sleep(POLL_INTERVAL)


def meet_cluster(servers: Sequence[RedisServer], deadline: float | None = None) -> None:
    """Introduce each node the first one does not know yet to it, and wait until every node
    knows all the others.

    A node forgets a handshake that takes longer than ``cluster-node-timeout`` (1 s here, which a
    loaded machine can exceed), and the cluster then never forms (``redis-cli --cluster create``
    waits forever): a node the first one still does not know is met again.

    :raises RuntimeError: past ``deadline`` (``CLUSTER_JOIN_TIMEOUT`` from now by default).
    """
    if deadline is None:
        deadline = time.monotonic() + CLUSTER_JOIN_TIMEOUT
    first = servers[0]
    met: dict[RedisServer, float] = {}
    while True:
        known = _peers(first)
        for server in servers[1:]:
            if server.address not in known and time.monotonic() - met.get(server, 0) >= MEET_AGAIN:
                met[server] = time.monotonic()
                # Refused while a handshake with that address is still in progress.
                with contextlib.suppress(_RespError):
                    first.command("CLUSTER", "MEET", server.host, server.port, server.bus_port)
        views = {server: _peers(server) for server in servers}
        if all(
            views[server] >= {s.address for s in servers if s is not server} for server in servers
        ):
            return
        _check_deadline(deadline, "join", views)
        time.sleep(POLL_INTERVAL)


def _peers(server: RedisServer) -> set[tuple[str, int]]:
    """The addresses of the other nodes ``server`` knows and has completed a handshake with."""
    peers = set()
    for line in _text(server.command("CLUSTER", "NODES")).splitlines():
        _, address, flags = line.split()[:3]
        if not {"myself", "handshake", "noaddr"} & set(flags.split(",")):
            host, _, port = address.partition("@")[0].rpartition(":")
            peers.add((host, int(port)))
    return peers


def _check_deadline(
    deadline: float, step: str, views: Mapping[RedisServer, set[tuple[str, int]]]
) -> None:
    if time.monotonic() > deadline:
        seen = "; ".join(f"{server.port} knows {sorted(view)}" for server, view in views.items())
        raise RuntimeError(
            f"redis cluster nodes did not {step} within {CLUSTER_JOIN_TIMEOUT:.0f}s: {seen}"
        )


def _text(reply: Reply) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@contextlib.contextmanager
def killed(servers: Iterable[_ServerProcess]) -> Iterator[None]:
    """The ``servers`` killed (SIGKILL) for the block, then started again on their ports."""
    stopped = list(servers)
    for server in stopped:
        server.kill()
    try:
        yield
    finally:
        for server in stopped:
            server.restart()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


# -- pytest fixtures ------------------------------------------------------------------------------


def _discard(server: _ServerProcess | RedisCluster) -> None:
    # Nothing is persisted, so skip the graceful shutdown (memcached spends 1 s in it).
    server.kill()
    server.stop()


#: The session's shared servers started so far in this process.
_shared: list[RedisServer | RedisCluster | MemcachedServer] = []


@contextlib.contextmanager
def _shared_server(
    server: RedisServer | RedisCluster | MemcachedServer,
) -> Iterator[None]:
    _shared.append(server)
    try:
        yield
    finally:
        _shared.remove(server)
        _discard(server)


@pytest.fixture(scope="module", autouse=True)
def _shared_servers_emptied() -> None:
    """Each test file starts on empty shared servers, whichever files ran before it in this
    process: pytest-xdist gives each worker its own share of the files, in no fixed order."""
    for server in _shared:
        if server.running:
            server.flush()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the whole session, with a unix socket; the tests of a file share
    its data."""
    server = RedisServer(unix_socket=True).start()
    with _shared_server(server):
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One three-master Redis Cluster for the whole session; the tests of a file share its
    data."""
    cluster = RedisCluster().start()
    with _shared_server(cluster):
        yield cluster


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One Memcached server for the whole session; the tests of a file share its data."""
    server = MemcachedServer().start()
    with _shared_server(server):
        yield server


@pytest.fixture(scope="module")
def memcached_pair(memcached_server: MemcachedServer) -> Iterator[list[MemcachedServer]]:
    """Two memcached servers: the session's and one of the module's."""
    second = MemcachedServer().start()
    yield [memcached_server, second]
    second.kill()
    second.stop()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A Redis server of the test's own, free to be stopped, killed or restarted."""
    server = RedisServer(unix_socket=True).start()
    yield server
    _discard(server)


@pytest.fixture
def fresh_memcached_server() -> Iterator[MemcachedServer]:
    """A Memcached server of the test's own, free to be stopped, killed or restarted."""
    server = MemcachedServer().start()
    yield server
    _discard(server)
