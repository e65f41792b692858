"""The passwords a ``RedisCache``'s errors and log lines must never show: those it knows of
(its own, those of a client or pool it was given) and those Redis echoes of a login it does
not understand, whoever's they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SHOWN_PART", "masked", "secrets_of"]

SHOWN_PART = 4  # the shortest beginning of a password masked where the rest was cut off
# What a server that lacks HELLO (or has AUTH renamed) echoes of redis-py's login: its arguments
# hold credentials the cache may never have seen (a credential_provider's, a client's given).
# Kept: HELLO's version, AUTH and the user name, each quoted ('x' or `x`, with commas: Redis 5).
_ECHOED_LOGIN = re.compile(
    r"(unknown command ([`'])(?:HELLO\2, with args beginning with: \2[^`']*\2,? \2AUTH\2,? "
    r"\2[^`']*\2,? |AUTH\2, with args beginning with: ))\2.*",
    re.IGNORECASE | re.DOTALL,
)
# what else such a server echoes of them (a user name holding a quote)
_ECHOED_ARGS = re.compile(
    r"(unknown command [`']?(?:HELLO|AUTH)[`']?, with args beginning with:).*",
    re.IGNORECASE | re.DOTALL,
)


def secrets_of(password: object, kwargs: Mapping[str, Any], given: Any) -> tuple[str, ...]:
    """The credentials a cache's errors must never show: its ``password`` and the ``kwargs``'
    ``ssl_password``, or those of the client or pool ``given`` (passed in as ``host`` or as
    ``connection_pool``)."""
    options: list[Mapping[str, Any]] = [kwargs]
    for owner in (given, kwargs.get("connection_pool")):
        manager = getattr(owner, "nodes_manager", None)  # a RedisCluster's node settings
        for holder in (owner, getattr(owner, "connection_pool", None), manager):
            found = getattr(holder, "connection_kwargs", None)
            if isinstance(found, Mapping):
                options.append(found)
    shown = []
    for value in (password, *(o.get(n) for o in options for n in ("password", "ssl_password"))):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if isinstance(text, str) and text and text not in shown:
            shown.append(text)
    return tuple(shown)


def masked(err: Exception, secrets: Iterable[str]) -> Exception:
    """``err``, or one of its class saying the same with ``secrets`` masked: Redis echoes the
    arguments of a command it does not know, so a server without ``HELLO`` (Redis before 6,
    a proxy) answers redis-py's ``HELLO 3 AUTH user password`` with the password in its
    error. The arguments of an unknown ``HELLO`` or ``AUTH`` are masked whatever they hold: a
    ``credential_provider``'s password is not known here (asking it again may block)."""
    try:
        text = hidden = str(err)
    except Exception:  # the caller's outage answer must not fail with it: named instead
        return RuntimeError(f"{type(err).__name__} (its str() fails)")
    if "COMMAND" in text.upper():  # the regular expressions cost an outage's calls otherwise
        hidden = _ECHOED_LOGIN.sub(r"\1\2***\2", text)
        if hidden == text:
            hidden = _ECHOED_ARGS.sub(r"\1 ***", text)
    for secret in sorted(secrets, key=len, reverse=True):  # a longer one may hold a shorter
        if secret[:SHOWN_PART] not in hidden:  # neither it nor a beginning cut off is there
            continue
        hidden = hidden.replace(secret, "***")
        # Redis cuts the arguments it echoes at 128 characters: a long one's beginning shows,
        # closed by its quote (any other beginning, "local" of a host name, is left alone)
        for size in range(len(secret) - 1, SHOWN_PART - 1, -1):
            cut = secret[:size] + "'"
            if cut in hidden:
                hidden = hidden.replace(cut, "***'")
                break
    if hidden == text:
        return err
    try:
        shown = type(err)(hidden)
    except Exception:  # a class taking other arguments: keep its name in the message
        shown = RuntimeError(f"{type(err).__name__}: {hidden}")
    return shown
