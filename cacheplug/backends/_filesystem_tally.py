"""The tally a ``key_prefix``'s lock file keeps of its entries, read and written under its
``flock`` by every writer of the directory, so that ``set`` knows the count without a listing.
"""

from __future__ import annotations

import os
import struct
from contextlib import suppress

__all__ = ["keep_tally", "read_tally", "write_tally"]

# A namespace's lock file holds its tally: entries (-1 = unknown), entries added since listing,
# and a check word, so a zeroed or scribbled file reads as unknown, never as a low count.
_TALLY = struct.Struct("<qqq")
_TALLY_CHECK = 0x3C5A_17C0_DE5A_17C0


def read_tally(lock: int) -> tuple[int, int]:
    try:
        data = os.pread(lock, _TALLY.size, 0)
    except OSError:
        # A bad sector: unknown, as a scribbled count is (the next count written may remap it),
        # never a failure of the write or delete it counts for.
        return -1, 0
    if len(data) < _TALLY.size:
        return -1, 0
    count, added, check = _TALLY.unpack(data)
    if check != count ^ added ^ _TALLY_CHECK or count < 0 or added < 0:
        return -1, 0
    return int(count), int(added)


def write_tally(lock: int, count: int, added: int) -> None:
    os.pwrite(lock, _TALLY.pack(count, added, count ^ added ^ _TALLY_CHECK), 0)


def keep_tally(lock: int, count: int, added: int) -> None:
    """``write_tally``, never failing the change it counts: a count the disk refuses (full,
    EIO) stays as it was, and the listing that repairs a drifting count corrects it later."""
    with suppress(OSError):
        write_tally(lock, count, added)
