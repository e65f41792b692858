"""memcached's text protocol for the hot calls (``get`` of one or many keys, ``set``).

They run on the socket of a connected pymemcache ``Client``, which keeps doing everything else
(connecting, pooling, the other commands). pymemcache reads a multi-key reply a line at a time
in Python; here it is read in large chunks and cut at all its CRLFs in one call, several times
less work per value (a reply that arrives in pieces is parsed a record at a time instead).
Keys arrive already mapped by ``memcached_key``: printable ASCII, no spaces, <= 250.
Any error closes the connection, so a half-read reply never reaches the next call; failures
raise pymemcache's own exceptions, which the backend turns into the contract's outage values.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["fetch", "store"]

_CHUNK = 65536
_END = b"END"


def _socket(client: Any) -> Any:
    if client.sock is None:
        client._connect()
    return client.sock


def fetch(client: Any, names: bytes) -> dict[bytes, tuple[int, bytes]]:
    """``get`` of the space-separated ``names``, one round trip: ``{name: (flags, data)}``."""
    sock = _socket(client)
    try:
        sock.sendall(b"get " + names + b"\r\n")
        buf = _more(sock, b"", 1)
        if buf.endswith(b"END\r\n"):
            found = _split_values(buf)
            if found is not None:
                return found
        return _read_values(sock, buf)
    except BaseException:
        client.close()
        raise


def store(client: Any, name: str, item: tuple[int, bytes], exptime: int) -> bool:
    """``set`` of one entry; whether memcached stored it."""
    flags, data = item
    sock = _socket(client)
    try:
        sock.sendall(
            b"set %s %d %d %d\r\n%s\r\n" % (name.encode("ascii"), flags, exptime, len(data), data)
        )
        line = _read_line(sock)
        if line == b"STORED":
            return True
        if line == b"NOT_STORED":
            return False
        _raise_reply(line)
    except BaseException:
        client.close()
        raise


def _split_values(buf: bytes) -> dict[bytes, tuple[int, bytes]] | None:
    """The values of a whole, well-formed retrieval reply in ``buf``; None for anything else.

    Cutting the reply at every CRLF in one call is the fast way; a value whose data holds a
    CRLF is glued back from its pieces by its announced length.
    """
    parts = buf.split(b"\r\n")
    end = len(parts) - 2  # the reply ends with END and an empty piece after its CRLF
    found: dict[bytes, tuple[int, bytes]] = {}
    i = 0
    try:
        while i < end:
            tag, name, flags, size = parts[i].split(b" ")
            length = int(size)
            data = parts[i + 1]
            i += 2
            if len(data) != length:
                while len(data) < length and i < end:
                    data += b"\r\n" + parts[i]
                    i += 1
                if len(data) != length:
                    return None
            if tag != b"VALUE":
                return None
            found[name] = (int(flags), data)
    except ValueError:
        return None
    return found if i == end and parts[end] == _END else None


def _read_values(sock: Any, buf: bytes) -> dict[bytes, tuple[int, bytes]]:
    """The values of a retrieval reply that starts in ``buf``, read up to its END line."""
    found: dict[bytes, tuple[int, bytes]] = {}
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            buf, pos = _more(sock, buf[pos:], len(buf) - pos + 1), 0
            continue
        if buf.startswith(b"VALUE ", pos):
            fields = buf[pos + 6 : eol].split(b" ")
            try:
                flags, size = int(fields[1]), int(fields[2])
            except (IndexError, ValueError):
                _raise_reply(buf[pos:eol])
            if size < 0:  # would step back onto this header: an endless loop
                _raise_reply(buf[pos:eol])
            start = eol + 2
            stop = start + size
            if len(buf) < stop + 2:  # the data is still on its way: read it, then parse again
                buf, pos = _more(sock, buf[pos:], stop + 2 - pos), 0
                continue
            if buf[stop : stop + 2] != b"\r\n":
                _raise_reply(buf[pos:eol])
            found[fields[0]] = (flags, buf[start:stop])
            pos = stop + 2
        elif buf[pos:eol] == _END:
            if eol + 2 != len(buf):
                _raise_reply(b"data after END")
            return found
        else:
            _raise_reply(buf[pos:eol])


def _read_line(sock: Any) -> bytes:
    """One reply line, without its CRLF (the only line of a storage reply)."""
    buf = b""
    while True:
        buf = _more(sock, buf, len(buf) + 1)
        if buf.endswith(b"\r\n"):
            if buf.find(b"\r\n") != len(buf) - 2:
                _raise_reply(b"more than one reply line")
            return buf[:-2]


def _more(sock: Any, head: bytes, need: int) -> bytes:
    """``head`` followed by what the socket delivers, until it holds at least ``need`` bytes."""
    chunks = [head]
    have = len(head)
    while True:
        chunk = sock.recv(max(need - have, _CHUNK))
        if not chunk:
            from pymemcache.exceptions import MemcacheUnexpectedCloseError

            raise MemcacheUnexpectedCloseError()
        chunks.append(chunk)
        have += len(chunk)
        if have >= need:
            return b"".join(chunks)


def _raise_reply(line: bytes) -> NoReturn:
    """Raise pymemcache's exception for an error (or unexpected) reply line."""
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
        MemcacheUnknownError,
    )

    head, _, message = line.partition(b" ")
    if head == b"ERROR":
        raise MemcacheUnknownCommandError(line[:64])
    if head == b"CLIENT_ERROR":
        raise MemcacheClientError(message[:200])
    if head == b"SERVER_ERROR":
        raise MemcacheServerError(message[:200])
    raise MemcacheUnknownError(line[:64])
