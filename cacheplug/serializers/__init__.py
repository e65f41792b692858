"""Built-in serializers, each a plugin module registering its name."""
