"""Waiting on a condition in tests without ``time.sleep``."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` held, polled every 5 ms; fails the test after ``timeout``."""
    start = time.monotonic()
    tick = threading.Event()  # never set: its wait is an interruptible pause
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        tick.wait(0.005)
    return time.monotonic() - start


def process_state(pid: int) -> str:
    """The one-letter state of a Linux process (``R``, ``S``, ``T`` for stopped, ...)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def paused_process(pid: int) -> Iterator[None]:
    """The process stopped with SIGSTOP (and seen stopped) for the block, resumed after it.

    ``kill`` returns before the stop takes effect: waiting for state ``T`` keeps a server on
    the other core from answering one more request.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(pid) == "T", timeout=5)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
