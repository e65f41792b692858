"""Test helpers for backend and serializer authors: the shared contract suite.

See :class:`CacheContract` and docs/plugins.md.
"""

try:
    import pytest
except ModuleNotFoundError as err:  # a plain install has no pytest: say what to do
    raise ModuleNotFoundError(
        "cacheplug.testing is a pytest suite: install pytest (pip install pytest) to use it",
        name=err.name,
    ) from err

# The suite's asserts live in this package, not in the author's test module: without this,
# pytest reports a failing contract test as a bare AssertionError.
pytest.register_assert_rewrite("cacheplug.testing.contract")

from cacheplug.testing.contract import PORTABLE_VALUES, CacheContract, CacheFactory  # noqa: E402

__all__ = ["PORTABLE_VALUES", "CacheContract", "CacheFactory"]
