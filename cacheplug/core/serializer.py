"""The serializer contract and how a backend turns ``serializer=`` into an object."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Protocol, runtime_checkable

from cacheplug.core.errors import ConfigurationError

__all__ = ["Serializer", "SerializerLike", "error_text", "resolve_serializer", "serializer_name"]


@runtime_checkable
class SerializerLike(Protocol):
    """Anything with ``dumps`` and ``loads``: cacheplug's serializers, cachelib's, your own.

    ``dumps`` may return any bytes-like object (stored as ``bytes``); ``None``, what cachelib's
    serializers return for a value they cannot encode, raises ``SerializationError``.
    """

    def dumps(self, value: Any) -> bytes | bytearray | memoryview | None: ...

    def loads(self, data: bytes) -> Any: ...


class Serializer:
    """Base class of cacheplug's serializers.

    A serializer turns a value into bytes and back. ``dumps`` raises
    :class:`~cacheplug.SerializationError` for a value it cannot encode, ``loads`` raises it
    for bytes it cannot decode (backends turn that into a cache miss). A subclass gives its
    own ``name``, the one it is registered under; without one it is known, and its payloads
    are signed, by its module and class, never by its parent's name::

        class UpperSerializer(Serializer):
            name = "upper"

            def dumps(self, value):
                return value.upper().encode()

            def loads(self, data):
                return data.decode()
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass may write another format: its parent's name would report it as the
        # parent and sign its payloads as the parent's, readable by the parent's caches.
        if "name" not in vars(cls):
            cls.name = ""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``.

        :raises SerializationError: the value cannot be encoded by this serializer.
        """
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        """Decode bytes written by :meth:`dumps`.

        :raises SerializationError: the bytes are not a payload of this serializer.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def error_text(err: BaseException) -> str:
    """``str(err)``; its class name when that is empty (msgpack's stack and format errors
    say nothing), or a placeholder when the exception's own ``__str__`` fails.

    For messages that quote a foreign error (a driver's, a plugin's, one raised by an object's
    ``__reduce__``): a failing ``__str__`` must not replace the error being reported.
    """
    try:
        return str(err) or type(err).__name__
    except Exception:
        return "<exception str() failed>"


def serializer_name(serializer: object) -> str:
    """The registered name of a serializer, or its class name for a foreign one."""
    name = getattr(serializer, "name", None)
    return name if isinstance(name, str) and name else type(serializer).__name__


def resolve_serializer(spec: str | SerializerLike) -> SerializerLike:
    """Turn a serializer name or object into a serializer object.

    :raises ConfigurationError: an unknown name, or an object without ``dumps``/``loads``.
    """
    if isinstance(spec, str):
        from cacheplug.core.plugins import get_serializer

        return get_serializer(spec)
    if isinstance(spec, type) and inspect.isfunction(inspect.getattr_static(spec, "dumps", None)):
        raise ConfigurationError(
            f"serializer must be a serializer object, got the class {spec.__name__}; "
            f"pass an instance: serializer={spec.__name__}()"
        )
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return spec
    raise ConfigurationError(
        f"serializer must be a registered name or an object with dumps() and loads(), "
        f"got {type(spec).__name__}"
    )
