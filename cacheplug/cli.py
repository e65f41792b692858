"""The ``cacheplug`` command: ``demo``, ``check``, ``plugins`` and ``--version``.

Exit status: 0 on success, 1 when the cache misbehaves or its server cannot be reached,
2 for a bad command line or cache URL.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from cacheplug import __version__
from cacheplug.core.errors import did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from cacheplug.core.base import BaseCache
    from cacheplug.core.url import CacheURL

__all__ = ["main"]

DEFAULT_URL = "simple://"
ENV_URL = "CACHE_URL"
EXIT_FAILED = 1
EXIT_USAGE = 2
_MASK = "***"
_MAX_DELAY_MS = 3_600_000.0  # an hour per call: more is surely a typo
#: The shortest secret masked wherever an engine's error holds it: a shorter one turns up in
#: ordinary text by chance ('1' in '127.0.0.1', 'password' in redis-py's 'invalid
#: username-password pair'), and the mask would show it by where it lands.
_MIN_SCRUBBED = 12


class _Problem(Exception):
    """A failure to report on stderr, with the exit status to return."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class _FirstFailure(logging.Filter):
    """Keeps the engine error behind the first failure the cache logs, and lets it through.

    A filter, not a handler: the line still reaches stderr as before.
    """

    def __init__(self) -> None:
        from cacheplug.core.stats import CONTRACT_SAYS

        super().__init__()
        self.cause = ""
        self._said = CONTRACT_SAYS

    def filter(self, record: logging.LogRecord) -> bool:
        _, said, cause = record.getMessage().partition(self._said)
        if said and not self.cause:
            self.cause = cause
        return True


class _Target:
    """A cache built from a URL, with what is needed to talk about it without leaking secrets.

    Used as a context manager: it closes the cache and remembers why the engine failed.
    """

    def __init__(self, url: str, origin: str = "", **overrides: Any) -> None:
        from cacheplug.core.errors import CacheplugError
        from cacheplug.core.url import from_url, is_secret_option, is_secret_value, parse_url

        try:
            self.url: CacheURL = parse_url(url)
            self.cache: BaseCache = from_url(url, **overrides)
        except (CacheplugError, ValueError) as err:
            raise _Problem(f"{err} {origin}".rstrip(), EXIT_USAGE) from err
        query = self.url.query.items()
        self._secrets = [self.url.password or ""] + [v for n, v in query if is_secret_option(n)]
        # a whole value hiding a secret ('app;secret=...'): a repr may show it (key_prefix)
        self._hiding = [v for n, v in query if is_secret_value(n, v) and not is_secret_option(n)]
        self._failure = _FirstFailure()

    def __enter__(self) -> BaseCache:
        logging.getLogger("cacheplug").addFilter(self._failure)
        return self.cache.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        logging.getLogger("cacheplug").removeFilter(self._failure)
        self.cache.__exit__(kind, error, traceback)

    def scrub(self, text: str) -> str:
        """``text`` (an engine's error, the cache's repr) with the URL's secrets masked.

        Every URL in it is masked by its structure, whatever its password, and so is a value
        hiding a secret option; a secret standing alone is masked only when it is long enough
        (``_MIN_SCRUBBED``) not to be there by chance.
        """
        from cacheplug.core.url import redact_text

        text = redact_text(text)
        for value in self._hiding:  # holds 'name=': never there by chance
            text = text.replace(value, _MASK)
        for secret in self._secrets:
            if len(secret) >= _MIN_SCRUBBED:
                text = text.replace(secret, _MASK)
        return text

    def unreachable(self) -> str:
        from cacheplug.backends.filesystem import FileSystemCache

        shown = self.scrub(repr(self.cache))
        url = self.url.redacted()
        cause = self.scrub(self._failure.cause)
        # redis-py's cluster client gives only the text of the last node's error
        _, cluster, answer = cause.partition(_CLUSTER_UNREACHABLE)
        # redis-py's names for a refused login and for a command the ACL forbids
        tls = self.url.scheme == "rediss" or self.url.query.get("ssl", "").lower() in _TRUE
        login_refused = cause.startswith("Authentication") or (
            bool(cluster) and answer.startswith(_LOGIN_REFUSED)
        )
        if login_refused and not (self.url.password or self.url.query.get("password")):
            message = (
                f"the server at {url} asks for a password and the URL gives none: put "
                "':password@' before the host (or 'user:password@' for an ACL user)"
            )
        elif login_refused:  # also AuthenticationWrongNumberOfArgsError
            message = (
                f"the server at {url} refused the login: are the user name and password right?"
            )
        elif cause.startswith("NoPermissionError"):
            message = f"the server at {url} refused a command: may this user (ACL) run it?"
        elif cluster and answer.startswith("Cluster mode is not enabled"):
            message = (
                f"the server at {url} answered, but is not a Redis Cluster node (cluster mode "
                "is not enabled): for a single Redis server write redis://host:port/0"
            )
        elif cause.startswith(_FOREIGN_REPLY) or (cluster and answer.startswith("Protocol error")):
            message = (
                f"the server at {url} answered, but not as {self.url.scheme}:// expects: "
                "is another kind of server (Redis, memcached, ...) listening on that port?"
            )
        elif _CERTIFICATE_REFUSED in cause:
            message = (
                f"the server at {url} speaks TLS, but its certificate was refused: give the CA "
                "that signed it as ?ssl_ca_certs=/path/to/ca.pem, and connect by a host name "
                "the certificate names"
            )
        elif not tls and self.url.scheme in _TLS_SCHEMES and cause.endswith(_HUNG_UP):
            message = (
                f"the server at {url} accepted the connection and closed it without a reply: "
                "if that port speaks only TLS, write rediss:// (or add ?ssl=true); otherwise, "
                "is a Redis server listening there?"
            )
        elif cause.startswith("ResponseError: DB index is out of range"):
            message = (
                f"the server at {url} has no database of that number: Redis numbers them from 0 "
                "to its 'databases' setting minus one (0 to 15 by default)"
            )
        elif cause.startswith("ReadOnlyError"):
            message = f"the server at {url} is a read-only replica: point the URL at its primary"
        elif cause.startswith("OutOfMemoryError"):
            message = (
                f"the server at {url} is full (maxmemory) and refuses writes: raise its "
                "maxmemory, or give it an eviction policy such as maxmemory-policy allkeys-lru"
            )
        elif cause.startswith("ResponseError"):  # MISCONF, a renamed command, ...
            message = f"the server at {url} answered the write with an error"
        elif isinstance(self.cache, FileSystemCache):  # no server: the directory refused
            message = (
                f"cannot write to the cache at {url}: may this process write there, "
                "and is the disk not full?"
            )
        else:
            message = (
                f"cannot reach the cache at {url}: is the server running and reachable from here?"
            )
            if tls:
                message += " Does it speak TLS on that port?"
        return f"{message} ({shown})" + (f"\n  the error: {cause}" if cause else "")

    def probe(self, key: str) -> None:
        """Raise a :class:`_Problem` unless the cache stores and forgets a key."""
        if not self.cache.set(key, 1, 60):
            raise _Problem(self.unreachable())
        self.cache.delete(key)


#: How redis-py and pymemcache name a reply in another protocol (a port of another server).
_FOREIGN_REPLY = ("InvalidResponse", "MemcacheUnknownError")
_TRUE = ("true", "1", "yes", "on")
_CLUSTER_UNREACHABLE = (
    "Redis Cluster cannot be connected. Please provide at least one reachable node: "
)
#: How redis-py says a server hung up on the first command (a TLS-only port hears plain text).
_HUNG_UP = ("Connection reset by peer')", "Connection closed by server.")
_TLS_SCHEMES = ("redis", "redis+cluster")  # plain-text URLs that ?ssl=true turns to TLS
#: How OpenSSL says it did not trust the server's certificate (self-signed, other host name).
_CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
#: How Redis words a refused login (no password given, a wrong one, a HELLO before AUTH).
_LOGIN_REFUSED = ("NOAUTH", "Authentication required", "invalid username-password", "HELLO must")


def _token() -> str:
    import secrets

    return secrets.token_hex(4)


# -- demo --------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    import threading
    import time

    from cacheplug.core.serializer import serializer_name

    url, origin = _url_of(args)
    target = _Target(url, origin)
    delay = args.delay_ms / 1000
    executions = 0
    with target as cache:
        target.probe(f"cacheplug-demo:{_token()}:probe")

        @cache.memoize(timeout=60, key_prefix=f"cacheplug-demo:{_token()}")
        def slow_sum(n: int) -> int:
            nonlocal executions
            executions += 1
            threading.Event().wait(delay)  # stands in for a slow query or computation
            return sum(range(n))

        cold: list[float] = []
        warm: list[float] = []
        for round_ in range(args.rounds):
            for n in range(args.keys):
                started = time.perf_counter()
                slow_sum(n)
                (cold if round_ == 0 else warm).append(time.perf_counter() - started)
        for n in range(args.keys):
            slow_sum.invalidate(n)
        errors = cache.stats().get("errors", 0)

    calls = len(cold) + len(warm)
    cold_ms = 1000 * sum(cold) / len(cold)
    warm_ms = 1000 * sum(warm) / len(warm) if warm else 0.0
    rows = [
        ("cache", target.scrub(repr(cache))),
        ("url", target.url.redacted()),
        ("serializer", serializer_name(cache.serializer)),
        (
            "workload",
            f"{_count(args.rounds, 'round')} over {_count(args.keys, 'argument')}, "
            f"{args.delay_ms:g} ms each",
        ),
        ("calls", str(calls)),
        ("executions", str(executions)),
        ("hit ratio", f"{100 * (calls - executions) / calls:.1f}%"),
        ("cold", f"{cold_ms:.3f} ms per call (first round)"),
        ("warm", f"{warm_ms:.3f} ms per call (later rounds)" if warm else "n/a (one round)"),
        ("speed-up", _speed_up(cold_ms, warm_ms, hits=calls - executions)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")
    if errors:
        print(f"warning: the cache reported {errors} backend errors during the demo")
    return 0


def _speed_up(cold_ms: float, warm_ms: float, hits: int) -> str:
    if warm_ms <= 0:
        return "n/a"
    if not hits:  # the warm calls ran the function too: their ratio is noise, not the cache's
        return "none: no call was served from the cache"
    return f"{cold_ms / warm_ms:.1f}x"


def _url_of(args: argparse.Namespace) -> tuple[str, str]:
    """The cache URL of the command line, else of ``$CACHE_URL``, else ``simple://``; and where
    it came from, to end an error message with."""
    if args.url:
        return args.url, ""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL], f"(from environment variable {ENV_URL})"
    return DEFAULT_URL, ""


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# -- check -------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    import time

    from cacheplug.backends.null import NullCache
    from cacheplug.core.url import parse_url

    if not args.url and not os.environ.get(ENV_URL):  # simple:// would check nothing deployed
        args.usage_error(f"the following arguments are required: url (or set {ENV_URL})")
    url, origin = _url_of(args)
    try:
        outer = parse_url(url).query.get("key_prefix", "")
    except ValueError as err:
        raise _Problem(f"{err} {origin}".rstrip(), EXIT_USAGE) from err
    target = _Target(url, origin, key_prefix=f"{outer}cacheplug-check:{_token()}:")
    print(f"checking {target.url.redacted()} ({target.scrub(repr(target.cache))})")
    failed: list[str] = []
    with target as cache:
        try:
            for name, run, expected in _round_trip(cache):
                started = time.perf_counter()
                try:
                    got: object = run()
                except Exception as err:
                    got = err
                elapsed = 1000 * (time.perf_counter() - started)
                if got == expected:
                    print(f"  {name:<12} ok      {elapsed:8.3f} ms")
                    continue
                failed.append(name)
                detail = f"{type(got).__name__}: {got}" if isinstance(got, Exception) else repr(got)
                shown = target.scrub(f"got {detail}, expected {expected!r}")
                print(f"  {name:<12} FAILED  {elapsed:8.3f} ms  {shown}")
                if cache.stats().get("errors", 0) and name == _STEPS[0]:
                    break  # the server is down: every other method would fail the same way
        except BaseException:  # cut short (a reader gone, Ctrl-C): leave no key behind
            cache.clear()
            raise
        errors = cache.stats().get("errors", 0)
    if not failed:
        print(f"all {len(_STEPS)} methods ok")
        return 0
    if errors:
        raise _Problem(target.unreachable())
    message = f"{len(failed)} of {len(_STEPS)} methods failed: {', '.join(failed)}"
    if isinstance(cache, NullCache):
        message += (
            f"; {target.url.scheme}:// (NullCache) stores nothing by design, so every read "
            "misses: check the cache you mean to deploy instead"
        )
    raise _Problem(message)


_STEPS = (
    "set",
    "get",
    "add",
    "has",
    "inc",
    "dec",
    "set_many",
    "get_many",
    "get_dict",
    "delete_many",
    "delete",
    "get_or_set",
    "clear",
)


def _round_trip(cache: BaseCache) -> list[tuple[str, Callable[[], object], object]]:
    """One ``(method, call, expected result)`` per contract method, in an order that builds up."""
    value = {"text": "cacheplug", "numbers": [1, 2, 3]}
    factory_calls: list[int] = []

    def factory() -> str:
        factory_calls.append(1)
        return "made"

    def get_or_set_twice() -> tuple[object, object, int]:
        first = cache.get_or_set("made", factory, 60)
        return first, cache.get_or_set("made", factory, 60), len(factory_calls)

    steps: list[tuple[str, Callable[[], object], object]] = [
        ("set", lambda: cache.set("value", value, 60), True),
        ("get", lambda: cache.get("value"), value),
        ("add", lambda: (cache.add("value", "other"), cache.add("added", "x")), (False, True)),
        ("has", lambda: (cache.has("value"), cache.has("missing")), (True, False)),
        ("inc", lambda: (cache.inc("counter"), cache.inc("counter", 4)), (1, 5)),
        ("dec", lambda: (cache.dec("counter", 2), cache.get("counter")), (3, 3)),
        ("set_many", lambda: sorted(cache.set_many({"a": 1, "b": 2}, 60)), ["a", "b"]),
        ("get_many", lambda: cache.get_many("a", "b", "missing"), [1, 2, None]),
        ("get_dict", lambda: cache.get_dict("a", "b"), {"a": 1, "b": 2}),
        ("delete_many", lambda: sorted(cache.delete_many("a", "b", "missing")), ["a", "b"]),
        ("delete", lambda: (cache.delete("value"), cache.get("value")), (True, None)),
        ("get_or_set", get_or_set_twice, ("made", "made", 1)),
        ("clear", lambda: (cache.clear(), cache.has("added")), (True, False)),
    ]
    assert tuple(name for name, _, _ in steps) == _STEPS
    return steps


# -- plugins -----------------------------------------------------------------------------------

_COLUMNS = ("name", "distribution", "version", "schemes", "serializers", "error")


def _plugins(args: argparse.Namespace) -> int:
    from cacheplug.core.errors import CacheplugError
    from cacheplug.core.plugins import get_plugins

    try:
        plugins = get_plugins()
    except CacheplugError as err:
        raise _Problem(str(err)) from err
    if args.json:
        import json

        print(json.dumps(plugins, indent=2, sort_keys=True))
        return 0
    rows = [[_cell(plugin.get(column)) for column in _COLUMNS] for plugin in plugins]
    widths = [max(len(text) for text in column) for column in zip(_COLUMNS, *rows, strict=True)]
    for row in [list(_COLUMNS), *rows]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        text = ",".join(str(item) for item in value) or "-"
    else:
        text = str(value)
    if text.isprintable():
        return text
    # a plugin's error text is foreign: escape sequences must not drive the terminal
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# -- entry point -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """A parser whose error messages mask every URL of the command line it echoes."""

    #: the command line, whose URL arguments are masked whole
    arguments: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        from cacheplug.core.url import redact_text

        super().error(redact_text(message, self.arguments))


def _parser(arguments: Sequence[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of command line ``arguments``, and its commands."""
    parser = _Parser(
        prog="cacheplug",
        description="Try, check and inspect cacheplug caches configured by URL.",
    )
    parser.add_argument("--version", action="version", version=f"cacheplug {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="memoize a slow function through a cache and show the speed-up",
        description="Memoize a deliberately slow function through the cache built from URL, "
        "call it over a repeating workload and report hits and timings.",
    )
    demo.add_argument("url", nargs="?", help=f"cache URL (default: ${ENV_URL}, else {DEFAULT_URL})")
    demo.add_argument("--keys", type=_positive, default=10, help="distinct arguments (10)")
    demo.add_argument("--rounds", type=_positive, default=5, help="calls per argument (5)")
    demo.add_argument(
        "--delay-ms", type=_delay_ms, default=30.0, help="time per real execution, ms (30)"
    )
    demo.set_defaults(handler=_demo)

    check = commands.add_parser(
        "check",
        help="round-trip every cache method against a URL",
        description="Run every cache method once under a fresh key prefix and report each "
        "result and its time; only keys under that prefix are written and cleared.",
    )
    check.add_argument(
        "url",
        nargs="?",
        help=f"cache URL, e.g. redis://localhost:6379/0 (default: ${ENV_URL}; one is required)",
    )
    check.set_defaults(handler=_check, usage_error=check.error)

    plugins = commands.add_parser(
        "plugins",
        help="list plugins, their schemes and serializers",
        description="List the installed plugins (built-in ones included) with their "
        "distribution, version, URL schemes and serializers, and any error loading them.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plugins.set_defaults(handler=_plugins)
    for each in (parser, *commands.choices.values()):
        each.arguments = arguments
    return parser, list(commands.choices)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def _delay_ms(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of ms, got {text!r}") from None
    if not 0 <= number <= _MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"must be from 0 to {_MAX_DELAY_MS:g} ms, got {text}")
    return number


def _check_command(
    parser: argparse.ArgumentParser, commands: list[str], arguments: list[str]
) -> None:
    """Exit 2 on an unknown command, as argparse does, naming the closest one (argparse
    suggests none before Python 3.14)."""
    # the command comes first: the only options before it are --help and --version
    given = arguments[0] if arguments else None
    if given is not None and not given.startswith("-") and given not in commands:
        parser.error(
            f"argument COMMAND: invalid choice: {given!r} (choose from {', '.join(commands)})"
            f"{did_you_mean(given, commands)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cacheplug`` command; the exit status."""
    stdout = sys.stdout if isinstance(sys.stdout, io.TextIOWrapper) else None
    errors = stdout.errors if stdout is not None else ""
    if stdout is not None:
        # a path or prefix the terminal's encoding cannot show (ascii, latin-1) is escaped, as
        # Python does on stderr, instead of ending the command in a UnicodeEncodeError
        stdout.reconfigure(errors="backslashreplace")
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # output buffered for a pipe fails here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the exit flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if stdout is not None and not stdout.closed:  # a program calling main() keeps its own
            stdout.reconfigure(errors=errors)


def _run(argv: Sequence[str] | None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _parser(arguments)
    _check_command(parser, commands, arguments)
    args = parser.parse_args(arguments)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _Problem as problem:
        print(f"cacheplug {args.command}: error: {problem}", file=sys.stderr)
        return problem.status
    except KeyboardInterrupt:
        return 130
