"""The ``cacheplug`` command: ``demo``, ``check``, ``plugins`` and ``--version``.

Exit status: 0 on success, 1 when the cache misbehaves or its server cannot be reached,
2 for a bad command line or cache URL.

This module holds the command line's parser, :func:`main` and the dispatch to a command. Each
command lives in its own module: ``_cli_demo``, ``_cli_check`` and ``_cli_plugins``; the cache
a command works on and the masking of its secrets in ``_cli_target``; the failure a command
reports, with its exit status, in ``_cli_problem``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from cacheplug import __version__
from cacheplug._cli_check import run_check
from cacheplug._cli_demo import run_demo
from cacheplug._cli_plugins import run_plugins
from cacheplug._cli_problem import EXIT_FAILED, Problem
from cacheplug._cli_target import DEFAULT_URL, ENV_URL
from cacheplug.core.errors import did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]

_MAX_DELAY_MS = 3_600_000.0  # an hour per call: more is surely a typo


class _Parser(argparse.ArgumentParser):
    """A parser whose error messages mask every URL of the command line it echoes."""

    #: the command line, whose URL arguments are masked whole
    arguments: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        from cacheplug.core.redaction import redact_text

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
    check.set_defaults(handler=run_check, usage_error=check.error)

    plugins = commands.add_parser(
        "plugins",
        help="list plugins, their schemes and serializers",
        description="List the installed plugins (built-in ones included) with their "
        "distribution, version, URL schemes and serializers, and any error loading them.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plugins.set_defaults(handler=run_plugins)
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
