"""RESP for the hot calls ``RedisCache`` sends itself: ``GET``, ``SET`` and ``MGET``.

On a fast link redis-py's client layer and command packing cost about as much as a call's own
Python work; these commands are packed here in one string (a large value as its own chunk) and
sent on a connection of the client's own pool. Only clients whose pool and connections are
redis-py's own take this path (``direct_ok``). Names are sent in UTF-8, as redis-py sends them;
a name that ``errors`` cannot encode (a lone surrogate under ``"strict"``) is left to the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, TypeVar

__all__ = [
    "COPY_LIMIT",
    "MGET_PIECE",
    "direct_ok",
    "mget_pieces",
    "packed_mget",
    "packed_one",
    "packed_set",
    "send",
    "send_mget",
    "send_read",
]

COPY_LIMIT = 6000  # bytes of a value joined with its command's other parts, as redis-py does
# Names per MGET of a long get_many: Redis answers each piece once it has read it, so the socket
# timeout bounds a piece, not the whole call (one MGET of 100k long names outlasted 0.05 s).
MGET_PIECE = 1000


_Item = TypeVar("_Item")


def mget_pieces(items: Sequence[_Item]) -> list[Sequence[_Item]]:
    """``items`` cut into pieces of at most ``MGET_PIECE``, one ``MGET`` each."""
    return [items[i : i + MGET_PIECE] for i in range(0, len(items), MGET_PIECE)]


_HEADERS = tuple(f"\r\n${length}\r\n" for length in range(512))  # RESP bulk string headers
_BYTE_HEADERS = tuple(header.encode() for header in _HEADERS)


def packed_mget(names: Sequence[str], errors: str = "strict") -> list[bytes] | None:
    """``MGET`` of ``names`` in RESP for ``send_mget``, one command per ``MGET_PIECE`` names;
    ``None`` when a name cannot be encoded in UTF-8 with ``errors``.

    :raises TypeError: a name is not a ``str``.
    """
    packed = []
    for names_piece in mget_pieces(names):
        piece = _packed_mget(names_piece, errors)
        if piece is None:
            return None
        packed.append(piece)
    return packed


def _packed_mget(names: Sequence[str], errors: str) -> bytes | None:
    # Names under one prefix are mostly all ASCII or all not: the first tells which way to go
    # (building the ASCII text of other names first cost a get_many of 100 of them 6% more).
    if str.isascii(names[0]):
        parts = [*names, *names]
        try:
            parts[::2] = [_HEADERS[len(name)] for name in names]
        except IndexError:
            parts[::2] = [f"\r\n${len(name)}\r\n" for name in names]
        parts[1::2] = names
        text = "".join(parts)
        if text.isascii():  # only then is a name's length its length in bytes
            return f"*{len(names) + 1}\r\n$4\r\nMGET{text}\r\n".encode()
    try:
        encoded = list(map(str.encode, names))
    except UnicodeEncodeError:  # a lone surrogate
        if errors == "strict":
            return None
        encoded = list(map(str.encode, names, repeat("utf-8"), repeat(errors)))
    data = [*encoded, *encoded]
    try:
        data[::2] = [_BYTE_HEADERS[len(name)] for name in encoded]
    except IndexError:
        data[::2] = [b"\r\n$%d\r\n" % len(name) for name in encoded]
    data[1::2] = encoded
    return b"*%d\r\n$4\r\nMGET%b\r\n" % (len(names) + 1, b"".join(data))


def _utf8_size(name: str, errors: str) -> int | None:
    """The length of ``name`` in UTF-8 with ``errors``; ``None`` when it cannot be encoded so."""
    try:
        return len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return None if errors == "strict" else len(name.encode("utf-8", errors))


def packed_one(command: str, name: str, errors: str = "strict") -> list[bytes] | None:
    """``command name`` (GET, DEL) in RESP for ``send_packed_command``; ``None`` when ``name``
    cannot be encoded in UTF-8 with ``errors``."""
    if name.isascii():
        return [f"*2\r\n${len(command)}\r\n{command}\r\n${len(name)}\r\n{name}\r\n".encode()]
    size = _utf8_size(name, errors)
    if size is None:
        return None
    return [f"*2\r\n${len(command)}\r\n{command}\r\n${size}\r\n{name}\r\n".encode("utf-8", errors)]


def packed_set(name: str, data: bytes, ms: int, errors: str = "strict") -> list[bytes] | None:
    """What ``set`` sends, in RESP for ``send_packed_command``: ``SET name data PX ms``,
    without expiry for ``ms`` 0, ``DEL name`` for a negative ``ms``; ``None`` when ``name``
    cannot be encoded in UTF-8 with ``errors``.
    """
    if ms < 0:
        return packed_one("DEL", name, errors)
    is_ascii = name.isascii()
    size = len(name) if is_ascii else _utf8_size(name, errors)
    if size is None:
        return None
    px = str(ms)
    expiry = f"\r\n$2\r\nPX\r\n${len(px)}\r\n{px}\r\n" if ms else "\r\n"
    text = f"*{5 if ms else 3}\r\n$3\r\nSET\r\n${size}\r\n{name}\r\n${len(data)}\r\n"
    head = text.encode() if is_ascii else text.encode("utf-8", errors)
    if len(data) > COPY_LIMIT:  # sent as it is rather than copied into one string
        return [head, data, expiry.encode()]
    return [b"".join((head, data, expiry.encode()))]


def send(
    client: Any, packed: list[bytes], read: Callable[[Any, list[bytes]], Any] | None = None
) -> Any:
    """The reply to a command packed in RESP, sent on a connection of ``client``'s own pool.

    Like redis-py's client layer, a failed attempt closes the connection and the connection's
    ``Retry`` decides whether to try again: only idempotent commands come here.
    """
    pool = client.connection_pool  # a server in its dead time raises here
    conn = pool.get_connection()
    try:
        return conn.retry.call_with_retry(
            lambda: (read or send_read)(conn, packed), lambda _error: conn.disconnect()
        )
    finally:
        pool.release(conn)


def send_read(conn: Any, packed: list[bytes]) -> Any:
    conn.send_packed_command(packed)
    return conn.read_response()


def send_mget(client: Any, packed: list[bytes]) -> list[Any]:
    """The payloads named by the ``MGET`` pieces of ``packed_mget``, in one round trip."""
    read = None if len(packed) == 1 else _read_pieces
    return send(client, packed, read)  # type: ignore[no-any-return]


def _read_pieces(conn: Any, packed: list[bytes]) -> list[Any]:
    conn.send_packed_command(packed)
    payloads: list[Any] = []
    try:
        for _ in packed:
            payloads += conn.read_response()
    except BaseException:
        conn.disconnect()  # the replies of later pieces would answer the next call
        raise
    return payloads


def direct_ok(client: Any) -> bool:
    """Whether get, set and get_many may send their own commands on ``client``'s pool; not
    for a subclass, one dedicated connection, another kind of pool or connection, client-side
    caching, a ``command_packer`` of the user's, or keys not encoded as UTF-8, where only the
    client's own methods do the right thing.
    """
    import codecs

    import redis

    from cacheplug.backends._redis_pools import int_free_packer

    if type(client) is not redis.Redis or client.connection is not None:
        return False
    pool: Any = client.connection_pool  # a user may have built it from anything
    if not isinstance(pool, redis.ConnectionPool) or pool.connection_class not in (
        redis.Connection,
        redis.SSLConnection,
        redis.UnixDomainSocketConnection,
    ):
        return False
    kwargs = pool.connection_kwargs
    return (
        getattr(pool, "cache", None) is None
        # the user's packer writes every command
        and kwargs.get("command_packer") in (None, int_free_packer())
        and codecs.lookup(kwargs.get("encoding", "utf-8")).name == "utf-8"
    )
