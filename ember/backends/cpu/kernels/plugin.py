"""The Plugin op's generic (``aten``) CPU kernel: the plugin's first CPU kernel, dispatched by
the node's plugin (``ember.backends.plugins``, which registers it and the plugins' named
tactics)."""
from ember.backends import plugins  # noqa: F401
