"""``infermeter.instrument()``: meter this process's model calls, once.

Called by the application (or by ``infermeter exec``'s sitecustomize before
the application starts). It builds the process's one Emitter and asks every
plugin's ``infermeter_instrument`` hook to patch the runtimes it knows. The
application must never pay for a broken plugin: loading and each hook call
are guarded one by one, and a failure is a log record on the ``infermeter``
logger (which has a NullHandler, so it prints only if the application
configured logging).

The module is ``sdk``, not ``instrument``: a submodule named like the
function would replace ``infermeter.instrument`` by itself once imported.
"""

from __future__ import annotations

import logging
import threading

from infermeter.spans.emitter import Emitter

log = logging.getLogger("infermeter")
log.addHandler(logging.NullHandler())

_lock = threading.Lock()
_emitter: Emitter | None = None
_plugins_done = False


def instrument(socket_path: str | None = None, plugins: bool = True) -> Emitter:
    """Start metering this process and return its Emitter; later calls return the same.

    ``socket_path`` defaults to ``$INFERMETER_SOCKET`` or the system agent's
    path (``wire.default_socket_path``) and counts only on the first call.
    ``plugins=False`` gives the emitter without patching anything (manual
    spans); a later call with ``plugins=True`` still patches, once.
    Never raises.
    """
    global _emitter, _plugins_done
    with _lock:
        if _emitter is None:
            _emitter = Emitter(socket_path)
        emitter = _emitter
        if plugins and not _plugins_done:
            _plugins_done = True
            emitter.patched.extend(_run_plugins(emitter))
    return emitter


def current_emitter() -> Emitter | None:
    """The emitter ``instrument()`` made, if it was called in this process."""
    return _emitter


def _run_plugins(emitter: Emitter) -> list[str]:
    """Call every plugin's infermeter_instrument, each guarded; names of those that patched."""
    try:
        from infermeter.plugin_manager import call_each, make_plugin_manager

        pm = make_plugin_manager()
    except Exception:
        log.warning("infermeter: plugins could not be loaded", exc_info=True)
        return []
    patched: list[str] = []
    # call_each, not pm.collect: the names of the plugins that patched are
    # wanted, not their results, a failure is only a warning here, and a
    # slow patch (one that imports torch) is no fault to report.
    for call in call_each(pm.hook.infermeter_instrument, {"emitter": emitter}):
        if call.error is not None:
            log.warning(
                "infermeter: plugin %s failed to instrument", call.plugin, exc_info=call.error
            )
        elif call.result:
            patched.append(call.plugin)
    return patched
