"""The directory of ``FileSystemCache``: made absolute, created with its parents and the
permissions its entries' ``mode`` calls for whatever the umask, proven writable, and created
again when it is removed under a running cache.
"""

from __future__ import annotations

import os
import secrets
import stat

from cacheplug.backends._filesystem_files import DISK_FULL, TEMP_TOKEN_BYTES, WRITE_FLAGS, open_fd
from cacheplug.core.errors import ConfigurationError

__all__ = ["prepared_dir", "recreate_dir"]

_PREPARE_ATTEMPTS = 3  # times the constructor prepares a directory removed as it does so


def prepared_dir(cache_dir: str | os.PathLike[str], mode: int) -> tuple[str, int, int]:
    """``cache_dir`` made absolute, created when missing and proven writable.

    :returns: the path, the permission bits a file created there with ``mode`` gets (-1:
        unknown, the disk is full), and the directory's own.
    """
    if not isinstance(cache_dir, (str, bytes, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or a path, got {type(cache_dir).__name__}")
    if not os.fspath(cache_dir):
        raise ConfigurationError("cache_dir is empty; give a directory path")
    path = os.path.abspath(os.fsdecode(cache_dir))
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"cache_dir {path!r} cannot be a file name (a lone surrogate); give a directory path"
        ) from None
    if "\0" in path:
        raise ConfigurationError(f"cache_dir {path!r} contains a NUL byte; give a directory path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigurationError(
            f"cache_dir {path!r} exists and is not a directory; give a directory path"
        )
    for _ in range(_PREPARE_ATTEMPTS):
        try:
            _make_dirs(path, _dir_mode_for(mode))
            dir_mode = stat.S_IMODE(os.stat(path).st_mode)
            return path, _probed_mode(path, mode), dir_mode
        except FileNotFoundError as err:  # removed meanwhile (an operator's rm -rf): again
            failure: OSError = err
        except OSError as err:
            failure = err
            break
    raise ConfigurationError(
        f"cache_dir {path!r} cannot be created or written ({failure.strerror or failure}); give "
        f"a directory this process may create files in"
    ) from failure


def _probed_mode(path: str, mode: int) -> int:
    """The permission bits a file created in the directory ``path`` with ``mode`` gets; -1
    when the disk (or quota) is full: an outage, which writes answer and make room for.

    :raises OSError: no file can be created there.
    """
    probe = os.path.join(path, f".cacheplug-probe-{secrets.token_hex(TEMP_TOKEN_BYTES)}")
    try:
        fd = open_fd(probe, WRITE_FLAGS, mode)
    except OSError as err:
        if err.errno in DISK_FULL:  # the check for a full disk comes after the permission's
            return -1
        raise
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)


def _dir_mode_for(mode: int) -> int:
    """Permissions for a directory of entries with ``mode``: search for those who may read,
    write and search for those who may write, nothing for the others (0o600 gives 0o700)."""
    return (mode & 0o666) | (mode & 0o444) >> 2 | (mode & 0o222) >> 1


def _make_dirs(path: str, mode: int) -> None:
    """Create ``path`` and its missing parents with ``mode`` whatever the umask: with umask 0,
    ``os.makedirs`` gives 0o777, and whoever may write the directory may plant entries there.

    :raises OSError: a directory cannot be created.
    """
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        _make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return  # there already (a file there is refused by the caller's own checks)
    os.chmod(path, mode)


def recreate_dir(cache_dir: str, mode: int, dir_mode: int) -> None:
    """Create the removed ``cache_dir`` again, parents included (as ``mode`` calls for), itself
    with ``dir_mode``, its permissions of old."""
    _make_dirs(os.path.dirname(cache_dir), _dir_mode_for(mode))
    try:
        os.mkdir(cache_dir, dir_mode)
    except FileExistsError:  # another thread or process was first
        return
    os.chmod(cache_dir, dir_mode)  # the umask must not narrow it
