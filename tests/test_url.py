"""URL configuration: parse_url, coerce_option, from_url, from_env and redaction."""

from __future__ import annotations

import logging
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheplug import NullCache, SimpleCache, from_env, from_url
from cacheplug.core.errors import ConfigurationError, PluginError
from cacheplug.core.plugins import backend_schemes
from cacheplug.core.url import CacheURL, coerce_option, is_secret_option, parse_url, redact_url

SECRET = "Zr9qK"  # distinctive, so a leak of any part of a URL's secrets is found


# -- parsing every shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hosts", "path", "username", "password", "query"),
    [
        ("simple://", (), "", None, None, {}),
        ("redis://localhost", (("localhost", None),), "", None, None, {}),
        ("redis://cache:6380/2", (("cache", 6380),), "/2", None, None, {}),
        ("redis://:pw@cache/0", (("cache", None),), "/0", None, "pw", {}),
        ("redis://ada@cache", (("cache", None),), "", "ada", None, {}),
        ("redis://ada:pw@cache:1/0", (("cache", 1),), "/0", "ada", "pw", {}),
        ("redis://a%40b:p%2F%3F%23%40%3A@h", (("h", None),), "", "a@b", "p/?#@:", {}),
        ("redis://u:p@ss@h", (("h", None),), "", "u", "p@ss", {}),
        ("redis://[::1]:6379/0", (("::1", 6379),), "/0", None, None, {}),
        ("rediss://ada:pw@cache:6380/1", (("cache", 6380),), "/1", "ada", "pw", {}),
        ("redis+cluster://n1:7000,n2", (("n1", 7000), ("n2", None)), "", None, None, {}),
        ("redis://[::1]", (("::1", None),), "", None, None, {}),
        ("redis://[fe80::1%25eth0]:7", (("fe80::1%eth0", 7),), "", None, None, {}),
        (
            "memcached://a:11211,b,[::1]:3,10.0.0.1:4",
            (("a", 11211), ("b", None), ("::1", 3), ("10.0.0.1", 4)),
            "",
            None,
            None,
            {},
        ),
        ("file:///var/cache/app", (), "/var/cache/app", None, None, {}),
        ("file:///dir%20with%20space", (), "/dir with space", None, None, {}),
        ("redis+unix:///tmp/r.sock?db=2", (), "/tmp/r.sock", None, None, {"db": "2"}),
        ("unix://%2Ftmp%2Fr.sock", (("/tmp/r.sock", None),), "", None, None, {}),
        ("simple://?a=1&b=x%20y&c=p+q&d=", (), "", None, None, {"a": "1", "b": "x y", "c": "p q"}),
    ],
)
def test_parse_url_splits_every_shape(
    url: str,
    hosts: tuple[tuple[str, int | None], ...],
    path: str,
    username: str | None,
    password: str | None,
    query: dict[str, str],
) -> None:
    parsed = parse_url(url)
    assert parsed.hosts == hosts
    assert parsed.path == path
    assert parsed.username == username
    assert parsed.password == password
    assert {k: v for k, v in parsed.query.items() if v} == query


def test_an_at_sign_in_the_query_is_fine_after_a_bare_host_or_encoded() -> None:
    assert parse_url("redis://h/0?key_prefix=me@corp").query["key_prefix"] == "me@corp"
    assert parse_url("redis://h:1/0?key_prefix=me%40corp").query["key_prefix"] == "me@corp"


def test_parse_url_lowercases_the_scheme_and_keeps_empty_values() -> None:
    parsed = parse_url("REDIS+Unix:///s?key_prefix=")
    assert parsed.scheme == "redis+unix"
    assert dict(parsed.query) == {"key_prefix": ""}
    assert parse_url("redis://h:1").host == "h"
    assert parse_url("redis://h:1").port == 1
    assert parse_url("simple://").host is None


def test_parsed_urls_are_shared_and_read_only() -> None:
    parsed = parse_url("simple://?threshold=5")
    assert parse_url("simple://?threshold=5") is parsed
    with pytest.raises(TypeError):
        parsed.query["threshold"] = "6"  # type: ignore[index]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("localhost:6379", "expected 'scheme://...'"),
        ("redis:/localhost", "expected 'scheme://...'"),
        ("1redis://h", "expected 'scheme://...'"),
        ("redis://h:99999", "invalid port '99999'"),
        ("redis://h:0", "invalid port '0'"),
        ("redis://h:port", "invalid port 'port'"),
        ("redis://h:١٢", "invalid port"),
        ("redis://h:/0", "no port after 'h:'"),
        ("file://C:/cache", "goes after three slashes: file:///"),
        ("redis://h:6379/0?key_prefix=me@corp", "'@' in an option's value as %40"),
        ("redis://[::1", "malformed IPv6 host"),
        ("redis://[not-ipv6]:1", "malformed IPv6 host"),
        ("redis://[::1]x", "malformed IPv6 host"),
        ("memcached://a,,b", "malformed host ''"),
        ("memcached://a b", "malformed host 'a b'"),
        ("redis://h/0?flag", "malformed query"),
        ("redis://h/0#frag", "fragments"),
        ("simple://?threshold=1&threshold=2", "option 'threshold' appears twice"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match="cache URL") as info:
        parse_url(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_url_rejects_a_non_string() -> None:
    with pytest.raises(ConfigurationError, match="must be a str, got bytes"):
        parse_url(b"simple://")  # type: ignore[arg-type]


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("42", int, 42),
        ("-3", int, -3),
        ("1.5", float, 1.5),
        ("60", float, 60),
        ("1e3", float, 1000.0),
        ("text", str, "text"),
        ("", str, ""),
        *[(word, bool, True) for word in ("true", "True", "1", "yes", "on")],
        *[(word, bool, False) for word in ("false", "FALSE", "0", "no", "off")],
    ],
)
def test_coerce_option_turns_text_into_the_declared_type(
    text: str, kind: type, expected: object
) -> None:
    value = coerce_option("opt", text, kind)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("ten", int, "option 'opt' must be an int, got 'ten'"),
        ("1.5", int, "option 'opt' must be an int, got '1.5'"),
        ("fast", float, "option 'opt' must be a number, got 'fast'"),
        ("nan", float, "option 'opt' must be a finite number, got 'nan'"),
        ("inf", float, "option 'opt' must be a finite number, got 'inf'"),
        (
            "maybe",
            bool,
            "option 'opt' must be a bool (true/false, 1/0, yes/no, on/off), got 'maybe'",
        ),
    ],
)
def test_coerce_option_names_the_option_and_the_expected_type(
    text: str, kind: type, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        coerce_option("opt", text, kind)
    assert str(info.value) == expected


def test_coerce_option_never_shows_a_secret_value() -> None:
    with pytest.raises(ConfigurationError) as info:
        coerce_option("password", SECRET, int)
    assert SECRET not in str(info.value)
    assert "'password' must be an int" in str(info.value)


def test_from_url_coerces_query_options_to_the_backend_types() -> None:
    cache = from_url("simple://?threshold=7&default_timeout=1.5&serializer=json&key_prefix=app:")
    assert isinstance(cache, SimpleCache)
    assert cache.threshold == 7
    assert cache.default_timeout == 1.5
    assert cache.serializer.name == "json"  # type: ignore[attr-defined]
    assert cache.key_prefix == "app:"


def test_memory_is_an_alias_of_simple_and_null_stores_nothing() -> None:
    assert type(from_url("memory://")) is SimpleCache
    null = from_url("null://?default_timeout=0")
    assert isinstance(null, NullCache)
    assert null.set("k", 1) is True
    assert null.get("k") is None


def test_keyword_overrides_win_over_the_query() -> None:
    cache = from_url("simple://?threshold=7&serializer=json", threshold=9, serializer="msgpack")
    assert isinstance(cache, SimpleCache)
    assert cache.threshold == 9
    assert cache.serializer.name == "msgpack"  # type: ignore[attr-defined]


def test_text_overrides_read_as_query_text(tmp_path: Path) -> None:
    # as they arrive from config files and environment variables
    cache = from_url("simple://", threshold="9", default_timeout="2.5")
    assert isinstance(cache, SimpleCache)
    assert (cache.threshold, cache.default_timeout) == (9, 2.5)
    files = from_url(f"file://{tmp_path}", fsync="no")
    assert files.fsync is False  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="option 'threshold' must be an int, got 'ten'"):
        from_url("simple://", threshold="ten")


def test_an_unknown_keyword_override_lists_the_accepted_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown keyword 'treshold'") as info:
        from_url("simple://", treshold=9)
    assert "threshold" in str(info.value).split("accepted:")[1]


def test_unknown_scheme_lists_registered_ones_and_suggests_the_closest() -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url("simpel://")
    message = str(info.value)
    assert "unknown" in message
    assert "'simpel'" in message
    assert "did you mean 'simple'?" in message
    for scheme in ("memory", "null", "simple"):
        assert scheme in message


def test_a_misspelt_redis_scheme_suggests_redis() -> None:
    assert "redis" in backend_schemes()
    with pytest.raises(ConfigurationError, match="did you mean 'redis'"):
        from_url("reddis://localhost:6379/0")


def test_unknown_option_lists_the_backend_options() -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'treshold'") as info:
        from_url("simple://?treshold=5")
    accepted = str(info.value).split("accepted options:")[1]
    for name in ("threshold", "serializer", "default_timeout", "key_prefix", "secret"):
        assert name in accepted


@pytest.mark.parametrize(
    ("url", "keywords", "hint"),
    [
        ("simple://?treshold=5", {}, "; did you mean 'threshold'?"),
        ("redis://:pw@localhost/0?serialiser=json", {}, "; did you mean 'serializer'?"),
        ("simple://", {"default_timout": 3}, "; did you mean 'default_timeout'?"),
        ("file:///tmp/x", {"Mode": 0o600}, "; did you mean 'mode'?"),
    ],
)
def test_a_misspelt_option_or_keyword_suggests_the_closest(
    url: str, keywords: dict[str, Any], hint: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(url, **keywords)
    assert str(info.value).endswith(hint)
    assert "pw" not in str(info.value)


def test_an_option_like_none_of_the_accepted_ones_gets_no_suggestion() -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url("simple://?zzz=1")
    assert "did you mean" not in str(info.value)
    assert str(info.value).endswith("serializer, threshold")


def test_bad_value_names_the_option_and_the_type() -> None:
    with pytest.raises(ConfigurationError, match="option 'threshold' must be an int, got 'many'"):
        from_url("simple://?threshold=many")
    with pytest.raises(ConfigurationError, match="'default_timeout' must be a number"):
        from_url("simple://?default_timeout=soon")


def test_unknown_serializer_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'") as info:
        from_url("simple://?serializer=yaml")
    for name in ("json", "msgpack", "pickle"):
        assert name in str(info.value)


def test_a_simple_url_takes_no_host() -> None:
    with pytest.raises(ConfigurationError, match="takes no host"):
        from_url("simple://somewhere:1")


# -- from_env ------------------------------------------------------------------------------------


def test_from_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_URL", "null://")
    assert isinstance(from_env(), NullCache)
    monkeypatch.setenv("MY_CACHE", "simple://?threshold=3")
    cache = from_env("MY_CACHE", threshold=4)
    assert isinstance(cache, SimpleCache)
    assert cache.threshold == 4


def test_from_env_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_URL", raising=False)
    assert type(from_env()) is SimpleCache
    monkeypatch.setenv("CACHE_URL", "")
    assert isinstance(from_env(default="null://"), NullCache)


def test_from_env_names_the_variable_of_a_bad_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CACHE", f"simpel://?secret={SECRET}")
    with pytest.raises(ConfigurationError, match="environment variable MY_CACHE") as info:
        from_env("MY_CACHE")
    assert SECRET not in str(info.value)


# -- redaction -----------------------------------------------------------------------------------


def test_secret_options_are_recognised_by_name() -> None:
    for name in ("secret", "password", "sasl_password", "auth_token", "credentials"):
        assert is_secret_option(name)
    for name in ("key_prefix", "threshold", "username", "db"):
        assert not is_secret_option(name)


def test_parsed_url_never_shows_its_password_or_secrets() -> None:
    parsed = parse_url(f"redis://ada:{SECRET}%2Fx@h/0?secret={SECRET}&sasl_password={SECRET}&db=1")
    assert parsed.password == f"{SECRET}/x"
    assert parsed.query["secret"] == SECRET
    for text in (repr(parsed), str(parsed), parsed.redacted(), f"{parsed}", f"{parsed!r}"):
        assert SECRET not in text
        assert "ada:***@h" in text
        assert "db=1" in text


def test_caches_built_with_secrets_never_show_them() -> None:
    caches = [
        from_url(f"simple://?secret={SECRET}"),
        from_url("simple://", secret=SECRET),
        from_url(f"redis://ada:{SECRET}@127.0.0.1:1/0?secret={SECRET}"),
        from_url(f"redis://127.0.0.1:1/0?password={SECRET}"),
    ]
    for cache in caches:
        assert SECRET not in repr(cache)
        assert SECRET not in str(cache)
        cache.close()


@pytest.mark.parametrize(
    "url",
    [
        f"redis://ada:{SECRET}@h:port/0",
        f"redis://ada:{SECRET}@h/0#frag",
        f"redis://ada:{SECRET}#x@h/0",
        f"redis://ada:{SECRET}?x@h/0",
        f"redis://ada:{SECRET}/x@h/0",
        f"redis://ada:6379/{SECRET}@h/0",
        f"redis://ada:6379?x={SECRET}@h/0",
        f"redis://ada:6379?password={SECRET}@h/0",
        f"redis://ada:6379?db={SECRET}@h/0",
        f"memcached://ada:6379?key_prefix={SECRET}@h",
        f"redis:/ada:{SECRET}@h/0",
        f"redis://ada:{SECRET}@[::1/0",
        f"redis://ada:{SECRET}@a,,b/0",
        f"reddis://ada:{SECRET}@h/0",
        f"redis://h/0?secret={SECRET}&flag",
        f"redis://h/0?secret={SECRET}&secret={SECRET}",
        f"redis://h/0?sec%72et={SECRET}&flag",
        f"redis://h/0?password={SECRET}&db=zero",
        f"simple://?secret={SECRET}&bogus=1",
        f"simple://?secret={SECRET}&serializer=yaml",
        f"simple://ada:{SECRET}@h",
    ],
)
def test_errors_never_show_a_password_or_secret(url: str) -> None:
    with pytest.raises((ConfigurationError, PluginError)) as info:
        from_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in redact_url(url)


def test_backend_error_logs_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    cache = from_url(f"redis://ada:{SECRET}@127.0.0.1:1/0?socket_connect_timeout=0.5")
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.set("k", 1) is False
    cache.close()
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()


# -- properties ----------------------------------------------------------------------------------

_URL_CHARS = string.ascii_letters + string.digits + ":/?#[]@!$&'()*+,;=%-._~ \t\n\x00é€"
# Schemes whose construction has no side effect outside the process (no files, no connections).
_SAFE_SCHEMES = [
    *("simple", "memory", "null", "redis", "rediss", "unix", "redis+unix", "memcached"),
    *("simpel", "file"),
]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            "{}://{}".format,
            st.sampled_from(_SAFE_SCHEMES),
            st.text(alphabet=_URL_CHARS, max_size=60),
        ),
        st.builds(
            "simple://?{}={}".format,
            st.sampled_from(["threshold", "default_timeout", "serializer", "secret", "x"]),
            st.text(alphabet=_URL_CHARS, max_size=20),
        ),
    )
)
def test_any_string_gives_a_cache_or_a_configuration_error(url: str) -> None:
    try:
        cache = from_url(url)
    except (ConfigurationError, PluginError) as err:
        assert str(err)
    else:
        cache.close()
    assert isinstance(redact_url(url), str)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(alphabet=string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=8),
    query=st.text(alphabet=_URL_CHARS, max_size=40),
)
def test_any_file_url_options_give_a_cache_or_a_configuration_error(name: str, query: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        try:
            cache = from_url(f"file://{root}/{name}?{query}")
        except (ConfigurationError, PluginError) as err:
            assert str(err)
        else:
            cache.close()


_HOSTS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(str),
)


@settings(max_examples=1000, deadline=None)
@given(
    scheme=st.builds(
        str.__add__,
        st.sampled_from(string.ascii_lowercase),
        st.text(alphabet=string.ascii_lowercase + string.digits + "+.-", max_size=10),
    ),
    hosts=st.lists(st.tuples(_HOSTS, st.none() | st.integers(1, 65535)), max_size=3),
    path=st.none() | st.text(max_size=15),
    username=st.none() | st.text(min_size=1, max_size=8),
    password=st.none() | st.text(min_size=1, max_size=8),
    query=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
def test_redacted_urls_parse_back_to_the_same_parts(
    scheme: str,
    hosts: list[tuple[str, int | None]],
    path: str | None,
    username: str | None,
    password: str | None,
    query: dict[str, str],
) -> None:
    url = CacheURL(
        scheme, tuple(hosts), "" if path is None else "/" + path, username, password, query
    )
    again = parse_url(str(url))
    assert again.scheme == url.scheme
    assert again.hosts == url.hosts
    assert again.path == url.path
    assert again.password == (None if password is None else "***")
    assert again.username == username
    assert dict(again.query) == {k: "***" if is_secret_option(k) else v for k, v in query.items()}
