"""How a cache turns a value into the payload it stores and back: serialized, and signed with
a ``secret``; a payload that does not verify or load reads as a miss."""

from __future__ import annotations

import hmac
import pickle
from typing import TYPE_CHECKING, Any, ClassVar

from cacheplug.core.errors import SerializationError
from cacheplug.core.serializer import serializer_name
from cacheplug.core.signing import SIGNED_HEAD, SIGNED_MARK, entry_binding
from cacheplug.serializers.pickle import PickleSerializer

if TYPE_CHECKING:
    from cacheplug.core.serializer import SerializerLike
    from cacheplug.core.signing import CacheSigner

__all__ = ["PayloadCodec"]


class PayloadCodec:
    """The payload methods of :class:`~cacheplug.core.base.BaseCache`, for its backends: they
    read the cache's ``serializer``, ``key_prefix`` and signer."""

    if TYPE_CHECKING:
        serializer: SerializerLike
        key_prefix: str
        _signer: CacheSigner | None
        _signs_entries: ClassVar[bool]

        def _count_unreadable(self) -> None: ...

        def _log(self, kind: str, message: str, *args: object) -> None: ...

    def _serialize(self, value: Any, serializer: Any = None) -> bytes:
        """The bytes of a value through ``serializer`` (by default the cache's), unsigned.

        :raises SerializationError: the serializer cannot encode it.
        """
        if serializer is None:
            serializer = self.serializer
        if type(serializer) is PickleSerializer:
            try:  # the default, without the serializer's own frame
                return pickle.dumps(value, serializer.protocol)
            except Exception:
                pass  # the serializer raises the SerializationError that says why
        try:
            data = serializer.dumps(value)
        except SerializationError:
            raise
        except Exception as err:  # a foreign serializer's own error
            raise SerializationError(
                f"{serializer_name(serializer)} cannot encode a value of type "
                f"{type(value).__name__}: {err}"
            ) from err
        if type(data) is bytes:
            return data
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)  # stores, engines and HMAC all want bytes
        if data is None:  # how cachelib's serializers say they could not encode a value
            raise SerializationError(
                f"{serializer_name(serializer)} cannot encode a value of type "
                f"{type(value).__name__}: its dumps returned None"
            )
        raise SerializationError(
            f"{serializer_name(serializer)}.dumps returned {type(data).__name__}, not bytes; "
            "a serializer must return bytes (encode text, e.g. json.dumps(value).encode())"
        )

    def _entry(self, key: str, prefix: str | None = None) -> bytes:
        """What the MAC of ``key``'s payload covers besides it (see :func:`entry_binding`).

        ``prefix``: the ``key_prefix`` the call named the entry with, when it read it already
        (a callable prefix may answer otherwise when asked again); by default the current one.
        """
        if not self._signs_entries:
            return b""
        return entry_binding(self.key_prefix if prefix is None else prefix, key)

    def _encode(self, value: Any, key: str, prefix: str | None = None) -> bytes:
        """Serialize (and sign, with a secret) the value of ``key`` for storage.

        :raises SerializationError: the serializer cannot encode it.
        """
        serializer = self.serializer  # read once: the MAC must name the one that encoded
        data = self._serialize(value, serializer)
        if self._signer is None:
            return data
        return SIGNED_MARK + self._signer.sign(data, serializer, self._entry(key, prefix)) + data

    def _encode_count(self, key: str, value: int) -> bytes:
        """:meth:`_encode` of the new value of a counter.

        :raises OverflowError: the serializer cannot hold it (json or msgpack beyond 64 bits).
        :raises SerializationError: the serializer cannot store any int.
        """
        try:
            return self._encode(value, key)
        except SerializationError as err:
            raise self._uncountable(key, value) from err

    def _uncountable(self, key: str, value: int) -> OverflowError:
        """The error of a count to ``value`` that the serializer refused to encode.

        :raises SerializationError: the serializer cannot store any int.
        """
        self._serialize(0)  # a serializer that stores no int at all raises what is wrong
        return OverflowError(
            f"cannot count {key!r} to {value}: {serializer_name(self.serializer)} cannot "
            "store it, so the value stays as it was"
        )

    def _decode(self, payload: bytes | memoryview, key: str, prefix: str | None = None) -> Any:
        """Verify (with a secret) and deserialize the stored payload of ``key``.

        :raises SerializationError: bad signature or unreadable payload.
        """
        serializer = self.serializer  # read once: the one verified is the one that loads
        if self._signer is not None:
            data = payload[SIGNED_HEAD:]
            expected = SIGNED_MARK + self._signer.sign(data, serializer, self._entry(key, prefix))
            if not hmac.compare_digest(payload[:SIGNED_HEAD], expected):
                raise SerializationError(
                    "stored payload has no valid signature for this secret, serializer and key"
                )
            payload = data
        elif payload[: len(SIGNED_MARK)] == SIGNED_MARK:
            raise SerializationError(
                "stored payload is signed (written by a cache with a secret) and this cache "
                "has no secret"
            )
        if isinstance(payload, memoryview):  # a serializer's loads is promised bytes
            payload = payload.tobytes()
        try:
            return serializer.loads(payload)
        except SerializationError:
            raise
        except Exception as err:
            raise _unreadable(serializer, err) from err

    def _decode_or_miss(
        self, key: str, payload: bytes | memoryview, prefix: str | None = None
    ) -> Any:
        """:meth:`_decode`, with an unreadable payload logged, counted and read as ``None``.

        ``payload`` may be a view of a larger buffer: pickle, the default, reads it in place.
        """
        serializer = self.serializer
        if type(serializer) is PickleSerializer:
            # the default, without the frames of _decode and the serializer
            signer = self._signer
            data = payload if signer is None else payload[SIGNED_HEAD:]
            if signer is None or hmac.compare_digest(
                payload[:SIGNED_HEAD],
                SIGNED_MARK + signer.sign(data, serializer, self._entry(key, prefix)),
            ):
                try:
                    return pickle.loads(data)
                except Exception:
                    pass
            # _decode says what is wrong
        try:
            return self._decode(payload, key, prefix)
        except SerializationError as err:
            self._read_as_miss(key, err)
            return None

    def _read_as_miss(self, key: str, err: Exception) -> None:
        """Count and log ``key``'s stored payload as unreadable: ``err`` says why."""
        if not isinstance(err, SerializationError):
            err = _unreadable(self.serializer, err)
        self._count_unreadable()
        self._log("decode", "unreadable entry %r read as a miss: %s", key, err)


def _unreadable(serializer: object, err: Exception) -> SerializationError:
    """The error saying ``serializer`` failed with ``err`` on a stored payload."""
    return SerializationError(
        f"{serializer_name(serializer)} cannot decode the stored payload: {err}"
    )
