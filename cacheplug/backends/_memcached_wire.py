"""memcached's text protocol for the hot calls (``get`` of one or many keys, ``set``, ``incr``),
for batches of writes (``set_many``, ``delete_many``, writes that read a namespace token back),
for ``has`` in a namespace and for the compare-and-swap of counters (meta ``mg``/``ms``).

They run on the socket of a connected pymemcache ``Client``, which keeps doing everything else
(connecting, pooling, the other commands). pymemcache reads a multi-key reply a line at a time
in Python; here it is read in large chunks and cut at all its CRLFs in one call, several times
less work per value (a reply that arrives in pieces is parsed a record at a time instead).
The batch calls also come as steps (``*_steps``): generators that pause after each request is
sent and read its reply when resumed, so a batch over several servers sends to all of them
before it waits on any (``finish`` runs them alone).
Keys arrive already mapped by ``memcached_key``: printable ASCII, no spaces, <= 250.
Any error closes the connection, so a half-read reply never reaches the next call; failures
raise pymemcache's own exceptions, which the backend turns into the contract's outage values.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Generator, Mapping
from itertools import repeat
from typing import Any, NoReturn, TypeVar

from cacheplug.backends._memcached_servers import readable

__all__ = [
    "DELETED",
    "EXISTS",
    "STORED",
    "STORED_OR_REFUSED",
    "count",
    "count_seeing",
    "delete_many_steps",
    "delete_request",
    "exists_request",
    "exists_seeing",
    "fetch",
    "fetch_steps",
    "finish",
    "read_for_swap",
    "storage_request",
    "store",
    "store_many_steps",
    "swap",
    "write",
    "write_steps",
]

_CHUNK = 65536
_BATCH = 2048  # writes sent before their replies are read (at most 12 bytes of reply each)
_BATCH_BYTES = 1 << 20  # and their bytes (or one request): the timeout bounds each send
_GET_BYTES = 32768  # of names in one get, sent before its reply is read
_FEW = 12  # values in a reply checked all at once (fewer: a record at a time)
_END = b"END"
_REFUSED = b"SERVER_ERROR"
_Answer = TypeVar("_Answer")
_Result = TypeVar("_Result")
#: A call that pauses (yields) after each request it sends; its reply is read when resumed.
Steps = Generator[None, None, _Result]
#: The sockets whose reply came in part, with the time its rest must come by (``_more``); an
#: entry lasts until the socket's next request, or its socket is closed.
_LATE: dict[socket.socket, float] = {}


# os.write takes a socket's descriptor on POSIX only
_WRITE_FIRST = os.name == "posix"


def _send(sock: Any, data: bytes) -> None:
    """``sock.sendall(data)`` in one system call when the socket buffer takes it all.

    With a timeout, Python polls the socket before every send, a system call as costly as the
    write; the socket is then non-blocking, so a plain write cannot hang, and what it leaves
    over (a large value, a full buffer) goes through ``sendall``, which keeps the deadline.
    """
    if _LATE:
        _LATE.pop(sock, None)  # a new reply: it gets a timeout of its own
    # never past an SSLSocket (a subclass): the bytes would leave unencrypted
    if not _WRITE_FIRST or type(sock) is not socket.socket:
        sock.sendall(data)
        return
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _socket(client: Any) -> Any:
    if client.sock is None:
        client._connect()
    return client.sock


def finish(steps: Steps[_Result]) -> _Result:
    """Run ``steps`` to their end, each reply read as soon as its request is sent."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def fetch(client: Any, names: bytes) -> dict[bytes, tuple[int, bytes]]:
    """``get`` of the space-separated ``names``: ``{name: (flags, data)}`` (``fetch_steps``)."""
    if len(names) > _GET_BYTES:
        return finish(fetch_steps(client, names))
    sock = _socket(client)
    try:
        _send(sock, b"get " + names + b"\r\n")
        return _read_fetched(sock)
    except BaseException:
        client.close()
        raise


def fetch_steps(client: Any, names: bytes) -> Steps[dict[bytes, tuple[int, bytes]]]:
    """``fetch`` as steps. One round trip per ``_GET_BYTES`` of names: memcached answers a long
    ``get`` while it still reads it and stops reading while its replies wait unread, so a
    longer one sent at once would leave both sides waiting on each other."""
    sock = _socket(client)
    try:
        found: dict[bytes, tuple[int, bytes]] = {}
        start = 0
        while start < len(names):
            end = len(names)
            if end - start > _GET_BYTES:  # cut at a space: a name is at most 250 bytes
                end = names.rindex(b" ", start, start + _GET_BYTES)
            _send(sock, b"get " + names[start:end] + b"\r\n")
            yield
            found.update(_read_fetched(sock))
            start = end + 1
        return found
    except BaseException:
        client.close()
        raise


def _read_fetched(sock: Any) -> dict[bytes, tuple[int, bytes]]:
    """The values of the reply to a ``get`` just sent."""
    buf = _more(sock, b"", 1)
    if buf.endswith(b"END\r\n"):
        found = _split_values(buf)
        if found is not None:
            return found
    return _read_values(sock, buf)


def store(client: Any, name: str, item: tuple[int, bytes], exptime: int) -> bool:
    """``set`` of one entry; whether memcached stored it."""
    return _ask(client, storage_request(b"set", name, item, exptime), STORED) is True


def storage_request(command: bytes, name: str, item: tuple[int, bytes], exptime: int) -> bytes:
    """A storage command (``set``, ``add``) of one entry, as sent."""
    flags, data = item
    return b"%s %s %d %d %d\r\n%s\r\n" % (
        command,
        name.encode("ascii"),
        flags,
        exptime,
        len(data),
        data,
    )


def delete_request(name: str) -> bytes:
    """``delete`` of one entry, as sent."""
    return b"delete %s\r\n" % name.encode("ascii")


def write(
    client: Any,
    requests: list[bytes],
    answers: Mapping[bytes, _Answer],
    seen_key: str | None = None,
) -> tuple[list[_Answer], bytes | None]:
    """``requests`` (commands with a one-line reply each), then, when ``seen_key`` is given,
    ``get`` of it: ``(what each command's reply means in answers, the value of seen_key right
    after, None when missing or not asked)`` (``write_steps``)."""
    if seen_key is None or (len(requests) != 1 and len(_batches(requests)) != 1):
        return finish(write_steps(client, requests, answers, seen_key))
    # one batch and its token read back, the common case, without the cost of steps
    sock = _socket(client)
    try:
        writes = requests[0] if len(requests) == 1 else b"".join(requests)
        _send(sock, b"%sget %s\r\n" % (writes, seen_key.encode("ascii")))
        done: list[_Answer] = []
        rest = _read_answers(sock, requests, answers, done)
        return done, _seen_value(sock, rest, seen_key)
    except BaseException:
        client.close()
        raise


def write_steps(
    client: Any,
    requests: list[bytes],
    answers: Mapping[bytes, _Answer],
    seen_key: str | None = None,
) -> Steps[tuple[list[_Answer], bytes | None]]:
    """``write`` as steps. A reply line not in ``answers`` raises, except a ``SERVER_ERROR``
    when ``answers`` has an answer for ``b"SERVER_ERROR"``.

    One round trip per ``_BATCH`` requests: memcached stops reading while its replies are not
    read, so a larger batch sent at once would leave both sides waiting on each other. And per
    ``_BATCH_BYTES``: the timeout bounds each send, which must not carry more than the link
    delivers in that time.
    """
    sock = _socket(client)
    try:
        done: list[_Answer] = []
        batches = _batches(requests)
        for batch in batches[:-1] if seen_key else batches:
            if batch:
                _send(sock, b"".join(batch))
                yield
                if _read_answers(sock, batch, answers, done):
                    _raise_reply(b"more reply lines than commands")
        if seen_key is None:
            return done, None
        _send(sock, b"%sget %s\r\n" % (b"".join(batches[-1]), seen_key.encode("ascii")))
        yield
        rest = _read_answers(sock, batches[-1], answers, done)
        return done, _seen_value(sock, rest, seen_key)
    except BaseException:
        client.close()
        raise


def _batches(requests: list[bytes]) -> list[list[bytes]]:
    """``requests`` cut into batches of at most ``_BATCH`` requests and ``_BATCH_BYTES`` bytes
    (or one request); one empty batch when there are none."""
    if len(requests) <= _BATCH and sum(map(len, requests)) <= _BATCH_BYTES:
        return [requests]
    batches: list[list[bytes]] = []
    batch: list[bytes] = []
    size = 0
    for request in requests:
        if batch and (len(batch) == _BATCH or size + len(request) > _BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(request)
        size += len(request)
    batches.append(batch)
    return batches


def _seen_value(sock: Any, rest: bytes, seen_key: str) -> bytes | None:
    """The value of ``seen_key`` from the reply to its ``get``, which starts in ``rest``; None
    when missing."""
    seen_name = seen_key.encode("ascii")
    found = _split_values(rest) if rest.endswith(b"END\r\n") else None
    if found is None:
        found = _read_values(sock, rest)
    if not found.keys() <= {seen_name}:
        _raise_reply(b"a value of another key than " + seen_name)
    item = found.get(seen_name)
    return None if item is None else item[1]


def _read_answers(
    sock: Any, batch: list[bytes], answers: Mapping[bytes, _Answer], done: list[_Answer]
) -> bytes:
    """Read the one-line replies to the ``batch`` of commands just sent onto ``done`` (what
    each means in ``answers``); what arrived after them."""
    buf, pos = _more(sock, b"", 1), 0
    for _ in batch:
        eol = buf.find(b"\r\n", pos)
        while eol < 0:
            # later reads (even after whole lines) keep the deadline of the reply's first
            buf, pos = _rest(sock, buf[pos:], len(buf) - pos + 1, True), 0
            eol = buf.find(b"\r\n")
        line = buf[pos:eol]
        if line not in answers:
            # memcached skipped the data of a write it refused: the next reply is the next one's
            if not line.startswith(_REFUSED + b" ") or _REFUSED not in answers:
                _raise_reply(line)
            line = _REFUSED
        done.append(answers[line])
        pos = eol + 2
    return buf[pos:]


def store_many_steps(
    client: Any, items: Mapping[str, tuple[int, bytes]], exptime: int
) -> Steps[list[bool | None]]:
    """``set`` of each of ``items`` (by memcached key), as steps; whether each was stored,
    None when memcached refused it (too large, out of memory)."""
    requests = [storage_request(b"set", name, item, exptime) for name, item in items.items()]
    return (yield from write_steps(client, requests, STORED_OR_REFUSED))[0]


def delete_many_steps(client: Any, names: list[str]) -> Steps[list[bool]]:
    """``delete`` of each of ``names``, as steps; whether each existed."""
    return (yield from write_steps(client, [delete_request(name) for name in names], DELETED))[0]


def count(client: Any, name: str, step: int) -> tuple[int | None, int | None, bool]:
    """``incr`` by ``step`` with the entry's flags, one round trip.

    :returns: ``(flags, new value, numeric)``: flags None and new value None when the key is
        missing; ``numeric`` False (nothing changed) when memcached called the value non-numeric.
    """
    sock = _socket(client)
    try:
        _send(sock, _count_request(name, step))
        lines, rest = _take_lines(sock, 2)
        if rest:
            _raise_reply(b"more reply lines than commands")
        return _counted(*lines)
    except BaseException:
        client.close()
        raise


def count_seeing(
    client: Any, name: str, step: int, seen_key: str
) -> tuple[tuple[int | None, int | None, bool], bytes | None]:
    """``count``, then ``get`` of ``seen_key``, in one round trip: ``(count's answer, the value
    of seen_key right after, None when missing)``."""
    sock = _socket(client)
    try:
        _send(sock, b"%sget %s\r\n" % (_count_request(name, step), seen_key.encode("ascii")))
        lines, rest = _take_lines(sock, 2)
        return _counted(*lines), _seen_value(sock, rest, seen_key)
    except BaseException:
        client.close()
        raise


def exists_seeing(client: Any, name: str, seen_key: str) -> tuple[bool, bytes | None]:
    """Whether ``name`` is stored, by a meta get that asks for no value back, then ``get`` of
    ``seen_key``, in one round trip: ``(stored, the value of seen_key right after, None when
    missing)``."""
    answers, seen = write(client, [exists_request(name.encode("ascii"))], EXISTS, seen_key)
    return answers[0], seen


def exists_request(name: bytes) -> bytes:
    """A meta get of ``name`` that asks for no value back, answered as ``EXISTS`` says.

    It carries a flag (the opaque ``O1``, echoed in the reply) because memcached releases
    before the fix of memcached/memcached#906 refuse an ``mg`` with none (1.6.18 takes it).
    """
    return b"mg %s O1\r\n" % name


def _count_request(name: str, step: int) -> bytes:
    # Flags change only when the entry is rewritten: these are the ones incr meets unless
    # another client replaces the entry between the two commands.
    encoded = name.encode("ascii")
    return b"mg %s f\r\nincr %s %d\r\n" % (encoded, encoded, step)


def _counted(head: bytes, reply: bytes) -> tuple[int | None, int | None, bool]:
    """``count``'s answer from the replies to its meta get and its ``incr``."""
    flags = None if head == b"EN" else _meta_flag(head, b"HD", b"f")
    if reply == b"NOT_FOUND":
        return flags, None, True
    if reply.isdigit():
        return flags, int(reply), True
    if reply.startswith(b"CLIENT_ERROR") and b"non-numeric" in reply:
        return flags, None, False
    _raise_reply(reply)


def read_for_swap(client: Any, name: str) -> tuple[int, bytes, int, int] | None:
    """``(flags, data, cas, seconds left or -1 for never)`` of an entry; None when missing."""
    sock = _socket(client)
    try:
        _send(sock, b"mg %s f c t v\r\n" % name.encode("ascii"))
        buf = _more(sock, b"", 1)
        eol = buf.find(b"\r\n")
        while eol < 0:
            buf = _more(sock, buf, len(buf) + 1)
            eol = buf.find(b"\r\n")
        head = buf[:eol]
        if head == b"EN" and eol + 2 == len(buf):
            return None
        size = int(_meta_flag(head, b"VA", b""))
        stop = eol + 2 + size
        if len(buf) < stop + 2:
            buf = _more(sock, buf, stop + 2)
        if len(buf) != stop + 2 or buf[stop:] != b"\r\n":
            _raise_reply(head)
        flags, cas, ttl = (_meta_flag(head, b"VA", tag) for tag in (b"f", b"c", b"t"))
        return flags, buf[eol + 2 : stop], cas, ttl
    except BaseException:
        client.close()
        raise


def swap(client: Any, name: str, item: tuple[int, bytes], cas: int, exptime: int) -> bool | None:
    """Store ``item`` if the entry's CAS is still ``cas``: True stored, False changed meanwhile,
    None deleted meanwhile."""
    flags, data = item
    head = b"ms %s %d F%d C%d T%d" % (name.encode("ascii"), len(data), flags, cas, exptime)
    request = b"%s\r\n%s\r\n" % (head, data)
    return _ask(client, request, _SWAPPED)


#: What the reply line of a storage command, or of ``delete``, says was done.
STORED = {b"STORED": True, b"NOT_STORED": False}
#: The same, with None for a write memcached refused (SERVER_ERROR), where a batch goes on.
STORED_OR_REFUSED: Mapping[bytes, bool | None] = {**STORED, _REFUSED: None}
DELETED = {b"DELETED": True, b"NOT_FOUND": False}
_SWAPPED = {b"HD": True, b"EX": False, b"NF": None}
#: What the reply to ``exists_request`` says: stored or not (a miss echoes the flag on newer
#: servers only; a server that echoes none is understood too).
EXISTS = {b"HD O1": True, b"HD": True, b"EN O1": False, b"EN": False}


def _ask(client: Any, request: bytes, answers: Mapping[bytes, bool | None]) -> bool | None:
    """Send ``request`` and give the answer its one reply line maps to (other lines raise)."""
    sock = _socket(client)
    try:
        _send(sock, request)
        line = _read_line(sock)
        if line in answers:
            return answers[line]
        _raise_reply(line)
    except BaseException:
        client.close()
        raise


def _meta_flag(head: bytes, status: bytes, tag: bytes) -> int:
    """The number of the ``tag`` flag in a meta reply line that must start with ``status``
    (``tag`` empty: the first number after it, a value's size)."""
    fields = head.split(b" ")
    if fields[0] == status:
        for field in fields[1:]:
            if field.startswith(tag) and field[len(tag) :].lstrip(b"-").isdigit():
                return int(field[len(tag) :])
    _raise_reply(head)


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
                _raise_reply(buf[pos:eol])
            if size < 0:  # would step back onto this header: an endless loop
                _raise_reply(buf[pos:eol])
            start = eol + 2
            stop = start + size
            if len(buf) < stop + 2:  # the data is still on its way: read it, then parse again
                buf, pos = _rest(sock, buf[pos:], stop + 2 - pos, True), 0
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


def _take_lines(sock: Any, count: int) -> tuple[list[bytes], bytes]:
    """The next ``count`` reply lines, without their CRLFs, and what arrived after them."""
    buf, pos = _more(sock, b"", 1), 0
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


def _more(sock: Any, head: bytes, need: int) -> bytes:
    """``head`` followed by what the socket delivers, until it holds at least ``need`` bytes.

    A reply's first read waits the socket's timeout; once part of it came, the rest must come
    within one timeout of that, however it trickles in (each read waiting a timeout of its own,
    a server sending a byte now and then would hold the call for ever), plus one timeout per
    ``_BATCH_BYTES`` that come: a large reply needs the rate a batch of writes needs, no more.
    """
    # the first read of a reply, the common case (an entry of another socket, even one left
    # idle in a pool after a reply that came in parts, must not slow every other call down)
    if not head and (not _LATE or sock not in _LATE):
        chunk: bytes = sock.recv(max(need, _CHUNK))
        if len(chunk) >= need:
            return chunk
        if not chunk:
            _raise_closed()
        head = chunk
    return _rest(sock, head, need)


def _rest(sock: Any, head: bytes, need: int, started: bool = False) -> bytes:
    """``_more`` once part of the reply came (``head``, or ``started``: whole records already
    read): by its deadline."""
    deadline = _LATE.get(sock)
    if deadline is None and (head or started):
        deadline = _late(sock)
    chunks = [head]
    have = len(head)
    while True:
        if deadline is not None and not readable(sock, deadline - time.monotonic()):
            _LATE.pop(sock, None)
            raise TimeoutError("timed out")
        chunk = sock.recv(max(need - have, _CHUNK))
        if not chunk:
            _raise_closed()
        chunks.append(chunk)
        have += len(chunk)
        if deadline is not None:  # a timeout more per _BATCH_BYTES come, as writes are sent
            deadline += len(chunk) * sock.gettimeout() / _BATCH_BYTES
            _LATE[sock] = deadline
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
    for other in list(_LATE):  # sockets closed mid-reply
        if other.fileno() < 0:
            _LATE.pop(other, None)
    deadline: float = time.monotonic() + timeout
    _LATE[sock] = deadline
    return deadline


def _raise_closed() -> NoReturn:
    from pymemcache.exceptions import MemcacheUnexpectedCloseError

    raise MemcacheUnexpectedCloseError()


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
