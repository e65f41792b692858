"""Review 30, follow-up: a second read of the day's changes to the core (base reviewer)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plugins import fresh_registry  # noqa: F401 - autouse: a clean registry per test

from cacheplug import SimpleCache, hookimpl
from cacheplug.core.hookspecs import RegisterFn
from cacheplug.core.plugins import register_plugin
from cacheplug.core.redaction import _URL_IN_TEXT, _urls_in, redact_text
from cacheplug.core.url import from_url, redact_url

SECRET = "f0llow-up-Secret-Zx3"  # holds "secret": a secret option's name too


# -- a raw password holding '&name=' of a secret option -------------------------------------------


@pytest.mark.parametrize(
    "password",
    [f"a?b={SECRET}&auth=x", f"p#x={SECRET}&token=2"],
    ids=["question-then-auth", "hash-then-token"],
)
def test_a_raw_password_holding_a_secret_option_is_masked_whole(password: str) -> None:
    # the secret option's value runs over the user-info's '@': masking it first hid that '@'
    url = f"redis://user:{password}@cache:6379/0"
    assert SECRET not in redact_url(url)
    assert SECRET not in redact_text(f"the engine said: {url} is down")


# -- _urls_in finds what the pattern's finditer finds ---------------------------------------------

_PIECES = [*"ab1+.-:/ '\"\n@?=[](){}<>", "://", "a://", "'x://", '"b+c.d-1://', "\u212a", "é"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_urls_in_matches_the_pattern_scanned_at_every_position(text: str) -> None:
    expected = [(match.span(), match[0]) for match in _URL_IN_TEXT.finditer(text)]
    assert [(match.span(), match[0]) for match in _urls_in(text)] == expected


# -- a hook that registers and returns what register() returned -----------------------------------


class _RegistersInAComprehension:
    @hookimpl
    def cacheplug_register_backends(self, register: RegisterFn) -> Any:
        return [register(name, SimpleCache) for name in ("listed-one", "listed-two")]


def test_a_hook_that_registers_and_returns_a_list_still_registers() -> None:
    # it registered every name before the answer was refused, and all of them were dropped
    register_plugin(_RegistersInAComprehension(), "comprehension")
    assert isinstance(from_url("listed-one://"), SimpleCache)
    assert isinstance(from_url("listed-two://"), SimpleCache)


def test_a_raw_password_starting_a_query_is_masked_whole() -> None:
    # the password opened a query ('?...secret...=') whose masked value held the '@'
    url = f"redis://user:?{SECRET}x=@cache:6379/0"
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:/?xsecretx=@host",
        "redis://user:&@/QQSECRETQQ=@host",
        "redis://:pw?x=1@host?secret=QQSECRETQQ",
        "redis://user:a?b=c&auth=QQSECRETQQ@host:6379/0",
    ],
)
def test_raw_passwords_and_secrets_overlapping_are_masked_together(url: str) -> None:
    # the user-info and the secret options' values are found on the URL as given, so neither
    # can end the other early and show a piece of it
    secret = "QQSECRETQQ" if "QQSECRETQQ" in url else "xsecretx="
    shown = redact_text(f"engine said: {url} is down")
    assert secret not in shown
    assert shown.startswith("engine said: redis://") and shown.endswith(" is down")
