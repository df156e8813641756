"""infermeter: energy, cost and carbon of AI inference, per process, model and request."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from infermeter.hookspecs import hookimpl

if TYPE_CHECKING:
    from infermeter.context import request
    from infermeter.sdk import instrument

try:
    __version__ = version("infermeter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "hookimpl", "instrument", "request"]


def __getattr__(name: str) -> Any:
    """``instrument`` and ``request`` load on first use: the agent never needs them."""
    if name == "instrument":
        from infermeter.sdk import instrument

        return instrument
    if name == "request":
        from infermeter.context import request

        return request
    raise AttributeError(f"module 'infermeter' has no attribute {name!r}")
