"""The failure a ``cacheplug`` command reports on stderr, and the exit statuses it returns."""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Problem"]

EXIT_FAILED = 1
EXIT_USAGE = 2


class Problem(Exception):
    """A failure to report on stderr, with the exit status to return."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status
