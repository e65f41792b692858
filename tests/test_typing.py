"""What a type checker sees in user code: cacheplug ships ``py.typed``, and memoized functions
and methods keep their argument and return types."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

USER_CODE = """
from typing import Any

from cacheplug import BaseCache, SimpleCache, from_url
from cacheplug.core.base import Memoized

cache: BaseCache = from_url("simple://")


@cache.memoize(timeout=30)
def area(w: int, h: int) -> int:
    return w * h


@cache.memoize()
async def fetch(x: int) -> str:
    return str(x)


class Repo:
    @cache.memoize()
    def lookup(self, key: str) -> str:
        return key

    @staticmethod
    @cache.memoize()
    def half(x: int) -> float:
        return x / 2

    @classmethod
    @cache.memoize()
    def tag(cls, x: int) -> bytes:
        return b"x"

    @cache.memoize()  # over a classmethod: called on the class with its arguments alone
    @classmethod
    def made(cls, x: int) -> str:
        return "x"


async def main() -> None:
    reveal_type(await fetch(1))


repo = Repo()
reveal_type(area(1, 2))
reveal_type(area.invalidate(1, 2))
reveal_type(repo.lookup("k"))
reveal_type(repo.lookup.invalidate("k"))
reveal_type(Repo.lookup(repo, "k"))
reveal_type(Repo.half(2))
reveal_type(Repo.tag(3))
reveal_type(repo.tag(3))
reveal_type(Repo.lookup.invalidate(repo, "k"))
reveal_type(Repo.made(4))


def warm(memoized: Memoized[..., Any]) -> None:
    pass


warm(area)
warm(Repo.lookup)  # on the class: the Memoized itself, as before the typed methods
reveal_type(SimpleCache().inc("n"))
reveal_type(cache.get_many("a", "b"))
area("a", 2)  # the one error expected
"""

EXPECTED = [
    "str",  # await fetch(1)
    "int",
    "bool",
    "str",
    "bool",
    "str",
    "float",
    "bytes",
    "bytes",
    "bool",
    "str",
    "int | None",
    "list[Any]",
]


def test_memoized_functions_and_methods_keep_their_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text(USER_CODE)
    # The package from its source tree: an editable install hides it from mypy behind an
    # import hook. follow-imports=silent reports the user's errors only, as an installed
    # package's would be.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--show-error-codes", "--no-pretty", "--cache-dir", str(tmp_path / "cache"), str(user)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(REPO)},
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    revealed = re.findall(r'Revealed type is "([^"]+)"', output)
    assert [kind.replace("?", "") for kind in revealed] == EXPECTED, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) == 1, output
    assert 'incompatible type "str"; expected "int"  [arg-type]' in errors[0], output
