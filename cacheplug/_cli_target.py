"""The cache a ``cacheplug`` command works on: built from the URL of the command line (else of
``$CACHE_URL``), with what is needed to talk about it without leaking secrets: the masking of its
secrets in an engine's error or its repr, and the wording of why it cannot be reached.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from cacheplug._cli_problem import EXIT_USAGE, Problem

if TYPE_CHECKING:
    import argparse
    from types import TracebackType

    from cacheplug.core.base import BaseCache
    from cacheplug.core.cache_url import CacheURL

__all__ = ["DEFAULT_URL", "ENV_URL", "FirstFailure", "Target", "token", "url_of"]

DEFAULT_URL = "simple://"
ENV_URL = "CACHE_URL"
_MASK = "***"
#: The shortest secret masked wherever an engine's error holds it: a shorter one turns up in
#: ordinary text by chance ('1' in '127.0.0.1', 'password' in redis-py's 'invalid
#: username-password pair'), and the mask would show it by where it lands.
_MIN_SCRUBBED = 12


class FirstFailure(logging.Filter):
    """Keeps the engine error behind the first failure the cache logs, and lets it through.

    A filter, not a handler: the line still reaches stderr as before.
    """

    def __init__(self) -> None:
        from cacheplug.core.stats import CONTRACT_SAYS

        super().__init__()
        self.cause = ""
        self._said = CONTRACT_SAYS

    def filter(self, record: logging.LogRecord) -> bool:
        _, said, cause = record.getMessage().partition(self._said)
        if said and not self.cause:
            self.cause = cause
        return True


class Target:
    """A cache built from a URL, with what is needed to talk about it without leaking secrets.

    Used as a context manager: it closes the cache and remembers why the engine failed.
    """

    def __init__(self, url: str, origin: str = "", **overrides: Any) -> None:
        from cacheplug.core.cache_url import parse_url
        from cacheplug.core.errors import CacheplugError
        from cacheplug.core.redaction import is_secret_option, is_secret_value
        from cacheplug.core.url import from_url

        try:
            self.url: CacheURL = parse_url(url)
            self.cache: BaseCache = from_url(url, **overrides)
        except (CacheplugError, ValueError) as err:
            raise Problem(f"{err} {origin}".rstrip(), EXIT_USAGE) from err
        query = self.url.query.items()
        self._secrets = [self.url.password or ""] + [v for n, v in query if is_secret_option(n)]
        # a whole value hiding a secret ('app;secret=...'): a repr may show it (key_prefix)
        self._hiding = [v for n, v in query if is_secret_value(n, v) and not is_secret_option(n)]
        self._failure = FirstFailure()

    def __enter__(self) -> BaseCache:
        logging.getLogger("cacheplug").addFilter(self._failure)
        return self.cache.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        logging.getLogger("cacheplug").removeFilter(self._failure)
        self.cache.__exit__(kind, error, traceback)

    def scrub(self, text: str) -> str:
        """``text`` (an engine's error, the cache's repr) with the URL's secrets masked.

        Every URL in it is masked by its structure, whatever its password, and so is a value
        hiding a secret option; a secret standing alone is masked only when it is long enough
        (``_MIN_SCRUBBED``) not to be there by chance.
        """
        from cacheplug.core.redaction import redact_text

        text = redact_text(text)
        for value in self._hiding:  # holds 'name=': never there by chance
            text = text.replace(value, _MASK)
        for secret in self._secrets:
            if len(secret) >= _MIN_SCRUBBED:
                text = text.replace(secret, _MASK)
        return text

    def unreachable(self) -> str:
        from cacheplug.backends.filesystem import FileSystemCache

        shown = self.scrub(repr(self.cache))
        url = self.url.redacted()
        cause = self.scrub(self._failure.cause)
        # redis-py's cluster client gives only the text of the last node's error
        _, cluster, answer = cause.partition(_CLUSTER_UNREACHABLE)
        # redis-py's names for a refused login and for a command the ACL forbids
        tls = self.url.scheme == "rediss" or self.url.query.get("ssl", "").lower() in _TRUE
        login_refused = cause.startswith("Authentication") or (
            bool(cluster) and answer.startswith(_LOGIN_REFUSED)
        )
        if login_refused and not (self.url.password or self.url.query.get("password")):
            message = (
                f"the server at {url} asks for a password and the URL gives none: put "
                "':password@' before the host (or 'user:password@' for an ACL user)"
            )
        elif login_refused:  # also AuthenticationWrongNumberOfArgsError
            message = (
                f"the server at {url} refused the login: are the user name and password right?"
            )
        elif cause.startswith("NoPermissionError"):
            message = f"the server at {url} refused a command: may this user (ACL) run it?"
        elif cluster and answer.startswith("Cluster mode is not enabled"):
            message = (
                f"the server at {url} answered, but is not a Redis Cluster node (cluster mode "
                "is not enabled): for a single Redis server write redis://host:port/0"
            )
        elif cause.startswith(_FOREIGN_REPLY) or (cluster and answer.startswith("Protocol error")):
            message = (
                f"the server at {url} answered, but not as {self.url.scheme}:// expects: "
                "is another kind of server (Redis, memcached, ...) listening on that port?"
            )
        elif _CERTIFICATE_REFUSED in cause:
            message = (
                f"the server at {url} speaks TLS, but its certificate was refused: give the CA "
                "that signed it as ?ssl_ca_certs=/path/to/ca.pem, and connect by a host name "
                "the certificate names"
            )
        elif not tls and self.url.scheme in _TLS_SCHEMES and cause.endswith(_HUNG_UP):
            message = (
                f"the server at {url} accepted the connection and closed it without a reply: "
                "if that port speaks only TLS, write rediss:// (or add ?ssl=true); otherwise, "
                "is a Redis server listening there?"
            )
        elif cause.startswith("ResponseError: DB index is out of range"):
            message = (
                f"the server at {url} has no database of that number: Redis numbers them from 0 "
                "to its 'databases' setting minus one (0 to 15 by default)"
            )
        elif cause.startswith("ReadOnlyError"):
            message = f"the server at {url} is a read-only replica: point the URL at its primary"
        elif cause.startswith("OutOfMemoryError"):
            message = (
                f"the server at {url} is full (maxmemory) and refuses writes: raise its "
                "maxmemory, or give it an eviction policy such as maxmemory-policy allkeys-lru"
            )
        elif cause.startswith("ResponseError"):  # MISCONF, a renamed command, ...
            message = f"the server at {url} answered the write with an error"
        elif isinstance(self.cache, FileSystemCache):  # no server: the directory refused
            message = (
                f"cannot write to the cache at {url}: may this process write there, "
                "and is the disk not full?"
            )
        else:
            message = (
                f"cannot reach the cache at {url}: is the server running and reachable from here?"
            )
            if tls:
                message += " Does it speak TLS on that port?"
        return f"{message} ({shown})" + (f"\n  the error: {cause}" if cause else "")

    def probe(self, key: str) -> None:
        """Raise a :class:`Problem` unless the cache stores and forgets a key."""
        if not self.cache.set(key, 1, 60):
            raise Problem(self.unreachable())
        self.cache.delete(key)


#: How redis-py and pymemcache name a reply in another protocol (a port of another server).
_FOREIGN_REPLY = ("InvalidResponse", "MemcacheUnknownError")
_TRUE = ("true", "1", "yes", "on")
_CLUSTER_UNREACHABLE = (
    "Redis Cluster cannot be connected. Please provide at least one reachable node: "
)
#: How redis-py says a server hung up on the first command (a TLS-only port hears plain text).
_HUNG_UP = ("Connection reset by peer')", "Connection closed by server.")
_TLS_SCHEMES = ("redis", "redis+cluster")  # plain-text URLs that ?ssl=true turns to TLS
#: How OpenSSL says it did not trust the server's certificate (self-signed, other host name).
_CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
#: How Redis words a refused login (no password given, a wrong one, a HELLO before AUTH).
_LOGIN_REFUSED = ("NOAUTH", "Authentication required", "invalid username-password", "HELLO must")


def token() -> str:
    """A fresh random part for a key prefix, so that a run meets no earlier run's keys."""
    import secrets

    return secrets.token_hex(4)


def url_of(args: argparse.Namespace) -> tuple[str, str]:
    """The cache URL of the command line, else of ``$CACHE_URL``, else ``simple://``; and where
    it came from, to end an error message with."""
    if args.url:
        return args.url, ""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL], f"(from environment variable {ENV_URL})"
    return DEFAULT_URL, ""
