"""memcached's text protocol for counters, on the socket of a connected pymemcache ``Client``
as in ``_memcached_wire``: ``incr`` with the flags of the entry it counts (a meta ``mg`` sent
with it, in the same round trip), and the compare-and-swap of a counter that ``incr`` cannot
count (meta ``mg`` and ``ms``).

Any error closes the connection, so a half-read reply never reaches the next call; failures
raise pymemcache's own exceptions.
"""

from __future__ import annotations

from typing import Any

from cacheplug.backends._memcached_replies import more, raise_reply, seen_value, take_lines
from cacheplug.backends._memcached_wire import ask, send_request, socket_of

__all__ = ["count", "count_seeing", "read_for_swap", "swap"]

#: What the reply line of ``ms`` says: True stored, False changed meanwhile, None deleted.
_SWAPPED = {b"HD": True, b"EX": False, b"NF": None}


def count(client: Any, name: str, step: int) -> tuple[int | None, int | None, bool]:
    """``incr`` by ``step`` with the entry's flags, one round trip.

    :returns: ``(flags, new value, numeric)``: flags None and new value None when the key is
        missing; ``numeric`` False (nothing changed) when memcached called the value non-numeric.
    """
    sock = socket_of(client)
    try:
        send_request(sock, _count_request(name, step))
        lines, rest = take_lines(sock, 2)
        if rest:
            raise_reply(b"more reply lines than commands")
        return _counted(*lines)
    except BaseException:
        client.close()
        raise


def count_seeing(
    client: Any, name: str, step: int, seen_key: str
) -> tuple[tuple[int | None, int | None, bool], bytes | None]:
    """``count``, then ``get`` of ``seen_key``, in one round trip: ``(count's answer, the value
    of seen_key right after, None when missing)``."""
    sock = socket_of(client)
    try:
        send_request(sock, b"%sget %s\r\n" % (_count_request(name, step), seen_key.encode("ascii")))
        lines, rest = take_lines(sock, 2)
        return _counted(*lines), seen_value(sock, rest, seen_key)
    except BaseException:
        client.close()
        raise


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
    raise_reply(reply)


def read_for_swap(client: Any, name: str) -> tuple[int, bytes, int, int] | None:
    """``(flags, data, cas, seconds left or -1 for never)`` of an entry; None when missing."""
    sock = socket_of(client)
    try:
        send_request(sock, b"mg %s f c t v\r\n" % name.encode("ascii"))
        buf = more(sock, b"", 1)
        eol = buf.find(b"\r\n")
        while eol < 0:
            buf = more(sock, buf, len(buf) + 1)
            eol = buf.find(b"\r\n")
        head = buf[:eol]
        if head == b"EN" and eol + 2 == len(buf):
            return None
        size = int(_meta_flag(head, b"VA", b""))
        stop = eol + 2 + size
        if len(buf) < stop + 2:
            buf = more(sock, buf, stop + 2)
        if len(buf) != stop + 2 or buf[stop:] != b"\r\n":
            raise_reply(head)
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
    return ask(client, request, _SWAPPED)


def _meta_flag(head: bytes, status: bytes, tag: bytes) -> int:
    """The number of the ``tag`` flag in a meta reply line that must start with ``status``
    (``tag`` empty: the first number after it, a value's size)."""
    fields = head.split(b" ")
    if fields[0] == status:
        for field in fields[1:]:
            if field.startswith(tag) and field[len(tag) :].lstrip(b"-").isdigit():
                return int(field[len(tag) :])
    raise_reply(head)
