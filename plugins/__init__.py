"""The built-in plugins. Each registers through the ``infermeter`` entry-point
group (``core.<name>``) exactly as a third-party plugin does."""
