"""Shared fixtures: real engine servers (tests/servers.py) and a fake clock."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

pytest_plugins = ["servers"]

_FORK_WARNING = (
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
    ":DeprecationWarning"
)

# For tests that fork while another thread of theirs runs, on purpose: Python 3.12+ warns of it.
FORKS_BESIDE_A_THREAD = pytest.mark.filterwarnings(_FORK_WARNING)


def pytest_configure(config: pytest.Config) -> None:
    # A pytest-xdist worker talks to its controller on a thread of its own, so on 3.12+ every
    # fork warns (~270 times a run); a run in one process (-n 0) still shows the others.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        config.addinivalue_line("filterwarnings", _FORK_WARNING)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process and in children started meanwhile.

    A run started as a background job (``&`` from a script, nohup) inherits SIGINT ignored, and
    Python then installs no handler of its own, here or in any child.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
