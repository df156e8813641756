"""Loading plugins from the ``infermeter`` entry-point group, guarded, and calling them.

pluggy's own ``load_setuptools_entrypoints`` lets one broken plugin stop the
daemon; here each entry point loads on its own and a failure is a logged
warning. Built-in plugins are entry points too, so they load, list and block
exactly like third-party ones.

``collect`` calls the implementations of a hook one at a time, not through
pluggy: a plugin that raises is logged and skipped while the others' results
still come back, and each call is timed, so one that is slow is named
(Telegraf's "collection took longer than expected") and counted. The loop
itself is ``call_each``, which the SDK's ``instrument()`` uses too: it never
raises for a plugin, and the caller decides what a failure or a slow call
is worth saying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, entry_points
from typing import Any

import pluggy

from infermeter import hookspecs
from infermeter.config import CORE_OPTIONS, Option

log = logging.getLogger(__name__)

GROUP = "infermeter"
# A call slower than one agent tick at its default (agent.tick_s = 1 s) holds
# up the tick or flush that made it, and the scheduler skips the next run
# rather than queueing it: worth a warning.
SLOW_CALL_S = 1.0
# A plugin that is slow is slow every tick: say so once per (plugin, hook) in
# this long, and count every time in ``slow_calls``.
SLOW_LOG_EVERY_S = 300.0


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    hooks: tuple[str, ...]
    version: str | None
    distribution: str | None
    module: str


@dataclass(frozen=True, slots=True)
class LoadFailure:
    name: str
    error: str


@dataclass(frozen=True, slots=True)
class HookCall:
    """What one plugin's implementation of a hook gave: its result, or the error it raised."""

    plugin: str
    result: Any  # None when it raised
    error: Exception | None
    seconds: float  # time.perf_counter time the call took


def call_each(caller: pluggy.HookCaller, kwargs: Mapping[str, Any]) -> Iterator[HookCall]:
    """Call each implementation of a hook on its own, in pluggy's order, guarded.

    Wrapper implementations (``@hookimpl(wrapper=True)``, ``hookwrapper=True``)
    are skipped: they time or observe, they provide nothing. Each
    implementation is passed the arguments it names from ``kwargs``. An
    ``Exception`` it raises is caught and handed back in ``HookCall.error``,
    so the next plugin is still called: what to log, and how loudly, is the
    caller's (the agent names the plugin at error level, an instrumented
    application only warns).
    """
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        result: Any = None
        error: Exception | None = None
        start = time.perf_counter()
        try:
            result = impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as e:  # a broken plugin must not stop the others
            error = e
        yield HookCall(impl.plugin_name, result, error, time.perf_counter() - start)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what was loaded from where and what failed."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        # Reading a distribution's name parses its METADATA file: only
        # ``describe`` (the plugins command) needs it, not every start-up.
        self._dists: dict[str, Distribution | None] = {}
        self.slow_call_s = SLOW_CALL_S
        self.slow_calls: Counter[tuple[str, str]] = Counter()  # by (plugin, hook)
        self._slow_told: dict[tuple[str, str], float] = {}  # monotonic time of the last warning
        self._slow_lock = threading.Lock()  # the tick and the flush collect on two threads

    def load_entry_points(self, blocked: Iterable[str] = ()) -> None:
        blocked = set(blocked)
        for name in blocked:
            self.set_blocked(name)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            self.load_entry_point(ep, blocked)
        self.check_pending()

    def load_entry_point(self, ep: EntryPoint, blocked: Iterable[str] = ()) -> None:
        if ep.name in set(blocked) or self.get_plugin(ep.name) is not None:
            return
        try:
            plugin = ep.load()
            self.register(plugin, name=ep.name)
        except Exception as e:  # a broken plugin must not take the agent down
            log.warning("plugin %s (%s) failed to load: %s", ep.name, ep.value, e)
            self.failures.append(LoadFailure(ep.name, f"{type(e).__name__}: {e}"))
            return
        self._dists[ep.name] = ep.dist

    def block(self, names: Iterable[str]) -> None:
        """Unregister plugins disabled in config (after the file was read)."""
        for name in names:
            self.set_blocked(name)

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.list_name_plugin(), key=lambda np: np[0]):
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or ()))
            found = self._dists.get(name)
            dist = found.metadata["Name"] if found is not None else None
            version = found.version if found is not None else None
            module = getattr(plugin, "__name__", type(plugin).__module__)
            infos.append(PluginInfo(name, hooks, version, dist, module))
        return infos

    def config_options(self) -> list[Option]:
        options = list(CORE_OPTIONS)
        for batch in self.hook.infermeter_config_options():
            options.extend(batch)
        return options

    def collect(self, hook_name: str, flatten: bool = True, **kwargs: Any) -> list[Any]:
        """Call every implementation of a hook, each on its own; flatten lists they return.

        The calls do not go through pluggy, by choice: one plugin that raises
        is logged and skipped and the others' results still come back (a
        pluggy call stops at the first exception). The price is that wrapper
        implementations (``@hookimpl(wrapper=True)``, ``hookwrapper=True``)
        are not run here, and pluggy's hook monitoring does not see these
        calls. Instead each call is timed with ``time.perf_counter``: one that
        takes longer than ``slow_call_s`` is counted in ``slow_calls`` by
        (plugin, hook) and logged as a warning, once per ``SLOW_LOG_EVERY_S``
        for each (plugin, hook).
        """
        out: list[Any] = []
        for call in call_each(getattr(self.hook, hook_name), kwargs):
            if call.error is not None:
                log.error("plugin %s failed in %s", call.plugin, hook_name, exc_info=call.error)
            self._timed(call.plugin, hook_name, call.seconds)
            result = call.result
            if result is None:
                continue
            if flatten and isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
                out.extend(result)
            else:
                out.append(result)
        return out

    def _timed(self, plugin: str, hook: str, seconds: float) -> None:
        """Count and (rate-limited) log a call that took longer than ``slow_call_s``."""
        threshold = self.slow_call_s
        if seconds <= threshold:
            return
        key = (plugin, hook)
        now = time.monotonic()
        with self._slow_lock:
            self.slow_calls[key] += 1
            told = self._slow_told.get(key)
            if told is not None and now - told < SLOW_LOG_EVERY_S:
                return
            self._slow_told[key] = now
            count = self.slow_calls[key]
        log.warning(
            "plugin %s took %.3f s in %s, longer than expected (slow_call_s %g s; "
            "%d slow call(s) so far, logged at most once per %.0f min)",
            plugin,
            seconds,
            hook,
            threshold,
            count,
            SLOW_LOG_EVERY_S / 60,
        )


def make_plugin_manager(load: bool = True, blocked: Iterable[str] = ()) -> PluginManager:
    pm = PluginManager()
    if load:
        pm.load_entry_points(blocked)
    return pm
