"""Keys and expiry times in the form memcached takes them.

memcached takes keys of at most 250 printable ASCII characters without spaces: others are sent
in a hashed form. Its exptime is whole seconds, up to 30 days relative, a unix time beyond.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections.abc import Sequence

__all__ = [
    "HASH_MARK",
    "MAX_EXPTIME",
    "MAX_KEY_LENGTH",
    "MAX_RELATIVE_EXPIRY",
    "exptime_for",
    "left_to_live",
    "mapped_line",
    "memcached_key",
    "plain_line",
]

MAX_RELATIVE_EXPIRY = 30 * 24 * 3600  # memcached reads larger exptimes as unix timestamps
MAX_EXPTIME = 2**31 - 1  # memcached parses exptime as a signed 32-bit number: later ones wrap
MAX_KEY_LENGTH = 250
HASH_MARK = "~#"  # only mapped keys contain it, so a mapped key never equals a plain one
_NOT_KEY_CHARS = re.compile(r"[^\x21-\x7e]")
_UNDERSCORED = bytes(c if 0x21 <= c <= 0x7E and c != ord("?") else ord("_") for c in range(256))
_blake2b = hashlib.blake2b


def memcached_key(full: str) -> str:
    """The key sent to memcached: ``full`` itself when memcached takes it, else a hashed form.

    A hashed key keeps a readable start and ends with ``~#`` and a 160-bit digest of ``full``.
    """
    if (
        len(full) <= MAX_KEY_LENGTH
        and full.isascii()
        and full.isprintable()
        and " " not in full
        and HASH_MARK not in full
        and full
    ):
        return full
    if len(full) <= MAX_KEY_LENGTH:  # remembered (bounded): hashing was a fifth of a get's work
        return _short_hashed_key(full)
    return _hashed_key(full)


def _hashed_key(full: str) -> str:
    head = full[:200]
    if "?" in head:
        head = _NOT_KEY_CHARS.sub("_", head)
    else:  # each character memcached refuses becomes "?", then "_"
        head = head.encode("ascii", "replace").translate(_UNDERSCORED).decode("ascii")
    digest = _blake2b(full.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return f"{head}{HASH_MARK}{digest}"


_short_hashed_key = functools.lru_cache(maxsize=1024)(_hashed_key)


def plain_line(keys: Sequence[str]) -> bytes | None:
    """``keys`` as the names of one ``get`` when memcached takes every one as it is, else None."""
    try:
        joined = " ".join(keys)
    except TypeError:
        return None  # not all str: the checked path raises the contract's error
    if (
        keys
        and joined.isascii()
        and joined.isprintable()
        and joined.count(" ") == len(keys) - 1
        and HASH_MARK not in joined
        and min(map(len, keys)) > 0
        and max(map(len, keys)) <= MAX_KEY_LENGTH
    ):
        return joined.encode("ascii")
    return None


def mapped_line(keys: Sequence[str]) -> bytes | None:
    """``keys`` as the names of one ``get``, mapped where memcached would refuse them; None
    unless every key is a ``str``."""
    if not keys or not all(type(key) is str for key in keys):
        return None  # the checked path raises the contract's error
    return " ".join(map(memcached_key, keys)).encode("ascii")


def exptime_for(seconds: float) -> int:
    """memcached's exptime for a normalized timeout (whole seconds, never 0 by rounding)."""
    if seconds <= 0:
        return 0 if seconds == 0 else -1  # memcached stores a negative exptime as expired
    whole = math.ceil(seconds)
    if whole > MAX_RELATIVE_EXPIRY:
        # from the current whole second, as memcached counts relative ones: N-1 to N seconds
        return min(int(time.time()) + whole, MAX_EXPTIME)
    return whole


def left_to_live(seconds: int) -> int:
    """memcached's exptime for an entry that has ``seconds`` left (-1: never expires)."""
    if seconds == -1:
        return 0
    if seconds > MAX_RELATIVE_EXPIRY:  # a unix time: not rounded up, the clocks differ anyway
        return min(int(time.time()) + seconds, MAX_EXPTIME)
    return max(seconds, 1)
