"""An example cacheplug plugin: the ``sqlite://`` backend and the ``zpickle`` serializer.

Importing this package imports neither: the plugin registers them as ``"module:Class"`` strings,
so each is imported only when a URL or ``serializer=`` first names it.
"""

__version__ = "0.1.0"
