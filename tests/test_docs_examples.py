"""Every code example of README.md and docs/*.md runs, and shows what the code does.

Each fenced block is found by its page and its first line and handled by its entry in
:data:`BLOCKS`; a block missing from that table fails (add it there), and so does an entry whose
block is gone. The handlers:

- :class:`Run`: a ``python`` block executed as written, after an explicit substitution table
  (documented text -> text with placeholders such as ``{redis}``, see :data:`PLACEHOLDERS`, that
  point it at this session's real servers and a temporary directory). A trailing comment that
  shows a value (``# True``, ``# {'name': 'Ada'}``, ``# [1, 2, 3], a fresh copy``) is asserted.
  Every cache the block builds then makes a real round trip, unless its line is listed as
  ``offline`` (hosts that exist only in the example: its repr must show them). Lines shaped
  like a signature are compared with the real one instead of being run.
- :class:`Shell`: ``bash``/``console`` blocks; every command is either run (``cacheplug ...``,
  in a new interpreter) or listed with the reason it is not.
- :class:`Doctest`, :class:`Synopsis`, :class:`Custom`: ``>>>`` sessions, the command summaries
  (checked against the parser's ``--help``) and one-off checks (error messages, a layout, a
  ``pyproject.toml``).
- :class:`Skip`: a block that cannot run, with the reason.

The other tests check every relative link (file and anchor) and that the option tables of
docs/configuration.md match what ``from_url`` accepts, in both directions.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import importlib
import inspect
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import tokenize
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import redis
from plugin_dists import installed_in_place, write_distribution
from servers import RedisServer
from tls_files import DOCUMENTED_PASSPHRASE, documented_files, with_real_files

import cacheplug
from cacheplug import BaseCache, SerializationError, SimpleCache, from_url
from cacheplug.cli import main as cli_main
from cacheplug.core.plugins import (
    backend_schemes,
    get_backend_class,
    register_plugin,
    reset_plugins,
)
from cacheplug.core.url import SHARED_OPTIONS, parse_url

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLE = REPO / "examples" / "cacheplug-example-plugin"
PROBE_KEY = "docs-examples:probe"
#: The database of the session's Redis server that examples counting from zero get, flushed first.
CLEAN_DB = 11
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


# -- the blocks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # path relative to the repository
    line: int  # line number of the block's first line
    lang: str
    text: str

    @property
    def head(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    def matches(self, key: tuple[str, str]) -> bool:
        """Whether a table key ``(page, start of the first line)`` names this block."""
        return self.page == key[0] and self.head.startswith(key[1])

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, dedented to their fence."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        start = index
        while not lines[index].strip().startswith("```"):
            index += 1
        text = textwrap.dedent("\n".join(lines[start:index])) + "\n"
        blocks.append(Block(str(page.relative_to(REPO)), start + 1, opening.group(2), text))
        index += 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def find_block(key: tuple[str, str]) -> Block:
    """The one block a table key names."""
    found = [block for block in ALL_BLOCKS if block.matches(key)]
    assert len(found) == 1, f"{key!r} names {len(found)} blocks, not one: fix BLOCKS"
    return found[0]


# -- the context: servers, directories and placeholders -----------------------------------------


class Context:
    """What a handler may use: fixtures, fetched only when a block needs them."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request = request
        self.tmp_path = tmp_path
        self._values: dict[str, str] = {}

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def fill(self, template: str) -> str:
        """``template`` with each ``{placeholder}`` replaced by its value for this test."""
        return template.format_map(_Placeholders(self))

    def value(self, name: str) -> str:
        if name not in self._values:
            self._values[name] = PLACEHOLDERS[name](self)
        return self._values[name]

    def site(self) -> Path:
        """A directory on which ``cacheplug-example-plugin`` looks installed (dist-info only;
        its sources stay in examples/, added to ``PYTHONPATH`` by :meth:`env`)."""
        site = self.tmp_path / "site"
        if not site.exists() and not installed_in_place(EXAMPLE / "src"):
            write_distribution(
                site,
                "cacheplug-example-plugin",
                "0.1.0",
                {"example": "cacheplug_example.plugin"},
                {},
            )
        return site

    def env(self, *, plugin: bool = False) -> dict[str, str]:
        """This process's environment without cache settings; with the example plugin
        installed when ``plugin``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CACHEPLUG_") and k not in {"CACHE_URL", "PYTHONPATH"}
        }
        if plugin:
            env["PYTHONPATH"] = os.pathsep.join([str(self.site()), str(EXAMPLE / "src")])
        return env


class _Placeholders(dict[str, str]):
    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx

    def __missing__(self, name: str) -> str:
        return self.ctx.value(name)


def _address(server: Any) -> str:
    return f"{server.host}:{server.port}"


def _clean_db(ctx: Context) -> str:
    server = ctx.fixture("redis_server")
    with redis.Redis(host=server.host, port=server.port, db=CLEAN_DB) as client:
        client.flushdb()
    return str(CLEAN_DB)


def _cluster_node(index: int, part: int) -> Callable[[Context], str]:
    return lambda ctx: str(ctx.fixture("redis_cluster").nodes[index][part])


#: Placeholders usable in substitutions: name -> its value for the running test.
PLACEHOLDERS: Mapping[str, Callable[[Context], str]] = {
    "redis": lambda ctx: _address(ctx.fixture("redis_server")),
    "redis_host": lambda ctx: str(ctx.fixture("redis_server").host),
    "redis_port": lambda ctx: str(ctx.fixture("redis_server").port),
    "clean_db": _clean_db,
    # a server whose password is the examples' "secret"
    "redis_secret": lambda ctx: _address(ctx.fixture("secret_redis_server")),
    "cluster_host0": _cluster_node(0, 0),
    "cluster_port0": _cluster_node(0, 1),
    "cluster_host1": _cluster_node(1, 0),
    "cluster_port1": _cluster_node(1, 1),
    "memcached": lambda ctx: _address(ctx.fixture("memcached_server")),
    "memcached2": lambda ctx: _address(ctx.fixture("fresh_memcached_server")),
    "tmp": lambda ctx: str(ctx.tmp_path),
}


@pytest.fixture(scope="module")
def secret_redis_server() -> Iterator[RedisServer]:
    server = RedisServer(password="secret").start()
    yield server
    server.kill()
    server.stop()


# -- running python blocks ----------------------------------------------------------------------

Namespace: TypeAlias = dict[str, Any]
LITERAL_START = re.compile(r"[-\[{(\d'\"]|(?:True|False|None)\b")


def shown_result(comment: str) -> tuple[bool, Any]:
    """``(True, value)`` when a comment starts with a Python literal, as in ``# 1, atomic``."""
    text = comment.lstrip("#").strip()
    if not LITERAL_START.match(text):
        return False, None
    for end in range(1, len(text) + 1):
        if end < len(text) and text[end] not in " ,:;":
            continue
        with contextlib.suppress(ValueError, SyntaxError, TypeError):
            return True, ast.literal_eval(text[:end])
    raise AssertionError(f"comment {comment!r} starts like a value but none can be read from it")


def check_signature(line: str, target: object) -> None:
    """A documented ``Name(param=default, *, ...)`` line matches ``target``'s signature."""
    name, _, params = line.partition("(")
    parsed = ast.parse(f"def {name.strip()}({params}: pass").body[0]
    assert isinstance(parsed, ast.FunctionDef)
    args = parsed.args
    documented: list[tuple[str, inspect._ParameterKind, str | None]] = []
    defaults: list[ast.expr | None] = [None] * (len(args.args) - len(args.defaults))
    for arg, default in zip(args.args, defaults + list(args.defaults), strict=True):
        documented.append((arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, _source(default)))
    if args.vararg:
        documented.append((args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        documented.append((arg.arg, inspect.Parameter.KEYWORD_ONLY, _source(kw_default)))
    if args.kwarg:
        documented.append((args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    actual = list(inspect.signature(target).parameters.values())  # type: ignore[arg-type]
    assert [(n, k) for n, k, _ in documented] == [(p.name, p.kind) for p in actual], line
    scope = {"time": time, **vars(cacheplug)}
    for (pname, _, shown), param in zip(documented, actual, strict=True):
        if shown is None:
            assert param.default is inspect.Parameter.empty, f"{pname} has a default: {line}"
        else:
            assert eval(shown, scope) == param.default, f"default of {pname}: {line}"


def _source(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


class _Instrument(ast.NodeTransformer):
    """Passes the value of every top-level expression and assigned call through ``__seen__``."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        for statement in node.body:
            if isinstance(statement, ast.Expr) or (
                isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call)
            ):
                statement.value = ast.Call(
                    ast.Name("__seen__", ast.Load()),
                    [statement.value, ast.Constant(statement.lineno)],
                    [],
                )
        return ast.fix_missing_locations(node)


@dataclass(frozen=True)
class Run:
    """Run a python block as written, after ``subs`` (text in the block -> replacement)."""

    subs: Mapping[str, str] = field(default_factory=dict)
    setup: str = ""  # names the block takes from its page's prose
    after: str | None = None  # head of an earlier block of the page whose namespace this continues
    # lines whose cache points at a host that exists only in the example -> what its repr shows
    offline: Mapping[str, str] = field(default_factory=dict)
    signatures: Mapping[str, object] = field(default_factory=dict)  # line head -> the real thing
    then: Callable[[Namespace, Context], None] | None = None  # checks after the block

    def __call__(self, block: Block, ctx: Context) -> None:
        caches: list[BaseCache] = []
        try:
            self.run(block, ctx, caches)
            for cache in caches:
                assert cache.set(PROBE_KEY, "probe") is True, f"{block.where}: {cache!r} set"
                assert cache.get(PROBE_KEY) == "probe", f"{block.where}: {cache!r} get"
                assert cache.delete(PROBE_KEY) is True, f"{block.where}: {cache!r} delete"
        finally:
            for cache in caches:
                cache.close()

    def run(self, block: Block, ctx: Context, caches: list[BaseCache]) -> Namespace:
        namespace: Namespace = {"__name__": "docs_example"}
        if self.after is not None:
            key = (block.page, self.after)
            earlier, handler = find_block(key), BLOCKS[key]
            assert isinstance(handler, Run), f"{earlier.where} is not run"
            namespace = handler.run(earlier, ctx, caches)
        exec(self.setup, namespace)
        source = block.text
        for text, replacement in self.subs.items():
            assert text in source, f"{block.where}: {text!r} is no longer in the block; fix BLOCKS"
            source = source.replace(text, ctx.fill(replacement))
        lines = source.splitlines()
        assert len(lines) == len(block.text.splitlines()), "a substitution must not add lines"
        for head, target in self.signatures.items():
            found = [i for i, line in enumerate(lines) if line.startswith(head)]
            assert found, f"{block.where}: no line starts with {head!r}; fix BLOCKS"
            for i in found:
                check_signature(lines[i], target)
                lines[i] = ""
        expected = self._results(block, "\n".join(lines))
        original = block.text.splitlines()

        def seen(value: Any, lineno: int) -> Any:
            where = f"{block.page}:{block.line + lineno - 1}"
            if lineno in expected:
                shown = expected[lineno]
                assert type(value) is type(shown) and value == shown, (
                    f"{where}: the example shows {shown!r}, the code returns {value!r}"
                )
            if isinstance(value, BaseCache) and value not in caches:
                points_at = [v for k, v in self.offline.items() if k in original[lineno - 1]]
                if not points_at:
                    caches.append(value)
                else:
                    with contextlib.closing(value):
                        assert points_at[0] in repr(value), f"{where}: {value!r}"
            return value

        tree = _Instrument().visit(ast.parse("\n".join(lines)))
        ast.increment_lineno(tree, block.line - 1)
        namespace["__seen__"] = seen
        exec(compile(tree, str(REPO / block.page), "exec"), namespace)
        if self.then is not None:
            self.then(namespace, ctx)
        return namespace

    @staticmethod
    def _results(block: Block, source: str) -> dict[int, Any]:
        """Line -> value shown by the comment ending a top-level expression statement."""
        comments = {
            token.start[0]: token.string
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT
        }
        results: dict[int, Any] = {}
        for statement in ast.parse(source).body:
            comment = comments.get(statement.end_lineno or statement.lineno)
            if isinstance(statement, ast.Expr) and comment is not None:
                shows, value = shown_result(comment)
                if shows:
                    results[statement.lineno] = value
        return results


# -- other kinds of blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    reason: str

    def __call__(self, block: Block, ctx: Context) -> None:
        pytest.skip(self.reason)


@dataclass(frozen=True)
class Custom:
    """A check of its own for a block that is not code to run."""

    check: Callable[[Block, Context], None]

    def __call__(self, block: Block, ctx: Context) -> None:
        self.check(block, ctx)


Outputs: TypeAlias = dict[str, subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Shell:
    """Every command of a shell block: run (``cacheplug ...``) or listed in ``skip`` with why."""

    skip: Mapping[str, str] = field(default_factory=dict)
    plugin: bool = False  # run with the example plugin installed
    then: Callable[[Block, Outputs], None] | None = None

    def __call__(self, block: Block, ctx: Context) -> None:
        commands = shell_commands(block)
        stale = self.skip.keys() - set(commands)
        assert not stale, f"{block.where}: skipped commands no longer in the block: {stale}"
        outputs: Outputs = {}
        for command in commands:
            if command in self.skip:
                continue
            argv = shlex.split(command)
            assert argv[0] == "cacheplug", f"{block.where}: add {command!r} to the skip table"
            done = subprocess.run(
                [sys.executable, "-m", "cacheplug", *argv[1:]],
                capture_output=True,
                text=True,
                env=ctx.env(plugin=self.plugin),
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, f"{block.where}: {command}: {done.stderr}"
            outputs[command] = done
        if self.then is not None:
            self.then(block, outputs)


def shell_commands(block: Block) -> list[str]:
    """The commands of a block, normalized (comments gone, ``&&`` splits)."""
    lines = block.text.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands: list[str] = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(shlex.join(words[:cut]))
            words = words[cut + 1 :]
    return commands


@dataclass(frozen=True)
class Doctest:
    """A ``>>>`` session, run by doctest after ``setup``."""

    setup: str

    def __call__(self, block: Block, ctx: Context) -> None:
        namespace: Namespace = {}
        exec(self.setup, namespace)
        test = doctest.DocTestParser().get_doctest(
            block.text, namespace, block.where, str(REPO / block.page), block.line - 1
        )
        assert test.examples, f"{block.where}: no >>> example"
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=out.write)
        assert runner.failures == 0, out.getvalue()


@dataclass(frozen=True)
class Synopsis:
    """Lines ``cacheplug <command> <arguments>  <what it does>``: each command exists and its
    ``--help`` usage shows every argument."""

    def __call__(self, block: Block, ctx: Context) -> None:
        for line in block.text.splitlines():
            usage = re.split(r"\s{2,}", line.strip())[0].split()
            assert usage[0] == "cacheplug", line
            if usage[1].startswith("--"):
                code, shown = run_cli(usage[1:])
                assert code == 0 and shown.startswith("cacheplug "), (line, shown)
                continue
            code, shown = run_cli([usage[1], "--help"])
            assert code == 0, (line, shown)
            real = shown.split("\n\n")[0].lower()
            for word in usage[2:]:
                assert word.lower() in real, f"{block.where}: {word!r} not in {real!r}"


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit status and output of the ``cacheplug`` command run in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli_main(argv)
        except SystemExit as stop:
            code = int(stop.code or 0)
    return code, out.getvalue()


# -- checks of single blocks --------------------------------------------------------------------


def check_demo_output(block: Block, outputs: Outputs) -> None:
    """The README says what the demo reports: calls, hit ratio, speed-up and the serializer."""
    shown = outputs["cacheplug demo"].stdout
    for label in ("calls:", "hit ratio:", "speed-up:", "serializer:", "url:        simple://"):
        assert label in shown, shown


def check_plugins_output(block: Block, outputs: Outputs) -> None:
    """The rows the page shows are in the table, and ``--json`` is ``get_plugins()``'s list."""
    shown: list[list[str]] = []
    command = ""
    for line in block.text.splitlines():
        if line.startswith("$ "):
            command = shlex.join(shlex.split(line[2:], comments=True))
        elif line.strip() != "..." and command == "cacheplug plugins":
            shown.append(line.split())
    table = [line.split() for line in outputs["cacheplug plugins"].stdout.splitlines()]
    for row in shown:
        assert row in table, f"{block.where}: {row} not in the output"
    plugins = json.loads(outputs["cacheplug plugins --json"].stdout)
    example = next(p for p in plugins if p["name"] == "example")
    keys = {"name", "distribution", "version", "hooks", "schemes", "serializers", "error"}
    assert example.keys() == keys
    assert (example["schemes"], example["serializers"], example["error"]) == (
        ["sqlite"],
        ["zpickle"],
        None,
    )


#: Every message of the configuration page's error block, and the URL that raises it.
ERROR_URLS = (
    "reddis://localhost:6379/0",
    "simple://?treshold=5",
    "simple://?threshold=many",
    "redis://cache/0?ssl=maybe",
    "simple://?serializer=yaml",
    "redis://:pw@cache:port/0",
    "redis://u:p/w@cache/0",
    "memcached://a,,b",
    "file://relative/dir",
    "redis://cache/zero",
)


def check_error_messages(block: Block, ctx: Context) -> None:
    documented = block.text.replace("\n  ", " ").strip().splitlines()
    assert len(documented) == len(ERROR_URLS), "one URL in ERROR_URLS per documented message"
    for url, message in zip(ERROR_URLS, documented, strict=True):
        with pytest.raises(cacheplug.ConfigurationError) as raised:
            from_url(url)
        assert str(raised.value) == message, url


def check_outage_log_lines(block: Block, ctx: Context) -> None:
    """A refused connection logs the first line; the next one a minute later, the second."""
    import logging

    from cacheplug import RedisCache

    caplog: pytest.LogCaptureFixture = ctx.fixture("caplog")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = RedisCache(host="127.0.0.1", port=port)
    with caplog.at_level(logging.WARNING, logger="cacheplug"), cache:
        assert cache.set("k", 1) is False
        for _ in range(41):
            assert cache.get("k") is None
        cache._last_logged = {kind: at - 61 for kind, at in cache._last_logged.items()}
        assert cache.get("k") is None
    logged = [r.getMessage().replace(f":{port}", ":6379") for r in caplog.records]
    assert logged == block.text.strip().splitlines()


def check_layout(block: Block, ctx: Context) -> None:
    """The tree of files of the example plugin exists under examples/."""
    stack: list[tuple[int, Path]] = [(-1, EXAMPLE.parent)]
    for line in block.text.splitlines():
        name = line.split("#")[0].strip()
        depth = len(line) - len(line.lstrip())
        while stack[-1][0] >= depth:
            stack.pop()
        path = stack[-1][1] / name.rstrip("/")
        assert path.is_dir() if name.endswith("/") else path.is_file(), path
        stack.append((depth, path))


def check_pyproject(block: Block, ctx: Context) -> None:
    documented = tomllib.loads(block.text)
    real = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))
    for name in ("name", "version", "dependencies", "entry-points"):
        assert documented["project"][name] == real["project"][name], name


def check_contract_class(block: Block, ctx: Context) -> None:
    """The page's contract test module passes against the example backend."""
    (ctx.tmp_path / "test_doc_contract.py").write_text(block.text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_doc_contract.py"],
        cwd=ctx.tmp_path,
        env=ctx.env(plugin=True),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\b\d{2,} passed\b", done.stdout), done.stdout[-500:]


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plugin's modules importable; forgotten afterwards, with every runtime plugin."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    yield
    reset_plugins()
    for module in [m for m in sys.modules if m.startswith("cacheplug_example")]:
        del sys.modules[module]


def _round_trip(cache: BaseCache, value: object) -> None:
    with cache:
        assert cache.set("k", value) is True
        assert cache.get("k") == value


def then_hooks_serve_urls(namespace: Namespace, ctx: Context) -> None:
    """The page's hook module, registered, makes its scheme and serializer work in a URL."""
    ctx.fixture("example_on_path")
    hooks = {k: v for k, v in namespace.items() if k.startswith("cacheplug_register_")}
    assert len(hooks) == 2
    register_plugin(types.SimpleNamespace(**hooks), name="docs-hooks")
    _round_trip(from_url(f"sqlite://{ctx.tmp_path}/c.db?serializer=zpickle"), {"a": [1, 2]})


def then_backend_fragment_builds(namespace: Namespace, ctx: Context) -> None:
    """The fragment's url_options and from_url_spec build the real SQLiteCache from a URL."""
    ctx.fixture("example_on_path")
    SQLiteCache = importlib.import_module("cacheplug_example.sqlite").SQLiteCache

    fragment = namespace["SQLiteCache"]
    assert fragment.url_options == SQLiteCache.url_options
    url = parse_url(f"sqlite://{ctx.tmp_path}/f.db?busy_timeout=2")
    _round_trip(fragment.from_url_spec.__func__(SQLiteCache, url, {"busy_timeout": 2.0}), 7)
    for refused in ("sqlite://host/f.db", "sqlite://user:pw@/f.db"):
        with pytest.raises(cacheplug.ConfigurationError, match="no host") as info:
            fragment.from_url_spec.__func__(SQLiteCache, parse_url(refused), {})
        assert "pw" not in str(info.value)


def then_serializer_round_trips(namespace: Namespace, ctx: Context) -> None:
    serializer = namespace["ZlibPickleSerializer"]()
    value = {"nested": [b"bytes", (1, 2)], "n": 10**30}
    assert serializer.loads(serializer.dumps(value)) == value
    with pytest.raises(SerializationError):
        serializer.dumps(lambda: None)
    with pytest.raises(SerializationError):
        serializer.loads(b"not zlib")
    _round_trip(SimpleCache(serializer=serializer), value)


def then_runtime_plugin_serves_its_scheme(namespace: Namespace, ctx: Context) -> None:
    ctx.request.addfinalizer(reset_plugins)
    _round_trip(from_url("mine://"), [1, 2])


def then_render_ran_once(namespace: Namespace, ctx: Context) -> None:
    """``# computed``, ``# cached``, ``# forget that one entry``."""
    assert namespace["CALLS"] == ["home"]
    assert namespace["render"]("home") == "home/en"
    assert namespace["CALLS"] == ["home", "home"]


def then_profile_runs_once(namespace: Namespace, ctx: Context) -> None:
    """``# runs once per user_id per 30 s`` and ``# forget one call's entry``."""
    profile = namespace["profile"]
    assert [profile(1), profile(1), profile(2)] == [{"id": 1}, {"id": 1}, {"id": 2}]
    profile.invalidate(1)
    assert profile(1) == {"id": 1}
    assert namespace["CALLS"] == [1, 2, 1]


# -- the table ------------------------------------------------------------------------------------

Handler: TypeAlias = Run | Shell | Doctest | Synopsis | Custom | Skip
PIP = "installs packages: the environment's job, not the docs test's"

BLOCKS: Mapping[tuple[str, str], Handler] = {
    # README.md
    ("README.md", "pip install . && cacheplug demo"): Shell(
        skip={"pip install .": PIP}, then=check_demo_output
    ),
    ("README.md", "bash scripts/test"): Shell(
        skip={"bash scripts/test": "runs the whole suite, this file included"}
    ),
    ("README.md", "from cacheplug import from_url"): Run(
        setup="CALLS = []",
        subs={
            "redis://cache:6379/0?": "redis://{redis}/{clean_db}?",
            "    ...": "    CALLS.append(user_id); return {{'id': user_id}}",
        },
        then=then_profile_runs_once,
    ),
    ("README.md", "cacheplug demo [URL]"): Synopsis(),
    ("README.md", "pip install 'cacheplug[redis]'"): Shell(
        skip={"pip install 'cacheplug[redis]'": PIP, "pip install 'cacheplug[memcached]'": PIP}
    ),
    # docs/backends.md
    ("docs/backends.md", "SimpleCache(threshold=500"): Run(
        setup="from cacheplug import from_url", signatures={"SimpleCache(": SimpleCache}
    ),
    ("docs/backends.md", "from cacheplug import FileSystemCache, from_url"): Run(
        subs={"/var/cache/myapp": "{tmp}/myapp"}
    ),
    ("docs/backends.md", "from cacheplug import RedisCache, from_url"): Run(
        setup="import redis",
        subs={
            'host="localhost", port=6379': 'host="{redis_host}", port={redis_port}',
            "redis.Redis(...)": 'redis.Redis(host="{redis_host}", port={redis_port})',
            '("node1", 7000), ("node2", 7001)': (
                '("{cluster_host0}", {cluster_port0}), ("{cluster_host1}", {cluster_port1})'
            ),
            ":secret@cache:6379/2": ":secret@{redis_secret}/2",
        },
    ),
    ("docs/backends.md", "from cacheplug import MemcachedCache, from_url"): Run(
        subs={
            '"10.0.0.1:11211", "10.0.0.2:11211"': '"{memcached}", "{memcached2}"',
            "//10.0.0.1:11211,10.0.0.2:11211?": "//{memcached},{memcached2}?",
            "//cache?timeout": "//{memcached}?timeout",
        },
        offline={
            '"memcached://cache"': "servers=[cache:11211]",
            '"memcached://"': "servers=[127.0.0.1:11211]",
            "%2Frun%2Fmemcached.sock": "servers=[/run/memcached.sock]",
        },
    ),
    # docs/configuration.md
    ("docs/configuration.md", "from cacheplug import from_url, from_env"): Run(
        subs={"redis://cache:6379/0?": "redis://{redis}/0?"}
    ),
    ("docs/configuration.md", "scheme://[user[:password]@]"): Skip(
        "a grammar; tests/test_url.py and the URLs of the other examples exercise it"
    ),
    ("docs/configuration.md", "from cacheplug import JSONSerializer, from_url"): Run(
        subs={"redis://cache/0?": "redis://{redis}/0?"}
    ),
    ("docs/configuration.md", "from_env(name="): Run(signatures={"from_env(": cacheplug.from_env}),
    ("docs/configuration.md", "unknown cache scheme 'reddis'"): Custom(check_error_messages),
    ("docs/configuration.md", ">>> parse_url("): Doctest(
        setup="from cacheplug.core.url import parse_url"
    ),
    ("docs/configuration.md", "cacheplug demo [URL]"): Synopsis(),
    # docs/index.md
    ("docs/index.md", "pip install cacheplug "): Shell(
        skip={
            "pip install cacheplug": PIP,
            "pip install 'cacheplug[redis]'": PIP,
            "pip install 'cacheplug[memcached]'": PIP,
        }
    ),
    ("docs/index.md", "from cacheplug import SimpleCache,"): Run(
        subs={"redis://localhost:6379/0?": "redis://{redis}/0?"}
    ),
    ("docs/index.md", "@cache.memoize(timeout=300)"): Run(
        after="from cacheplug import SimpleCache,",
        setup="CALLS = []",
        subs={"    ...": "    CALLS.append(page); return f'{{page}}/{{lang}}'"},
        then=then_render_ran_once,
    ),
    # docs/reliability.md
    ("docs/reliability.md", "RedisCache.set failed"): Custom(check_outage_log_lines),
    # docs/plugins.md
    ("docs/plugins.md", "cacheplug-example-plugin/"): Custom(check_layout),
    ("docs/plugins.md", "[project]"): Custom(check_pyproject),
    ("docs/plugins.md", "# src/cacheplug_example/plugin.py"): Run(then=then_hooks_serve_urls),
    ("docs/plugins.md", "class SQLiteCache(BaseCache):"): Run(
        setup="from cacheplug import BaseCache, ConfigurationError",
        then=then_backend_fragment_builds,
    ),
    ("docs/plugins.md", "class ZlibPickleSerializer(Serializer):"): Run(
        setup="import pickle, zlib\nfrom cacheplug import Serializer, SerializationError",
        then=then_serializer_round_trips,
    ),
    ("docs/plugins.md", "import contextlib"): Custom(check_contract_class),
    ("docs/plugins.md", "$ pip install -e '.[test]'"): Shell(
        skip={
            "pip install -e '.[test]'": "the example is put on PYTHONPATH as an installed dist",
            "python -m pytest": "the example's own tests run in tests/test_plugin_distribution.py",
        },
        plugin=True,
        then=check_plugins_output,
    ),
    ("docs/plugins.md", "from cacheplug import hookimpl"): Run(
        setup="from cacheplug import SimpleCache as MyCache",
        then=then_runtime_plugin_serves_its_scheme,
    ),
}


@pytest.fixture(autouse=True)
def _no_cache_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples calling ``from_env()`` get its default, as on a machine without settings."""
    for name in [n for n in os.environ if n.startswith("CACHEPLUG_") or n == "CACHE_URL"]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.where for block in ALL_BLOCKS])
def test_example(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    keys = [key for key in BLOCKS if block.matches(key)]
    assert keys, (
        f"{block.where} ({block.lang or 'no language'}) is not covered: add it to BLOCKS in "
        f"{Path(__file__).name} as ({block.page!r}, <start of its first line>)"
    )
    assert len(keys) == 1, f"{block.where} is named by several BLOCKS entries: {keys}"
    BLOCKS[keys[0]](block, Context(request, tmp_path))


def test_the_example_plugins_own_tests_pass(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The example a plugin author copies keeps passing its own suite (the contract included),
    run as its README says, with the plugin installed (entry points and all)."""
    env = Context(request, tmp_path).env(plugin=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        check=False,
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "write outages are not tested" not in done.stdout


def test_every_table_entry_names_one_block() -> None:
    for key in BLOCKS:
        find_block(key)


def test_result_comments_are_read() -> None:
    assert shown_result("# 1, atomic on Redis") == (True, 1)
    assert shown_result("# [1, 2, 3], a fresh copy") == (True, [1, 2, 3])
    assert shown_result("# False: add never overwrites") == (True, False)
    assert shown_result("# {'name': 'Ada'}") == (True, {"name": "Ada"})
    assert shown_result("# -1.5") == (True, -1.5)
    assert shown_result("# computed") == (False, None)
    with pytest.raises(AssertionError):
        shown_result("# [unclosed")


# -- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a page."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        in_code ^= bool(FENCE.match(line))
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading and not in_code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


def _prose(page: Path) -> str:
    """A page without its code blocks."""
    keep: list[str] = []
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            keep.append(line)
    return "\n".join(keep)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_reach_a_file_and_anchor(page: Path) -> None:
    broken: list[str] = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


def test_anchors_follow_github() -> None:
    assert "where-cacheplug-differs-from-cachelib" in anchors(REPO / "docs" / "contract.md")
    assert "from_env" in anchors(REPO / "docs" / "configuration.md")


# -- option tables of docs/configuration.md -------------------------------------------------------

HEADERS = {"option", "scheme"}
TYPES = {"int": int, "float": float, "bool": bool, "str": str}
#: A value of each documented option that its backend accepts.
SAMPLES = {
    "threshold": "7",
    "mode": "0640",
    "hash_method": "sha1",
    "fsync": "true",
    "lock_timeout": "2",
    "db": "0",
    "username": "ada",
    "password": "pw",
    "socket_timeout": "0.5",
    "socket_connect_timeout": "0.5",
    "socket_keepalive": "true",
    "max_connections": "4",
    "health_check_interval": "2",
    "retries": "2",
    "dead_timeout": "0.5",
    "client_name": "docs",
    "protocol": "2",
    "ssl": "true",
    "ssl_cert_reqs": "none",
    "ssl_ca_certs": "/etc/ssl/ca.pem",
    "ssl_ca_path": "/etc/ssl/certs",
    "ssl_certfile": "/etc/ssl/client.pem",
    "ssl_keyfile": "/etc/ssl/client.key",
    "ssl_password": "key-passphrase",
    "ssl_check_hostname": "false",
    "connect_timeout": "0.5",
    "timeout": "0.5",
    "no_delay": "false",
    "max_pool_size": "3",
}
#: A URL of each built-in scheme that needs no server to be built ({tmp}: a temporary directory).
BASE_URLS = {
    "simple": "simple://",
    "memory": "memory://",
    "null": "null://",
    "file": "file://{tmp}/options",
    "redis": "redis://127.0.0.1:1/0",
    "rediss": "rediss://127.0.0.1:1/0",
    "redis+unix": "redis+unix:///nonexistent/redis.sock",
    "unix": "unix:///nonexistent/redis.sock",
    "redis+cluster": "redis+cluster://127.0.0.1:1",
    "memcached": "memcached://127.0.0.1:1",
}


def option_tables() -> tuple[dict[str, type], dict[tuple[str, str], type]]:
    """The shared options and the (scheme, option) rows of the page's option tables."""
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("\n## Options\n")[1].split("\n## ")[0]
    shared: dict[str, type] = {}
    backend: dict[tuple[str, str], type] = {}
    schemes: list[str] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or re.fullmatch(r"[-|: ]+", line) or cells[0] in HEADERS:
            continue
        if len(cells) == 3:
            (names, kind) = (cells[0], cells[1])
            shared.update(dict.fromkeys(re.findall(r"`([^`]+)`", names), TYPES[kind]))
            continue
        if cells[0]:
            schemes = re.findall(r"`([^`]+)`", cells[0])
        for scheme in schemes:
            for name in re.findall(r"`([^`]+)`", cells[1]):
                backend[(scheme, name)] = TYPES[cells[2]]
    return shared, backend


def test_shared_options_table_matches_the_code() -> None:
    shared, _ = option_tables()
    assert shared == dict(SHARED_OPTIONS)


#: Options of a documented row that one of its schemes refuses, as the row itself says.
REFUSED_OPTIONS: Mapping[tuple[str, str], str] = {
    ("redis+cluster", "health_check_interval"): "not on `redis+cluster`",
}


#: What an option needs beside it to be built: a client key comes with its certificate.
COMPANIONS = {
    "ssl_certfile": f"&ssl_keyfile=/etc/ssl/client.key&ssl_password={DOCUMENTED_PASSPHRASE}",
    "ssl_keyfile": f"&ssl_certfile=/etc/ssl/client.pem&ssl_password={DOCUMENTED_PASSPHRASE}",
}


def test_every_documented_option_is_accepted_by_from_url(tmp_path: Path) -> None:
    _, backend = option_tables()
    assert len(backend) > 40
    configuration = (REPO / "docs" / "configuration.md").read_text()
    files = documented_files(tmp_path)  # TLS files are read when a TLS cache is built
    for (scheme, name), kind in sorted(backend.items()):
        cls = get_backend_class(scheme)
        assert cls.url_options.get(name) is kind, f"{scheme}:// {name}: documented as {kind}"
        base = BASE_URLS[scheme].replace("{tmp}", str(tmp_path))
        joiner = "&" if "?" in base else "?"
        url = f"{base}{joiner}{name}={SAMPLES[name]}{COMPANIONS.get(name, '')}"
        url = with_real_files(url, files)
        if name.startswith("ssl") and scheme in ("redis+unix", "unix"):  # no TLS on a socket
            assert "not on `redis+unix` or `unix`" in configuration
            with pytest.raises(cacheplug.ConfigurationError, match="cannot apply to the unix"):
                from_url(url)
            continue
        if name.startswith("ssl_") and scheme in ("redis", "redis+cluster"):
            url += "&ssl=true"  # TLS options need TLS on
        if (scheme, name) in REFUSED_OPTIONS:
            assert REFUSED_OPTIONS[scheme, name] in configuration
            with pytest.raises(cacheplug.ConfigurationError, match=f"URL option '{name}' does not"):
                from_url(url)
            continue
        with from_url(url) as cache:
            assert isinstance(cache, cls), (scheme, name)


def test_every_url_option_of_every_backend_is_documented() -> None:
    _, backend = option_tables()
    missing = [
        (scheme, name)
        for scheme in backend_schemes()
        for name in get_backend_class(scheme).url_options
        if (scheme, name) not in backend
    ]
    assert missing == []
    assert set(BASE_URLS) == set(backend_schemes())


# -- URLs written inline in the prose and tables --------------------------------------------------

INLINE_URL = re.compile(r"`([a-z][a-z0-9+.-]*://[^`\s]*)`")
#: Inline URLs that are not meant to build a cache: patterns, and those shown as refused.
NOT_BUILT: Mapping[str, str] = {
    "rediss://…": "pattern",
    "redis://:password@…": "pattern",
    "redis://host[:port][/db]": "pattern",
    "redis+unix:///path/to/redis.sock?db=N": "pattern",
    "unix:///path?db=N": "pattern",
    "redis+cluster://h1:p1,h2:p2": "pattern",
    "memcached://h1[:p1],h2[:p2]": "pattern",
    "rediss://host:port/db?ssl_ca_certs=/path/ca.pem": "pattern",
    "sqlite://": "a plugin's scheme",
    "dynamodb://": "a plugin's scheme",
    "scheme://": "pattern",
    "redis+unix://": "a scheme name",
    "unix://": "a scheme name",
    "redis+cluster://": "a scheme name",
    "file://": "refused",
    "file://cache/dir": "refused",
    "file://./dir": "refused",
}


def inline_urls() -> list[tuple[str, str]]:
    return [(page.name, url) for page in PAGES for url in INLINE_URL.findall(_prose(page))]


def test_inline_urls_build_or_are_listed(tmp_path: Path) -> None:
    """Every URL written in the prose builds its cache (``file://`` directories moved under a
    temporary one; nothing is contacted), unless listed in NOT_BUILT; refused ones are refused."""
    found = inline_urls()
    assert len(found) > 50
    files = documented_files(tmp_path)  # TLS files are read when a TLS cache is built
    for page, url in found:
        reason = NOT_BUILT.get(url)
        if reason == "refused":
            with pytest.raises(cacheplug.ConfigurationError):
                from_url(url)
        elif reason is None:
            real = with_real_files(re.sub(r"^file://", f"file://{tmp_path}", url), files)
            with from_url(real) as cache:
                assert isinstance(cache, BaseCache), (page, url)
    assert NOT_BUILT.keys() <= {url for _, url in found}, "NOT_BUILT lists a URL no page shows"
