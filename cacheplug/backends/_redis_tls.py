"""The TLS options of a ``RedisCache``'s client, checked as redis-py will use them: settings it
would ignore refused, and the local certificate and key files loaded once up front, where a
mistake found on every connect would pass for a server outage.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, NoReturn

from cacheplug.core.errors import ConfigurationError

__all__ = ["checked_cert_reqs", "checked_tls", "refuse_ignored_tls"]

_CERT_REQS = ("none", "optional", "required")


def checked_cert_reqs(kwargs: dict[str, Any]) -> None:
    """Raise unless a client's ``ssl_cert_reqs`` in ``kwargs``, given as text, names a
    verify mode (in any case), which is then put in lower case, as redis-py takes it."""
    reqs = kwargs.get("ssl_cert_reqs")
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ConfigurationError(
                f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)} (in any case) or an "
                f"ssl.VerifyMode, got {reqs!r}"
            )
        kwargs["ssl_cert_reqs"] = reqs.lower()  # redis-py takes lower case only


def refuse_ignored_tls(kwargs: Mapping[str, Any]) -> None:
    """Raise unless redis-py would honour every TLS setting of a client's ``kwargs``: it reads
    ``ssl_*`` only with ``ssl`` on, and never wraps a unix socket in TLS, so a user would get
    a connection in clear text while believing it verified.

    :raises ConfigurationError: names the settings and what TLS needs.
    """
    tls = sorted(
        name for name, value in kwargs.items() if name.startswith("ssl_") and value is not None
    )
    path = kwargs.get("unix_socket_path")
    if path is not None and (tls or kwargs.get("ssl")):
        named = ["ssl", *tls] if kwargs.get("ssl") else tls
        raise ConfigurationError(
            f"{', '.join(named)} cannot apply to the unix socket {path!r}: redis-py never wraps "
            f"one in TLS; drop {'them' if len(named) > 1 else 'it'}, or connect over TCP with "
            f"rediss://host:6379/0 for TLS"
        )
    if tls and not kwargs.get("ssl"):
        raise ConfigurationError(
            f"{', '.join(tls)} would be ignored on a plain connection: TLS options need "
            f"rediss:// or ?ssl=true in a URL, ssl=True as a keyword"
        )


class _NoPassphrase(Exception):
    """An encrypted key met without an ``ssl_password``."""


def checked_tls(kwargs: dict[str, Any]) -> None:
    """Raise unless the local files of a TLS connection in ``kwargs`` load as redis-py loads
    them on every connect, where a mistake would pass for a server outage. Without
    ``ssl_password``, a key found encrypted on a later connect fails that connect instead of
    asking for its passphrase on the process' terminal, without a timeout.

    :raises ConfigurationError: names the option, its file and what is wrong with it.
    """
    if kwargs.get("ssl") is not True:
        return
    import ssl

    for option in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"):
        path = kwargs.get(option)
        if path is not None:
            _check_readable(option, path, directory=option == "ssl_ca_path")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for option, where in (("ssl_ca_certs", "cafile"), ("ssl_ca_data", "cadata")):
        if kwargs.get(option) is not None:
            try:
                context.load_verify_locations(**{where: kwargs[option]})
            except (ssl.SSLError, TypeError, ValueError) as err:
                shown = f" {kwargs[option]!r}" if where == "cafile" else ""
                raise ConfigurationError(
                    f"{option}{shown} holds no CA certificate redis-py can load ({err})"
                ) from None
    certfile, keyfile = kwargs.get("ssl_certfile"), kwargs.get("ssl_keyfile")
    if certfile is None and keyfile is None:
        return
    if certfile is None:
        raise ConfigurationError(
            f"ssl_keyfile {keyfile!r} needs ssl_certfile, the client certificate of its key"
        )
    key = ("ssl_keyfile", keyfile) if keyfile is not None else ("ssl_certfile", certfile)
    given = kwargs.get("ssl_password")
    asked: list[bool] = []

    def passphrase() -> Any:
        asked.append(True)
        if given is None:
            raise _NoPassphrase
        return given() if callable(given) else given

    try:
        context.load_cert_chain(certfile, keyfile, password=passphrase)
    except _NoPassphrase:
        raise ConfigurationError(
            f"{key[0]} {key[1]!r} holds an encrypted key; give its passphrase as ssl_password"
        ) from None
    except ssl.SSLError as err:
        raise ConfigurationError(_cert_chain_fault(certfile, key, bool(asked), err)) from None
    except (TypeError, ValueError) as err:  # says what is wrong, never the passphrase
        raise ConfigurationError(f"ssl_password cannot unlock {key[0]}: {err}") from None
    if given is None:  # a key encrypted later fails its connect, not waits for a terminal
        kwargs["ssl_password"] = functools.partial(_no_passphrase, *key)


def _check_readable(option: str, path: object, directory: bool) -> None:
    """Raise unless ``path`` names a file this process can read (a directory, when
    ``directory``)."""
    if not isinstance(path, str | bytes | os.PathLike):  # an int would open a descriptor
        raise ConfigurationError(f"{option} must be a path (str), got {path!r}")
    if "\0" in os.fsdecode(path):  # open() would raise a bare ValueError
        raise ConfigurationError(f"{option} {path!r} contains a NUL byte; give a path")
    if directory:
        if not os.path.isdir(path):
            raise ConfigurationError(f"{option} {path!r} is not a directory")
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ConfigurationError(f"{option} {path!r} cannot be read: {err.strerror}") from None


def _cert_chain_fault(certfile: Any, key: tuple[str, Any], asked: bool, err: Exception) -> str:
    """What is wrong with a client certificate and key that did not load with ``err``
    (``asked``: the key asked for its passphrase, so the certificate loaded)."""
    import ssl

    if getattr(err, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"{key[0]} {key[1]!r} does not hold the key of ssl_certfile {certfile!r}"
    if asked:
        return f"ssl_password does not unlock the key in {key[0]} {key[1]!r}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except ssl.SSLError:
        return f"ssl_certfile {certfile!r} holds no certificate in PEM format ({err})"
    return f"{key[0]} {key[1]!r} holds no private key in PEM format ({err})"


def _no_passphrase(option: str, path: Any) -> NoReturn:
    """Refuse to unlock an encrypted key (``ssl_password`` for redis-py)."""
    import ssl

    # two arguments: redis-py shows them as "Error <first> connecting to host:port. <second>."
    raise ssl.SSLError(
        "no passphrase", f"{option} {path!r} holds an encrypted key; give ssl_password"
    )
