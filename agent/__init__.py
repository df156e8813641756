"""infermeter: energy, cost and carbon of AI inference, per process, model and request."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from infermeter.hookspecs import hookimpl

try:
    __version__ = version("infermeter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "hookimpl"]
