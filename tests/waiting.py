"""Waiting on a condition in tests without ``time.sleep``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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
