"""Review 30 of configuration and extension points: each test is a defect the review found.

Plugin distributions are written on ``sys.path`` (see ``plugin_dists``): real discovery.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from plugin_dists import write_distribution
from test_plugins import fresh_registry  # noqa: F401 - autouse: a clean registry per test
from test_plugins_review import Registers, site  # noqa: F401 - a directory on sys.path for distributions

from cacheplug import (
    ConfigurationError,
    FileSystemCache,
    JSONSerializer,
    PickleSerializer,
    PluginError,
    PluginLoadWarning,
    SerializationError,
    SimpleCache,
    get_plugins,
    get_serializer,
    hookimpl,
)
from cacheplug.cli import main
from cacheplug.core.hookspecs import RegisterFn
from cacheplug.core.plugins import register_plugin
from cacheplug.core.serializer import serializer_name
from cacheplug.core.url import from_url, is_secret_option, parse_url, redact_text, redact_url

SECRET = "review30-secret-Qw7"

# -- a hook that returns instead of registering ---------------------------------------------------


class ReturnsDict:
    @hookimpl
    def cacheplug_register_backends(self, register: RegisterFn) -> Any:
        return {"returned": SimpleCache}


class AsyncHook:
    @hookimpl
    async def cacheplug_register_backends(self, register: RegisterFn) -> None:
        register("awaited", SimpleCache)


class GeneratorHook:
    @hookimpl
    def cacheplug_register_serializers(self, register: RegisterFn) -> Iterator[None]:
        yield register("yielded", SimpleCache)


@pytest.mark.parametrize(
    ("plugin", "kind"),
    [(ReturnsDict(), "dict"), (AsyncHook(), "coroutine"), (GeneratorHook(), "generator")],
    ids=["dict", "async", "generator"],
)
def test_a_hook_returning_something_is_refused_by_register_plugin(plugin: Any, kind: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited" either
        with pytest.raises(PluginError, match=f"returned a {kind} instead of None") as caught:
            register_plugin(plugin, "garbage")
    assert "register(name, target)" in str(caught.value)
    assert "garbage" not in {p["name"] for p in get_plugins()}


def test_an_entry_point_whose_hook_returns_a_dict_warns_and_is_listed_broken(
    site: Path,  # noqa: F811 - the fixture imported above
) -> None:
    source = (
        "from cacheplug import SimpleCache, hookimpl\n"
        "@hookimpl\n"
        "def cacheplug_register_backends(register):\n"
        "    return {'dicted': SimpleCache}\n"
    )
    write_distribution(
        site, "cacheplug-dicted", "1.0", {"dicted": "dicted_plugin"}, {"dicted_plugin": source}
    )
    with (
        pytest.warns(PluginLoadWarning, match=r"'dicted'.*returned a dict instead of None"),
        pytest.raises(PluginError, match="broken plugin"),
    ):
        from_url("dicted://")
    (listed,) = [p for p in get_plugins() if p["name"] == "dicted"]
    assert "returned a dict" in listed["error"]


# -- get_serializer with a name that is no str -----------------------------------------------------


@pytest.mark.parametrize("name", [None, b"json", 1])
def test_get_serializer_of_a_non_str_is_a_configuration_error(name: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"must be a str, got .*known serializers: json"):
        get_serializer(name)


# -- a serializer subclass without a name of its own -------------------------------------------


class RawBytesPickle(PickleSerializer):
    """Pickle, but bytes are stored as they are (a fast path): another format."""

    def dumps(self, value: Any) -> bytes:
        return value if isinstance(value, bytes) else super().dumps(value)

    def loads(self, data: bytes) -> Any:
        try:
            return super().loads(data)
        except SerializationError:
            return data


def test_a_pickle_subclass_without_a_name_is_not_reported_or_signed_as_pickle(
    tmp_path: Path,
) -> None:
    # the user's bytes, stored raw by the subclass, are a pickle: a pickle cache sharing the
    # directory and the secret must not decode them
    users_text = pickle.dumps("decoded by pickle")
    writer = FileSystemCache(str(tmp_path), secret=SECRET, serializer=RawBytesPickle())
    reader = FileSystemCache(str(tmp_path), secret=SECRET)
    assert writer.set("upload", users_text)
    assert reader.get("upload") is None
    assert serializer_name(writer.serializer) == "RawBytesPickle"
    assert "pickle'" not in repr(writer)


# -- key options of plugin backends --------------------------------------------------------------


class KeyedCache(SimpleCache):
    """A plugin backend configured with an API key, as cloud caches are."""

    url_options: ClassVar[Mapping[str, type]] = {"api_key": str, "access_key": str, "retry": int}

    def __init__(self, api_key: str = "", access_key: str = "", retry: int = 0, **kw: Any) -> None:
        super().__init__(**kw)


def test_the_value_of_an_api_key_option_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    register_plugin(Registers(backends={"keyed": KeyedCache}), "keyed")
    url = f"keyed://?api_key={SECRET}&access_key={SECRET}&retry=x"
    assert SECRET not in str(parse_url(url))
    with pytest.raises(ConfigurationError) as raised:
        from_url(url)
    assert SECRET not in str(raised.value)
    assert main(["check", url.replace("&retry=x", "")]) == 0
    out, err = capsys.readouterr()
    assert "api_key=***&access_key=***" in out
    assert SECRET not in out + err
    for name in ("key_prefix", "ssl_keyfile", "keys"):
        assert not is_secret_option(name), name


# -- the JSON serializer's NaN check --------------------------------------------------------------


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


def test_json_checks_a_deep_value_holding_none_without_recursion() -> None:
    # orjson writes up to 254 levels; the check for NaN walked them recursively, one Python
    # frame per level, and raised RecursionError (no SerializationError) with little stack left
    value: Any = [None, 1.5]
    for _ in range(200):
        value = [value, None]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 60)
    try:
        data = JSONSerializer().dumps(value)
        with pytest.raises(SerializationError, match="NaN or infinity"):
            JSONSerializer().dumps([value, {"x": [None, float("nan")]}])
    finally:
        sys.setrecursionlimit(limit)
    assert JSONSerializer().loads(data) == value


# -- a raw '@' in a secret option's value ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://cache:6379/0?password=ab@{SECRET}",
        f"redis://cache:6379/0?secret=ab@{SECRET}&db=1",
        f"redis://:pw?x=1@host?secret={SECRET}",
    ],
    ids=["password", "secret-then-option", "raw-question-mark-in-password"],
)
def test_a_raw_at_sign_in_a_secret_option_never_shows_its_tail(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="an '@' after the host") as raised:
        from_url(url)
    assert SECRET not in str(raised.value)
    assert SECRET not in redact_url(url)
    assert SECRET not in redact_text(f"the engine said: {url} is down")
    assert main(["check", url]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "redis://cache:***" in err or "redis://:***@host" in err  # the host still shown


# -- a plugin's exception that cannot be printed --------------------------------------------------

UNPRINTABLE = """
class DriverError(Exception):
    def __str__(self):
        return self.message  # never set: a buggy exception of some driver
{statement}
"""


@pytest.mark.parametrize(
    "statement",
    [
        "raise DriverError()",
        "from cacheplug import hookimpl\n"
        "@hookimpl\n"
        "def cacheplug_register_backends(register):\n"
        "    raise DriverError()",
    ],
    ids=["at-import", "in-hook"],
)
def test_a_plugin_failing_with_an_unprintable_exception_fails_alone(
    site: Path,  # noqa: F811 - the fixture imported above
    statement: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_distribution(
        site,
        "cacheplug-unprintable",
        "1.0",
        {"unprintable": "unprintable_plugin"},
        {"unprintable_plugin": UNPRINTABLE.format(statement=statement)},
    )
    with pytest.warns(PluginLoadWarning, match=r"'unprintable'.*DriverError: <exception str"):
        cache = from_url("simple://")
    assert cache.set("k", 1)
    with pytest.raises(PluginError, match="broken plugin") as raised:
        from_url("unprintable://")
    assert type(raised.value.__cause__).__name__ == "DriverError"
    assert main(["plugins"]) == 0
    assert "DriverError: <exception str() failed>" in capsys.readouterr().out


class _DriverError(Exception):
    def __str__(self) -> str:
        return self.message  # type: ignore[attr-defined, no-any-return] # never set: buggy


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise _DriverError


class _Unrestorable:
    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: Any) -> None:
        raise _DriverError


def test_pickle_failures_with_an_unprintable_exception_are_serialization_errors() -> None:
    serializer = PickleSerializer()
    with pytest.raises(SerializationError, match=r"exception str\(\) failed") as raised:
        serializer.dumps(_Unpicklable())
    assert isinstance(raised.value.__cause__, _DriverError)
    data = pickle.dumps(_Unrestorable())
    with pytest.raises(SerializationError, match=r"exception str\(\) failed"):
        serializer.loads(data)


# -- masking URLs in a text with long words ------------------------------------------------------


class _CountedPattern:
    """The URL pattern, counting where it is tried (``match``); nothing else of it is offered,
    so a search that tries it at every letter (``sub``, ``finditer``) cannot pass unseen."""

    def __init__(self, pattern: Any) -> None:
        self.pattern, self.tries = pattern, 0

    def match(self, text: str, pos: int = 0) -> Any:
        self.tries += 1
        return self.pattern.match(text, pos)


def test_check_with_a_long_key_prefix_masks_its_output_in_linear_time(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the URL pattern was tried at every letter of the repr's 100,000-character prefix and
    # read the word to its end each time (40 s): now only where a '://' may end a scheme
    import cacheplug.core.redaction as redaction

    counted = _CountedPattern(redaction._URL_IN_TEXT)
    monkeypatch.setattr(redaction, "_URL_IN_TEXT", counted)
    long = "a1" * 50_000
    assert main(["check", f"simple://?key_prefix={long}&secret={SECRET}"]) == 0
    out = capsys.readouterr().out
    assert long in out
    assert SECRET not in out
    text = f"{long} at redis://:{SECRET}@h and '{long}redis://:{SECRET} @h' {long}"
    counted.tries = 0
    assert redact_text(text) == f"{long} at redis://:***@h and '{long}redis://:***@h' {long}"
    assert counted.tries <= text.count("://")


@pytest.mark.parametrize(
    ("payload", "named"), [(b"\x91" * 100_000, "StackError"), (b"\xc1", "FormatError")]
)
def test_a_msgpack_error_that_says_nothing_is_named_by_its_class(
    payload: bytes, named: str
) -> None:
    with pytest.raises(SerializationError) as refused:
        get_serializer("msgpack").loads(payload)
    assert str(refused.value) == f"not a readable msgpack payload: {named}"


def test_secret_none_beside_a_urls_secret_is_refused_not_silently_unsigned() -> None:
    url = "simple://?secret=url-secret-0123456789"
    with pytest.raises(ConfigurationError, match=r"secret=None would drop the secret") as refused:
        from_url(url, secret=None)
    assert "url-secret" not in str(refused.value)
    assert "signed=True" in repr(from_url(url, secret="keyword-secret-0123456789"))
    assert "signed" not in repr(from_url("simple://", secret=None))  # nothing to drop
