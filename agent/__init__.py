"""infermeter: energy, cost and carbon of AI inference, per process, model and request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infermeter.hookspecs import hookimpl

if TYPE_CHECKING:
    from infermeter.spans.context import request
    from infermeter.spans.sdk import instrument
    from infermeter.spans.step import step

    __version__: str

__all__ = ["__version__", "hookimpl", "instrument", "request", "step"]


def __getattr__(name: str) -> Any:
    """What loads on first use: ``instrument``, ``request`` and ``step`` (the agent never
    needs them) and ``__version__`` (reading it parses the package metadata)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("infermeter")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    if name == "instrument":
        from infermeter.spans.sdk import instrument

        return instrument
    if name == "request":
        from infermeter.spans.context import request

        return request
    if name == "step":
        from infermeter.spans.step import step

        return step
    raise AttributeError(f"module 'infermeter' has no attribute {name!r}")
