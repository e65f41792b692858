"""Hiding secrets in URLs and texts: which options hold a secret, and the masking of a raw,
possibly malformed URL and of every URL in a free text (a message, an engine's error).

Masking a URL that parses, part by part, is :meth:`CacheURL.redacted`, with
:func:`~cacheplug.core.cache_url.redact_url` in :mod:`cacheplug.core.cache_url`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator
from urllib.parse import unquote

__all__ = [
    "MASK",
    "hide_credentials",
    "is_secret_option",
    "is_secret_value",
    "mask_url",
    "redact_text",
]

#: What a hidden password or secret shows instead.
MASK = "***"
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "credential", "auth")
# whole words a misspelt secret option is near; a name's words are split at _ - and .
_SECRET_NAMES = ("password", "passwd", "passphrase", "secret", "token", "credential")
_NAME_PARTS = re.compile(r"[_.\-]+")
# the last word of an option naming a key: api_key, apikey, access_key, private_key
_KEY_WORDS = ("key", "apikey")
# A value runs to the next "name=" pair, so a raw "#" or "&" inside a secret stays masked.
_QUERY_PAIR = re.compile(r"([?&;#])([^=&;#?]*)=(.*?)(?=[&;#][^=&;#]*=|\Z)", re.DOTALL)
_EMBEDDED_NAME = re.compile(r"[&;]([^=&;]*)=")
# A URL in free text: inside quotes it runs to the closing quote, elsewhere to a space.
_URL_IN_TEXT = re.compile(
    r"(?<=')[A-Za-z][A-Za-z0-9+.\-]*://[^'\n]*"
    r'|(?<=")[A-Za-z][A-Za-z0-9+.\-]*://[^"\n]*'
    r"|[A-Za-z][A-Za-z0-9+.\-]*://\S*"
)
_LETTERS = frozenset(string.ascii_letters)
_SCHEME_CHARS = _LETTERS | frozenset(string.digits + "+.-")
# What may follow a host's ':' in an authority without '@': a port, or the grammar's word
_PORT_LIKE = re.compile(r"(?:[0-9]*|port)\Z", re.IGNORECASE)


def is_secret_option(name: str) -> bool:
    """Whether the value of URL option ``name`` must never be shown.

    True when the name contains ``pass`` (``password``, ``passwd``, ``passphrase``),
    ``pwd``, ``secret``, ``token``, ``credential`` or ``auth``, when one of its words is
    ``pw``, when its last word is ``key`` or ``apikey`` (``api_key``, ``access_key``: a key
    option names a key, where ``key_prefix`` only starts with one), or when a word is a near
    miss of a secret word (``pasword``, ``secert``): a misspelt secret option still holds a
    secret.
    """
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    parts = [part for part in _NAME_PARTS.split(lowered) if part]
    if parts and parts[-1] in _KEY_WORDS:
        return True
    from difflib import get_close_matches  # only for names that are no secret word

    return any(
        part == "pw" or (len(part) > 3 and get_close_matches(part, _SECRET_NAMES, 1, 0.75))
        for part in parts
    )


def is_secret_value(name: str, value: str) -> bool:
    """Whether the value of URL option ``name`` must never be shown.

    Besides :func:`is_secret_option`, a value that reads like ``1;secret=…`` hides one: ``;``
    was a query separator once, so such a URL was meant to carry a secret option.
    """
    return is_secret_option(name) or _hides_secret(value)


def _hides_secret(value: str) -> bool:
    return any(is_secret_option(unquote(embedded)) for embedded in _EMBEDDED_NAME.findall(value))


def redact_text(text: str, sources: Iterable[str] = ()) -> str:
    """``text`` (a message, an engine's error) with every URL in it masked; the rest unchanged.

    A ``scheme://...`` runs to the next space, or to its closing quote when quoted, and is
    masked as generously as :func:`redact_url` masks a malformed URL.

    :param sources: strings the text may quote (a command line's arguments): the URL ending
        each is masked whole first, so a space or quote in its password cannot cut it short.
    """
    for source in sources:
        first = next(_urls_in(source), None)
        if first is not None:
            url = source[first.start() :]
            for shown in (url, repr(url)[1:-1]):  # as is, and as argparse's %r quotes it
                text = text.replace(shown, mask_url(shown))
    parts: list[str] = []
    done = 0
    for match in _urls_in(text):
        parts += [text[done : match.start()], mask_url(match[0])]
        done = match.end()
    return "".join(parts) + text[done:]


def _urls_in(text: str) -> Iterator[re.Match[str]]:
    """The matches of ``_URL_IN_TEXT`` in ``text``, as ``finditer`` finds them, in linear time.

    The pattern is tried only where a scheme can end at a '://': tried at every letter, it
    read each long word (a 100,000-character key prefix in a repr) to its end, in seconds.
    """
    done = 0
    colon = text.find("://")
    while colon >= 0:
        start = colon
        while start > done and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < colon and text[start] not in _LETTERS:
            start += 1
        match = _URL_IN_TEXT.match(text, start) if start < colon else None
        if match is not None:
            yield match
            done = match.end()
        colon = text.find("://", max(done, colon + 1))


def hide_credentials(part: str) -> str:
    """``part``, one host of an authority without '@', with what may be a password masked.

    A ``user:password`` whose ``@host`` was forgotten reads as host and port: an empty host
    before the ':', or a "port" that is no number, may well be one.
    """
    if part.startswith("["):
        address, bracket, tail = part.partition("]")
        if bracket and tail.startswith(":") and not _PORT_LIKE.match(tail[1:]):
            return f"{address}]:{MASK}"
        return part
    host, colon, port = part.partition(":")
    if colon and (not host or not _PORT_LIKE.match(port)):
        return f"{host}:{MASK}"
    return part


def mask_url(url: str) -> str:
    """A masked copy of a raw, possibly malformed ``url``, for error messages.

    Masks generously: everything between the first ':' of the authority and its last '@'
    (without '@', what :func:`hide_credentials` masks), and the value of every option
    :func:`is_secret_option` hides. Both are found on the URL as given and masked together
    where they overlap: a raw '@', '?' or '&name=' in a password or a secret cannot make
    one of them end early and show part of the other.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    # a pair at every separator, also inside another's value: '?x=1@host?secret=' holds one
    pairs = (_QUERY_PAIR.match(rest, i) for i, char in enumerate(rest) if char in "?&;#")
    spans = [pair.span(3) for pair in pairs if pair and is_secret_option(unquote(pair.group(2)))]
    at = rest.rfind("@")
    colon = rest.find(":", 0, at) if at >= 0 else -1
    if colon >= 0:
        spans.append((colon + 1, at))
    shown: list[str] = []
    done = 0
    for begin, stop in sorted(spans):
        if begin > done:
            shown += [rest[done:begin], MASK]
        elif begin == done and not shown:
            shown.append(MASK)
        done = max(done, stop)
    masked = "".join(shown) + rest[done:]
    if at < 0:
        masked = _hide_authority_credentials(masked)
    return head + sep + masked


def _hide_authority_credentials(rest: str) -> str:
    """``rest`` with :func:`hide_credentials` applied to each host of the authority (no '@')
    it starts with."""
    end = next((i for i, char in enumerate(rest) if char in "/?#"), len(rest))
    return ",".join(hide_credentials(part) for part in rest[:end].split(",")) + rest[end:]
