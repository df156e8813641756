"""One guarded NVML call: ``nvml_query(func, *args, default=...)``.

The idea of nvitop's ``nvmlQuery`` (``api/libnvml.py``). Many NVML values are
optional: a property a GPU does not have (NotSupported), one the agent may
not read (NoPermission), a function an older driver lacks
(FunctionNotFound). The code that wants one needs only "the value, or this
default"; a try/except at each such call hid the places where an error
means more. Those stay explicit: the meter's recovery (a source switched
off for good on NotSupported, a frozen counter), the recorder writing the
error NVML gave into the trace, a GPU skipped when it cannot be described.

Every ``pynvml.NVMLError`` gives the default. That covers the replay
stand-in too, which raises pynvml's own classes, so a replay goes through
the same guard as live. Any other exception is a bug and propagates. Each
(function, error) is logged once per process, at ``level`` (DEBUG unless the
caller says otherwise): a call made every 0.2 s on every GPU must not log
every 0.2 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

import pynvml

from infermeter.plugins.nvml.samples import why

log = logging.getLogger("infermeter.plugins.nvml")

T = TypeVar("T")
D = TypeVar("D")

# (function name, error class name) already logged; the poller thread and
# the agent's tick both query NVML, so the set is guarded.
_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


@overload
def nvml_query(func: Callable[..., T], *args: Any, level: int = ...) -> T | None: ...


@overload
def nvml_query(func: Callable[..., T], *args: Any, default: D, level: int = ...) -> T | D: ...


def nvml_query(
    func: Callable[..., Any], *args: Any, default: Any = None, level: int = logging.DEBUG
) -> Any:
    """``func(*args)``, or ``default`` when NVML answers with an error (logged once)."""
    try:
        return func(*args)
    except pynvml.NVMLError as e:
        name = getattr(func, "__name__", repr(func))
        key = (name, type(e).__name__)
        with _logged_lock:
            first = key not in _logged
            _logged.add(key)
        if first:
            log.log(level, "NVML %s: %s (using %r)", name, why(e), default)
        return default
