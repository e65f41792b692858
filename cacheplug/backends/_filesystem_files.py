"""The files of ``FileSystemCache`` at the level of system calls: the entry format, the flags
files are opened with, what their errors mean, and the opens, reads, renames and unlinks that
leave no descriptor to a signal handler's exception or to a planted directory.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
from contextlib import suppress

__all__ = [
    "DISK_FULL",
    "ENTRY_FAULTS",
    "HEADER",
    "LOCK_FLAGS",
    "MAGIC",
    "NEVER",
    "OUT_OF_RESOURCES",
    "O_CLOEXEC",
    "READ_FLAGS",
    "TEMP_TOKEN_BYTES",
    "WRITE_FLAGS",
    "Entry",
    "discard",
    "open_fd",
    "read_rest",
    "replace_entry",
    "sync_directory",
    "widen_to",
    "write_temp",
]

# Every entry file starts with magic + absolute expiry (0.0 = never), then the payload.
HEADER = struct.Struct("<4sd")
MAGIC = b"CPF1"
NEVER = 0.0
TEMP_TOKEN_BYTES = 6  # random bytes in a temp file's name, in hex
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# NONBLOCK: a FIFO planted at an entry path must not hang a reader; NOFOLLOW: no symlinks.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | O_CLOEXEC
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | O_CLOEXEC
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | O_CLOEXEC
# What opening or reading an entry fails with when that file is at fault (gone, a symlink,
# another's, no regular file): a missing or damaged entry. Any other error (EMFILE, ENFILE,
# ENOMEM, EIO) is the file system failing, an outage: read as missing, it would let inc restart
# a live counter, add overwrite a live entry and pruning drop live entries.
ENTRY_FAULTS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENXIO}
    # O_NOFOLLOW on a symlink: ELOOP (Linux, macOS), EMLINK (FreeBSD), EFTYPE (NetBSD)
    | {errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP)}
    | {errno.ENODEV, errno.EOVERFLOW}  # a device without a driver; a file too large to read
)
# Of those outages, the ones of this process, never of one file: pruning stops at them, where
# one entry failing with EIO (a bad sector) beside others read fine is passed over.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

# (absolute expiry, payload, mtime) of an entry file
Entry = tuple[float, memoryview, float]


def open_fd(path: str, flags: int, mode: int = 0o777) -> int:
    """``os.open(path, flags, mode)``: a descriptor that reaches the caller with no point in
    between where a signal handler's exception can show up, so its try can close it."""
    # A handler's exception shows up right after a call from Python code returns, which would
    # lose the descriptor: here map calls it inside C, the unpacking is no call, and neither is
    # the return of a Python function.
    (fd,) = map(os.open, (path,), (flags,), (mode,))
    return fd


def read_rest(fd: int, start: bytes, size: int) -> bytes:
    """The file ``fd`` to its end, of which ``start`` was read: one read stops short (Linux
    reads at most 2 GiB at once), and a file may have grown since its ``size`` was taken (not by
    cacheplug, which replaces files whole)."""
    chunks = [start]
    got = len(start)
    while chunks[-1]:
        chunks.append(os.read(fd, max(size + 1 - got, 1 << 20)))
        got += len(chunks[-1])
    return b"".join(chunks)


def widen_to(fd: int, mode: int) -> None:
    """Give the open file ``fd`` the bits of ``mode`` it lacks, when this process owns it."""
    info = os.fstat(fd)
    if mode & ~stat.S_IMODE(info.st_mode) and info.st_uid == os.geteuid():
        os.fchmod(fd, mode)


def replace_entry(tmp: str, path: str) -> None:
    """``os.replace(tmp, path)``, taking away an empty directory planted at ``path`` first."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        # A directory planted at the entry's name: take it away when empty and retry.
        os.rmdir(path)
        os.replace(tmp, path)


def discard(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


def write_temp(path: str, data: bytes, mode: int, mode_as_created: int, fsync: bool) -> str:
    """A new temp file beside ``path`` holding ``data``, with ``mode`` (set again unless files
    are created with exactly ``mode_as_created``), flushed to disk with ``fsync``; its path.
    """
    tmp = f"{path}.{secrets.token_hex(TEMP_TOKEN_BYTES)}.tmp"
    fd = open_fd(tmp, WRITE_FLAGS, mode)
    try:
        if mode != mode_as_created:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        discard(tmp)
        raise
    os.close(fd)
    return tmp


def sync_directory(path: str) -> None:
    """Flush the directory ``path`` to disk: a rename in it is durable only then."""
    fd = open_fd(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
