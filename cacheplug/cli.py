"""The ``cacheplug`` command: ``demo``, ``check``, ``plugins`` and ``--version``.

Exit status: 0 on success, 1 when the cache misbehaves or its server cannot be reached,
2 for a bad command line or cache URL.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from cacheplug import __version__
from cacheplug._cli_demo import run_demo
from cacheplug._cli_problem import EXIT_FAILED, EXIT_USAGE, Problem
from cacheplug._cli_target import DEFAULT_URL, ENV_URL, Target, token, url_of
from cacheplug.core.errors import did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cacheplug.core.base import BaseCache

__all__ = ["main"]

_MAX_DELAY_MS = 3_600_000.0  # an hour per call: more is surely a typo


# -- check -------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    import time

    from cacheplug.backends.null import NullCache
    from cacheplug.core.url import parse_url

    if not args.url and not os.environ.get(ENV_URL):  # simple:// would check nothing deployed
        args.usage_error(f"the following arguments are required: url (or set {ENV_URL})")
    url, origin = url_of(args)
    try:
        outer = parse_url(url).query.get("key_prefix", "")
    except ValueError as err:
        raise Problem(f"{err} {origin}".rstrip(), EXIT_USAGE) from err
    target = Target(url, origin, key_prefix=f"{outer}cacheplug-check:{token()}:")
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
        raise Problem(target.unreachable())
    message = f"{len(failed)} of {len(_STEPS)} methods failed: {', '.join(failed)}"
    if isinstance(cache, NullCache):
        message += (
            f"; {target.url.scheme}:// (NullCache) stores nothing by design, so every read "
            "misses: check the cache you mean to deploy instead"
        )
    raise Problem(message)


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
        raise Problem(str(err)) from err
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
    demo.set_defaults(handler=run_demo)

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
    except Problem as problem:
        print(f"cacheplug {args.command}: error: {problem}", file=sys.stderr)
        return problem.status
    except KeyboardInterrupt:
        return 130
