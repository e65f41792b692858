"""Counters of ``RedisCache``: the range of ``INCRBY``, integers stored as plain decimals, the
script that makes ``inc`` one atomic step, what Redis' refusal of an ``INCRBY`` means, and
what ``inc`` does when its script fails: load it, do without it, or raise the refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cacheplug.backends._redis_masking import masked
from cacheplug.backends._redis_outages import Outages

__all__ = [
    "INC_SCRIPT",
    "INC_SHA",
    "INT64_MAX",
    "INT64_MIN",
    "UNREADABLE",
    "Counters",
    "escaped",
    "is_decimal",
    "refusal",
    "scripts_refused",
    "unescaped",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the range of INCRBY

# A missing counter is created with the default expiry, an existing one keeps its own; all in
# one atomic step on the key's own node, so it works on a cluster too. A default expiry of -1
# (a default_timeout reassigned below 0) creates nothing: the new counter is born expired, as a
# set is. The count is answered with GET: INCRBY's reply would pass through a Lua number, a
# double, inexact beyond 2**53.
INC_SCRIPT = """
if ARGV[2] == '-1' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return ARGV[1]
  end
elseif ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], '0', 'NX')
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"""
INC_SHA = hashlib.sha1(INC_SCRIPT.encode()).hexdigest()


def scripts_refused(message: str) -> bool:
    """Whether Redis' error ``message`` to ``EVALSHA``/``EVAL`` refuses scripts themselves: an
    ACL user without ``+@scripting``, the commands renamed away, a proxy without them."""
    lowered = message.lower()
    refused = "unknown command" in lowered or "no permissions" in lowered
    return refused and ("'eval'" in lowered or "'evalsha'" in lowered)


def is_decimal(payload: bytes) -> bool:
    """Whether ``payload`` is an integer as ``set``/``inc`` store it.

    Callers first check that the first byte is in ``-./0-9`` (44 < byte < 58): one comparison
    sends every serializer payload straight to its decoder.
    """
    return payload.isdigit() or (payload[0] == 45 and payload[1:].isdigit())


def _decimal_and_newlines(data: bytes) -> bool:
    """Whether ``data`` is a decimal with any newlines after it: what :func:`escaped` marks."""
    return 44 < data[0] < 58 and is_decimal(data.rstrip(b"\n"))


def escaped(data: bytes) -> bytes:
    """A serializer's ``data`` as stored: only counters are plain decimals, so data that would
    read as one (a decimal, with any newlines after it) gets one newline more."""
    if data and _decimal_and_newlines(data):
        return data + b"\n"
    return data


def unescaped(payload: bytes) -> bytes:
    """The serializer's data in a stored ``payload`` that is no counter: :func:`escaped` undone."""
    if payload[-1:] == b"\n" and _decimal_and_newlines(payload):
        return payload[:-1]
    return payload


#: What ``stored`` answers in :func:`refusal` for a value it could not read.
UNREADABLE = object()


def refusal(
    key: str,
    delta: int,
    message: str,
    redis_type: Callable[[], str],
    stored: Callable[[], object],
) -> Exception | None:
    """The exception ``inc`` raises when Redis refused to add ``delta`` to ``key``, or None
    when the error reply is about the server (out of memory, read-only, cluster down), not
    the value.

    :param message: Redis' error reply.
    :param redis_type: asked for the key's Redis type when it holds no string.
    :param stored: asked for the value the key holds when Redis found no integer there:
        ``None`` when it is gone, :data:`UNREADABLE` when it cannot be decoded.
    """
    if message.startswith("WRONGTYPE"):
        return TypeError(f"cannot increment {key!r}: it holds a Redis {redis_type()}")
    if "not an integer" in message:
        value = stored()
        if value is UNREADABLE:
            return TypeError(f"cannot increment {key!r}: its stored value is unreadable")
        if value is None:  # removed meanwhile, or a stored None
            return TypeError(f"cannot increment {key!r}: it does not hold an integer")
        if type(value) is not int:
            return TypeError(
                f"cannot increment {key!r}: it holds a {type(value).__name__}, not an int"
            )
        if INT64_MIN <= value <= INT64_MAX:
            return TypeError(
                f"cannot increment {key!r}: it does not hold an integer Redis can count "
                "(another client wrote it, not as a plain decimal)"
            )
    elif "overflow" not in message:
        return None
    return OverflowError(
        f"cannot increment {key!r} by {delta}: Redis counters hold signed 64-bit integers"
    )


class Counters(Outages):
    """The ways of :class:`~cacheplug.backends.redis.RedisCache`'s ``inc`` around a script
    that failed, and the look at a refused counter its error message takes."""

    #: set once the server refused inc's script: inc then sends its steps without it
    _scripts_refused: bool = False
    _no_script_error: type[Exception]

    if TYPE_CHECKING:

        def _decoded(self, payload: bytes, key: str, prefix: str) -> Any: ...

    def _inc_failed(
        self, key: str, prefix: str, args: tuple[Any, ...], err: Exception
    ) -> int | None:
        """The count of an ``inc`` of ``key`` under ``prefix`` whose script, sent with
        ``args``, failed with ``err``: loaded or done without, or ``None`` in an outage.

        :raises TypeError: Redis refused the stored value (see :func:`refusal`).
        :raises OverflowError: the count would leave the signed 64-bit range.
        """
        if isinstance(err, self._no_script_error):
            try:  # first use on this server: EVAL also caches the script there
                return int(self._once.eval(INC_SCRIPT, *args))
            except self._failures as retry_err:
                err = retry_err
        if isinstance(err, self._response_error) and scripts_refused(str(err)):
            try:
                value = self._inc_without_script(args)
            except self._failures as retry_err:
                err = retry_err  # refused as well (a user without rights): not the scripts
            else:
                if not self._scripts_refused:  # other threads may have switched first
                    self._scripts_refused = True
                    self._log(
                        "scripts",
                        "Redis at %s refuses scripts (%s): inc and dec send SET NX and INCRBY "
                        "instead",
                        self._where,
                        masked(err, self._secrets),
                    )
                return value
        if isinstance(err, self._response_error):
            refused = refusal(
                key,
                args[2],
                str(err),
                lambda: self._type(args[1]),
                lambda: self._stored(args[1], key, prefix),
            )
            if refused is not None:
                raise refused
        self._backend_error("inc", err)
        return None

    def _inc_without_script(self, args: tuple[Any, ...]) -> int:
        """:data:`INC_SCRIPT`'s work for a server refusing scripts, ``args`` as the script
        takes them: ``SET NX`` (a new counter's expiry) and ``INCRBY`` in one round trip.

        The count is as atomic as the script's; only a counter that another client deletes
        between the two starts again without expiry. No MULTI: where Redis refuses that too,
        the commands after it would still run, outside any transaction. A born-expired new
        counter (a default_timeout reassigned below 0) is looked for with ``EXISTS`` first.

        :raises redis.ResponseError: Redis' own reply to ``INCRBY``, as the script's.
        """
        _, name, delta, ttl = args
        if ttl < 0:
            if not self._once.exists(name):
                return int(delta)
            return int(self._once.execute_command("INCRBY", name, delta))
        expiry = ("PX", ttl) if ttl != 0 else ()
        pipe = self._once.pipeline(transaction=False)
        pipe.execute_command("SET", name, "0", "NX", *expiry)
        pipe.execute_command("INCRBY", name, delta)
        # not raise_on_error: its exception would put "Command # 2 ..." before Redis' reply
        created, count = pipe.execute(raise_on_error=False)
        for reply in (created, count):
            if isinstance(reply, Exception):
                raise reply
        return int(count)  # INCRBY's reply is exact: no Lua double on the way

    def _stored(self, name: str | bytes, key: str, prefix: str) -> Any:
        """The value ``name`` (``key`` under ``prefix``) holds, for the error of an ``inc``
        that Redis refused: ``None`` when gone, ``UNREADABLE`` when it does not decode."""
        try:
            payload = self._client.get(name)
        except self._failures:
            return None  # Redis said it holds no integer: say that much
        if payload is None:
            return None
        try:
            return self._decoded(payload, key, prefix)
        except Exception:
            return UNREADABLE

    def _type(self, name: str | bytes) -> str:
        """The Redis type of ``name`` (``list``, ``hash``...), for error messages."""
        try:
            return bytes(self._client.type(name)).decode()
        except self._failures:
            return "value of another type"
