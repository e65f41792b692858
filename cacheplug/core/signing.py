"""Signing stored payloads: HMAC-SHA256 under a cache's ``secret``, covering the serializer
and the entry, so a tampered, foreign or moved entry reads as a miss."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cacheplug.core.errors import ConfigurationError

__all__ = [
    "SECRET_ENV",
    "SIGNATURE_SIZE",
    "SIGNED_HEAD",
    "SIGNED_MARK",
    "CacheSigner",
    "PayloadSigner",
    "entry_binding",
    "resolve_secret",
    "signing_context",
]

#: The environment variable a cache given no ``secret`` signs with, when it is set.
SECRET_ENV = "CACHEPLUG_SECRET"
SIGNATURE_SIZE = 32  # HMAC-SHA256 digest length
#: The first bytes of every signed payload. No pickle, JSON or msgpack document (nor CBOR)
#: can start with them, so a cache without the secret reads a signed entry as a miss at its
#: first byte, instead of feeding the MAC's random bytes to ``loads``.
SIGNED_MARK = b"\xc1\xff"
#: How many bytes of a signed payload come before its serializer's: the mark and the MAC.
SIGNED_HEAD = len(SIGNED_MARK) + SIGNATURE_SIZE


def resolve_secret(secret: str | bytes | None) -> bytes | None:
    """The key a cache signs with: ``secret`` as bytes; when ``None``, the ``CACHEPLUG_SECRET``
    environment variable's; ``None`` when neither gives one (the cache signs nothing).

    :raises ConfigurationError: ``secret`` is empty, neither text nor bytes, or text that
        UTF-8 cannot encode.
    """
    if secret is None:
        from_env = os.environ.get(SECRET_ENV)
        # the variable's very bytes, even those that are not UTF-8 (kept as surrogates)
        secret = os.fsencode(from_env) if from_env else None
    if isinstance(secret, str):
        try:
            encoded: bytes | None = secret.encode()
        except UnicodeEncodeError:
            encoded = None
        if encoded is None:  # raised here, not chained: the encoding error shows the secret
            raise ConfigurationError(
                "secret must be text UTF-8 can encode (no lone surrogates) or bytes"
            )
        secret = encoded
    if secret is not None and (not isinstance(secret, bytes) or not secret):
        raise ConfigurationError("secret must be a non-empty str or bytes")
    return secret


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class PayloadSigner:
    """HMAC-SHA256 with the key schedule done once (RFC 2104).

    Copying pre-keyed hash states costs about a third of ``hmac.digest`` per small payload;
    the result is byte for byte the same.
    """

    def __init__(self, secret: bytes, context: bytes = b"") -> None:
        block_size = hashlib.sha256().block_size
        if len(secret) > block_size:
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(block_size, b"\0")
        # every MAC covers ``context`` before the payload: HMAC(secret, context + data)
        self._inner = hashlib.sha256(block.translate(_IPAD) + context)
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def sign(self, data: bytes) -> bytes:
        """The 32-byte HMAC-SHA256 of ``data``."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def signing_context(serializer: object) -> bytes:
    """What a payload's MAC covers before its bytes: the serializer's name (nothing for pickle).

    An entry signed through one serializer then never verifies for a cache reading with
    another: the bytes of a msgpack value holding a user's text can be a pickle that runs code.
    """
    name = getattr(serializer, "name", None)
    if not isinstance(name, str) or not name:
        # two foreign classes may share a bare name (``Serializer``) but not module and class
        kind = type(serializer)
        name = f"{kind.__module__}.{kind.__qualname__}"
    elif name == "pickle":
        return b""
    # its length first: a name may hold any character, a NUL included
    encoded = name.encode("utf-8", "surrogatepass")
    return b"cacheplug-serializer:%d:" % len(encoded) + encoded


def entry_binding(key_prefix: str, key: str) -> bytes:
    """What a MAC covers between the serializer's context and the payload: the entry's
    ``key_prefix`` and key, each preceded by its length, so no two entries share it."""
    prefix = key_prefix.encode("utf-8", "surrogatepass")
    name = key.encode("utf-8", "surrogatepass")
    return b"cacheplug-entry:%d:%d:" % (len(prefix), len(name)) + prefix + name


class CacheSigner:
    """The signer of one cache, keyed to the serializer each call names, as ``serializer`` is
    reassignable: the caller names the one it encodes or decodes with, read once."""

    __slots__ = ("_keyed", "_secret")

    def __init__(self, secret: bytes, serializer: object) -> None:
        self._secret = secret
        # (serializer, its signer's hash states), replaced as one so threads never mix them
        self._keyed = self._rekey(serializer)

    def _rekey(self, serializer: object) -> tuple[object, Any, Any]:
        signer = PayloadSigner(self._secret, signing_context(serializer))
        # returned as built: another thread may replace self._keyed meanwhile
        keyed = self._keyed = (serializer, signer._inner, signer._outer)
        return keyed

    def sign(self, data: bytes | memoryview, serializer: object, entry: bytes = b"") -> bytes:
        """The 32-byte HMAC-SHA256 of ``serializer``'s context, ``entry`` and ``data``.

        ``entry`` names the entry the payload belongs to (:func:`entry_binding`), so that a
        genuine payload copied to another key does not verify there.
        """
        keyed, inner, outer = self._keyed
        if keyed is not serializer:
            keyed, inner, outer = self._rekey(serializer)
        inner = inner.copy()
        if entry:
            inner.update(entry)
        inner.update(data)
        outer = outer.copy()
        outer.update(inner.digest())
        signature: bytes = outer.digest()
        return signature
