"""Running code in a fresh Python interpreter, for what only a new process shows (imports)."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """The standard output of ``code`` run by a fresh interpreter; a failure fails the test."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
