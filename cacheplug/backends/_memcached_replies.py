"""Reading memcached's replies for ``_memcached_wire``: by a deadline, and parsed.

A reply's first read waits the socket's timeout; once part of it came, its rest must come within
one timeout of that (``LATE`` holds the sockets whose reply came in part). A retrieval reply is
read in large chunks and cut at all its CRLFs in one call (a reply that arrives in pieces is
parsed a record at a time instead). Errors and unexpected lines raise pymemcache's own
exceptions, imported only when one is raised.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from itertools import repeat
from typing import Any, NoReturn, TypeVar

from cacheplug.backends._memcached_servers import readable

__all__ = [
    "BATCH_BYTES",
    "LATE",
    "REFUSED",
    "more",
    "raise_reply",
    "read_answers",
    "read_fetched",
    "read_line",
    "seen_value",
    "take_lines",
]

_CHUNK = 65536
#: Bytes of writes sent before their replies are read (or one request): the timeout bounds each
#: send, and a reply that comes in parts gets a timeout more per as many bytes.
BATCH_BYTES = 1 << 20
_FEW = 12  # values in a reply checked all at once (fewer: a record at a time)
_END = b"END"
REFUSED = b"SERVER_ERROR"
_Answer = TypeVar("_Answer")
#: The sockets whose reply came in part, with the time its rest must come by (``more``); an
#: entry lasts until the socket's next request, or its socket is closed.
LATE: dict[socket.socket, float] = {}


def read_fetched(sock: Any) -> dict[bytes, tuple[int, bytes]]:
    """The values of the reply to a ``get`` just sent."""
    buf = more(sock, b"", 1)
    if buf.endswith(b"END\r\n"):
        found = _split_values(buf)
        if found is not None:
            return found
    return _read_values(sock, buf)


def seen_value(sock: Any, rest: bytes, seen_key: str) -> bytes | None:
    """The value of ``seen_key`` from the reply to its ``get``, which starts in ``rest``; None
    when missing."""
    seen_name = seen_key.encode("ascii")
    found = _split_values(rest) if rest.endswith(b"END\r\n") else None
    if found is None:
        found = _read_values(sock, rest)
    if not found.keys() <= {seen_name}:
        raise_reply(b"a value of another key than " + seen_name)
    item = found.get(seen_name)
    return None if item is None else item[1]


def read_answers(
    sock: Any, batch: list[bytes], answers: Mapping[bytes, _Answer], done: list[_Answer]
) -> bytes:
    """Read the one-line replies to the ``batch`` of commands just sent onto ``done`` (what
    each means in ``answers``); what arrived after them."""
    buf, pos = more(sock, b"", 1), 0
    for _ in batch:
        eol = buf.find(b"\r\n", pos)
        while eol < 0:
            # later reads (even after whole lines) keep the deadline of the reply's first
            buf, pos = _rest(sock, buf[pos:], len(buf) - pos + 1, True), 0
            eol = buf.find(b"\r\n")
        line = buf[pos:eol]
        if line not in answers:
            # memcached skipped the data of a write it refused: the next reply is the next one's
            if not line.startswith(REFUSED + b" ") or REFUSED not in answers:
                raise_reply(line)
            line = REFUSED
        done.append(answers[line])
        pos = eol + 2
    return buf[pos:]


def _split_values(buf: bytes) -> dict[bytes, tuple[int, bytes]] | None:
    """The values of a whole, well-formed retrieval reply in ``buf``; None for anything else.

    Cutting the reply at every CRLF in one call is the fast way: headers and data then
    alternate, and all headers are checked at once instead of a record at a time. A value
    whose data holds a CRLF breaks the alternation (its first piece is shorter than its header
    says); such a reply is glued back record by record.
    """
    parts = buf.split(b"\r\n")
    count = len(parts) // 2 - 1
    # below a dozen values, the record-by-record walk costs fewer instructions
    if count >= _FEW and len(parts) % 2 == 0 and parts[-2] == _END:
        heads = parts[0:-2:2]
        # joined by a CRLF, which no part holds: each header must be exactly 4 fields apart
        fields = b" \r\n ".join(heads).split(b" ")
        data = parts[1:-2:2]
        try:
            if (
                len(fields) == 5 * count - 1
                and fields[4::5].count(b"\r\n") == count - 1
                and fields[0::5].count(b"VALUE") == count
                and list(map(len, data)) == list(map(int, fields[3::5]))
            ):
                flags = fields[2::5]
                if flags.count(flags[0]) == count:  # usual: every value from one serializer
                    names, flag = fields[1::5], int(flags[0])
                    return dict(
                        zip(names, zip(repeat(flag, count), data, strict=True), strict=True)
                    )
                return dict(zip(fields[1::5], zip(map(int, flags), data, strict=True), strict=True))
        except ValueError:  # a size or flags that is no number
            return None
    return _glued_values(parts)


def _glued_values(parts: list[bytes]) -> dict[bytes, tuple[int, bytes]] | None:
    """The values of a retrieval reply cut at every CRLF (``parts``), record by record, gluing
    back the data that held CRLFs by its announced length; None if it is not well-formed."""
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
            buf, pos = _rest(sock, buf[pos:], len(buf) - pos + 1, True), 0
            continue
        if buf.startswith(b"VALUE ", pos):
            fields = buf[pos + 6 : eol].split(b" ")
            try:
                flags, size = int(fields[1]), int(fields[2])
            except (IndexError, ValueError):
                raise_reply(buf[pos:eol])
            if size < 0:  # would step back onto this header: an endless loop
                raise_reply(buf[pos:eol])
            start = eol + 2
            stop = start + size
            if len(buf) < stop + 2:  # the data is still on its way: read it, then parse again
                buf, pos = _rest(sock, buf[pos:], stop + 2 - pos, True), 0
                continue
            if buf[stop : stop + 2] != b"\r\n":
                raise_reply(buf[pos:eol])
            found[fields[0]] = (flags, buf[start:stop])
            pos = stop + 2
        elif buf[pos:eol] == _END:
            if eol + 2 != len(buf):
                raise_reply(b"data after END")
            return found
        else:
            raise_reply(buf[pos:eol])


def read_line(sock: Any) -> bytes:
    """One reply line, without its CRLF (the only line of a storage reply)."""
    buf = b""
    while True:
        buf = more(sock, buf, len(buf) + 1)
        if buf.endswith(b"\r\n"):
            if buf.find(b"\r\n") != len(buf) - 2:
                raise_reply(b"more than one reply line")
            return buf[:-2]


def take_lines(sock: Any, count: int) -> tuple[list[bytes], bytes]:
    """The next ``count`` reply lines, without their CRLFs, and what arrived after them."""
    buf, pos = more(sock, b"", 1), 0
    lines: list[bytes] = []
    while len(lines) < count:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            # later reads (even after whole lines) keep the deadline of the reply's first
            buf, pos = _rest(sock, buf[pos:], len(buf) - pos + 1, True), 0
            continue
        lines.append(buf[pos:eol])
        pos = eol + 2
    return lines, buf[pos:]


def more(sock: Any, head: bytes, need: int) -> bytes:
    """``head`` followed by what the socket delivers, until it holds at least ``need`` bytes.

    A reply's first read waits the socket's timeout; once part of it came, the rest must come
    within one timeout of that, however it trickles in (each read waiting a timeout of its own,
    a server sending a byte now and then would hold the call for ever), plus one timeout per
    ``BATCH_BYTES`` that come: a large reply needs the rate a batch of writes needs, no more.
    """
    # the first read of a reply, the common case (an entry of another socket, even one left
    # idle in a pool after a reply that came in parts, must not slow every other call down)
    if not head and (not LATE or sock not in LATE):
        chunk: bytes = sock.recv(max(need, _CHUNK))
        if len(chunk) >= need:
            return chunk
        if not chunk:
            _raise_closed()
        head = chunk
    return _rest(sock, head, need)


def _rest(sock: Any, head: bytes, need: int, started: bool = False) -> bytes:
    """``more`` once part of the reply came (``head``, or ``started``: whole records already
    read): by its deadline."""
    deadline = LATE.get(sock)
    if deadline is None and (head or started):
        deadline = _late(sock)
    chunks = [head]
    have = len(head)
    while True:
        if deadline is not None and not readable(sock, deadline - time.monotonic()):
            LATE.pop(sock, None)
            raise TimeoutError("timed out")
        chunk = sock.recv(max(need - have, _CHUNK))
        if not chunk:
            _raise_closed()
        chunks.append(chunk)
        have += len(chunk)
        if deadline is not None:  # a timeout more per BATCH_BYTES come, as writes are sent
            deadline += len(chunk) * sock.gettimeout() / BATCH_BYTES
            LATE[sock] = deadline
        if have >= need:
            return b"".join(chunks)
        if deadline is None:
            deadline = _late(sock)


def _late(sock: Any) -> float | None:
    """Note that part of ``sock``'s reply came now; the time the rest must come by (None: the
    socket has no timeout, or is not a plain one: an SSL socket may hold bytes poll cannot
    see)."""
    if type(sock) is not socket.socket:
        return None
    timeout = sock.gettimeout()
    if timeout is None:
        return None
    for other in list(LATE):  # sockets closed mid-reply
        if other.fileno() < 0:
            LATE.pop(other, None)
    deadline: float = time.monotonic() + timeout
    LATE[sock] = deadline
    return deadline


def _raise_closed() -> NoReturn:
    from pymemcache.exceptions import MemcacheUnexpectedCloseError

    raise MemcacheUnexpectedCloseError()


def raise_reply(line: bytes) -> NoReturn:
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
