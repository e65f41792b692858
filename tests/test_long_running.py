"""A cache kept for weeks: no state grows without bound, nothing keeps dropped objects alive."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

import cacheplug
from cacheplug import SimpleCache, from_url
from cacheplug.core.hookspecs import RegisterFn
from cacheplug.core.plugins import register_plugin, reset_plugins


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    reset_plugins()
    yield
    reset_plugins()


def _register_fresh_backend() -> weakref.ref[type[SimpleCache]]:
    """Register a backend class made for this call only (as a reloaded plugin module does)
    under ``fresh://``, build a cache from its URL; a weak reference to the class."""

    class FreshCache(SimpleCache):
        pass

    class FreshPlugin:
        @cacheplug.hookimpl
        def cacheplug_register_backends(self, register: RegisterFn) -> None:
            register("fresh", FreshCache)

    register_plugin(FreshPlugin(), "fresh-plugin")
    assert type(from_url("fresh://?threshold=5", default_timeout=1)) is FreshCache
    return weakref.ref(FreshCache)


@pytest.mark.usefixtures("fresh_plugins")
def test_from_url_keeps_no_backend_class_of_a_forgotten_plugin_alive() -> None:
    classes = []
    for _ in range(20):
        reset_plugins()
        classes.append(_register_fresh_backend())
    reset_plugins()
    gc.collect()
    alive = [ref for ref in classes if ref() is not None]
    assert not alive, f"{len(alive)} of 20 backend classes outlived their plugin registry"
