"""Loading plugins from the ``infermeter`` entry-point group, guarded.

pluggy's own ``load_setuptools_entrypoints`` lets one broken plugin stop the
daemon; here each entry point loads on its own and a failure is a logged
warning. Built-in plugins are entry points too, so they load, list and block
exactly like third-party ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, entry_points
from typing import Any

import pluggy

from infermeter import hookspecs
from infermeter.config import CORE_OPTIONS, Option

log = logging.getLogger(__name__)

GROUP = "infermeter"


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


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what was loaded from where and what failed."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        # Reading a distribution's name parses its METADATA file: only
        # ``describe`` (the plugins command) needs it, not every start-up.
        self._dists: dict[str, Distribution | None] = {}

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
        """Call a hook, isolating each plugin's failure; flatten lists it returns."""
        out: list[Any] = []
        caller = getattr(self.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue  # wrappers time or observe; they are not providers
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
                continue
            if result is None:
                continue
            if flatten and isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
                out.extend(result)
            else:
                out.append(result)
        return out


def make_plugin_manager(load: bool = True, blocked: Iterable[str] = ()) -> PluginManager:
    pm = PluginManager()
    if load:
        pm.load_entry_points(blocked)
    return pm
