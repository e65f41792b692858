"""The options of ``FileSystemCache`` checked as given: ``threshold``, ``mode`` (as bits, or as
octal text in a ``file://`` URL), ``hash_method``, and the URL itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from cacheplug.core.errors import ConfigurationError

if TYPE_CHECKING:
    from cacheplug.core.cache_url import CacheURL

__all__ = [
    "HashMethod",
    "checked_mode",
    "checked_threshold",
    "options_from_url",
    "parse_mode",
    "resolved_hash",
]

HashMethod = Callable[[bytes], Any]


def checked_threshold(threshold: object) -> int:
    if type(threshold) is not int or threshold < 0:
        raise ConfigurationError(f"threshold must be an int >= 0 (0 = no limit), got {threshold!r}")
    return threshold


def checked_mode(mode: object) -> int:
    if mode is None:
        return 0o600
    if type(mode) is not int or not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        shown = oct(mode) if type(mode) is int and mode >= 0 else repr(mode)  # 0o400, not 256
        raise ConfigurationError(
            f"mode must be file permission bits from 0o600 to 0o777 (no setuid, setgid or "
            f"sticky bit) that let the owner read and write, got {shown}"
        )
    return mode


def parse_mode(text: str) -> int:
    """Octal permission text from a URL: ``600``, ``0600`` and ``0o600`` all mean ``0o600``."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or set(digits) - set("01234567"):
        raise ConfigurationError(
            f"option 'mode' must be octal permissions such as 600, 0600 or 0o600, got {text!r}"
        )
    return int(digits, 8)


def resolved_hash(method: HashMethod | str) -> HashMethod:
    if isinstance(method, str):
        name = method.lower()
        if name not in hashlib.algorithms_available:
            raise ConfigurationError(
                f"unknown hash_method {method!r}; use a hashlib name such as "
                f"{', '.join(sorted(n for n in hashlib.algorithms_guaranteed if 'shake' not in n))}"
            )
        method = partial(hashlib.new, name)
    try:
        digest = method(b"cacheplug").hexdigest()
    except Exception as err:  # not a hashlib constructor, or one needing a length (shake)
        raise ConfigurationError(
            f"hash_method must be a hashlib constructor such as hashlib.sha256 (or its name) "
            f"whose hexdigest() takes no argument: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{16,128}", digest):
        raise ConfigurationError("hash_method must give a hex digest of 16 to 128 digits")
    return method


def options_from_url(url: CacheURL, options: dict[str, Any]) -> dict[str, Any]:
    """The keywords of a ``file://`` URL (``options``) with a ``mode`` given as text made bits;
    the directory is the URL's path, unless a ``cache_dir`` keyword is among them.

    :raises ConfigurationError: a host, credentials or a relative path in the URL, or a
        ``mode`` that is not octal text.
    """
    if url.hosts or url.username is not None or url.password is not None:
        raise ConfigurationError(
            f"file:// takes no host or credentials, got {url.redacted()!r}; write an absolute "
            f"directory after three slashes, e.g. file:///var/cache/myapp"
        )
    if not url.path.startswith("/") and "cache_dir" not in options:
        raise ConfigurationError(
            f"file:// needs an absolute directory, got {url.redacted()!r}; "
            f"write file:///var/cache/myapp (three slashes)"
        )
    mode = options.get("mode")
    if isinstance(mode, str):
        options = {**options, "mode": parse_mode(mode)}
    return options
