"""memcached's text protocol for the hot calls (``get`` of one or many keys, ``set``), for
batches of writes (``set_many``, ``delete_many``, writes that read a namespace token back) and
for ``has`` in a namespace; counters (``incr`` and the compare-and-swap of meta ``mg``/``ms``)
are in ``_memcached_counter_wire``, which sends the same way.

They run on the socket of a connected pymemcache ``Client``, which keeps doing everything else
(connecting, pooling, the other commands). pymemcache reads a multi-key reply a line at a time
in Python; here it is read in large chunks and cut at all its CRLFs in one call, several times
less work per value (``_memcached_replies`` reads the replies, each by a deadline, and parses
them). This module sends the requests and gives the calls their answers.
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
from collections.abc import Generator, Mapping
from typing import Any, TypeVar

from cacheplug.backends._memcached_replies import (
    BATCH_BYTES,
    LATE,
    REFUSED,
    raise_reply,
    read_answers,
    read_fetched,
    read_line,
    seen_value,
)

__all__ = [
    "DELETED",
    "EXISTS",
    "STORED",
    "STORED_OR_REFUSED",
    "ask",
    "delete_many_steps",
    "delete_request",
    "exists_request",
    "exists_seeing",
    "fetch",
    "fetch_steps",
    "finish",
    "send_request",
    "socket_of",
    "storage_request",
    "store",
    "store_many_steps",
    "write",
    "write_steps",
]

_BATCH = 2048  # writes sent before their replies are read (at most 12 bytes of reply each)
_GET_BYTES = 32768  # of names in one get, sent before its reply is read
_Answer = TypeVar("_Answer")
_Result = TypeVar("_Result")
#: A call that pauses (yields) after each request it sends; its reply is read when resumed.
Steps = Generator[None, None, _Result]


# os.write takes a socket's descriptor on POSIX only
_WRITE_FIRST = os.name == "posix"


def send_request(sock: Any, data: bytes) -> None:
    """``sock.sendall(data)`` in one system call when the socket buffer takes it all.

    With a timeout, Python polls the socket before every send, a system call as costly as the
    write; the socket is then non-blocking, so a plain write cannot hang, and what it leaves
    over (a large value, a full buffer) goes through ``sendall``, which keeps the deadline.
    """
    if LATE:
        LATE.pop(sock, None)  # a new reply: it gets a timeout of its own
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


def socket_of(client: Any) -> Any:
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
    sock = socket_of(client)
    try:
        send_request(sock, b"get " + names + b"\r\n")
        return read_fetched(sock)
    except BaseException:
        client.close()
        raise


def fetch_steps(client: Any, names: bytes) -> Steps[dict[bytes, tuple[int, bytes]]]:
    """``fetch`` as steps. One round trip per ``_GET_BYTES`` of names: memcached answers a long
    ``get`` while it still reads it and stops reading while its replies wait unread, so a
    longer one sent at once would leave both sides waiting on each other."""
    sock = socket_of(client)
    try:
        found: dict[bytes, tuple[int, bytes]] = {}
        start = 0
        while start < len(names):
            end = len(names)
            if end - start > _GET_BYTES:  # cut at a space: a name is at most 250 bytes
                end = names.rindex(b" ", start, start + _GET_BYTES)
            send_request(sock, b"get " + names[start:end] + b"\r\n")
            yield
            found.update(read_fetched(sock))
            start = end + 1
        return found
    except BaseException:
        client.close()
        raise


def store(client: Any, name: str, item: tuple[int, bytes], exptime: int) -> bool:
    """``set`` of one entry; whether memcached stored it."""
    return ask(client, storage_request(b"set", name, item, exptime), STORED) is True


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
    sock = socket_of(client)
    try:
        writes = requests[0] if len(requests) == 1 else b"".join(requests)
        send_request(sock, b"%sget %s\r\n" % (writes, seen_key.encode("ascii")))
        done: list[_Answer] = []
        rest = read_answers(sock, requests, answers, done)
        return done, seen_value(sock, rest, seen_key)
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
    ``BATCH_BYTES``: the timeout bounds each send, which must not carry more than the link
    delivers in that time.
    """
    sock = socket_of(client)
    try:
        done: list[_Answer] = []
        batches = _batches(requests)
        for batch in batches[:-1] if seen_key else batches:
            if batch:
                send_request(sock, b"".join(batch))
                yield
                if read_answers(sock, batch, answers, done):
                    raise_reply(b"more reply lines than commands")
        if seen_key is None:
            return done, None
        send_request(sock, b"%sget %s\r\n" % (b"".join(batches[-1]), seen_key.encode("ascii")))
        yield
        rest = read_answers(sock, batches[-1], answers, done)
        return done, seen_value(sock, rest, seen_key)
    except BaseException:
        client.close()
        raise


def _batches(requests: list[bytes]) -> list[list[bytes]]:
    """``requests`` cut into batches of at most ``_BATCH`` requests and ``BATCH_BYTES`` bytes
    (or one request); one empty batch when there are none."""
    if len(requests) <= _BATCH and sum(map(len, requests)) <= BATCH_BYTES:
        return [requests]
    batches: list[list[bytes]] = []
    batch: list[bytes] = []
    size = 0
    for request in requests:
        if batch and (len(batch) == _BATCH or size + len(request) > BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(request)
        size += len(request)
    batches.append(batch)
    return batches


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


#: What the reply line of a storage command, or of ``delete``, says was done.
STORED = {b"STORED": True, b"NOT_STORED": False}
#: The same, with None for a write memcached refused (SERVER_ERROR), where a batch goes on.
STORED_OR_REFUSED: Mapping[bytes, bool | None] = {**STORED, REFUSED: None}
DELETED = {b"DELETED": True, b"NOT_FOUND": False}
#: What the reply to ``exists_request`` says: stored or not (a miss echoes the flag on newer
#: servers only; a server that echoes none is understood too).
EXISTS = {b"HD O1": True, b"HD": True, b"EN O1": False, b"EN": False}


def ask(client: Any, request: bytes, answers: Mapping[bytes, bool | None]) -> bool | None:
    """Send ``request`` and give the answer its one reply line maps to (other lines raise)."""
    sock = socket_of(client)
    try:
        send_request(sock, request)
        line = read_line(sock)
        if line in answers:
            return answers[line]
        raise_reply(line)
    except BaseException:
        client.close()
        raise
