"""Built-in backends, each a plugin module registering its URL schemes."""
