"""Test helpers for backend and serializer authors: the shared contract suite.

See :class:`CacheContract` and docs/plugins.md.
"""

from cacheplug.testing.contract import PORTABLE_VALUES, CacheContract, CacheFactory

__all__ = ["PORTABLE_VALUES", "CacheContract", "CacheFactory"]
