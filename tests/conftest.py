"""Shared fixtures: real engine servers (tests/servers.py) and a fake clock."""

from __future__ import annotations

import pytest

pytest_plugins = ["servers"]

# For tests that fork while another thread of theirs runs, on purpose: Python 3.12+ warns of it.
FORKS_BESIDE_A_THREAD = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
    ":DeprecationWarning"
)


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
