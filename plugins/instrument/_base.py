"""Shared machinery of the in-process instrumentation plugins (torch, onnxruntime, litert).

Everything here runs inside the user's inference process, so two rules shape
it: the per-call path must cost as little as Python allows, and nothing may
raise into the application or change what the runtime does.

- ``make_span`` builds a :class:`~infermeter.records.Span` without the
  dataclass ``__init__``: a frozen dataclass sets each of its 14 fields
  through ``object.__setattr__`` (about 1.7 us here), while calling the slot
  descriptors directly costs about half of that. It is used only when Span is
  the plain frozen, slotted dataclass it is today (no ``__post_init__``);
  otherwise it falls back to ``Span(...)``.
- ``WeakIdCache`` keeps per-object metadata (a model's name, parameter count,
  ...) outside the object: keyed by ``id()``, dropped by a weakref callback
  when the object dies, so nothing is added to a module's ``__dict__`` (which
  ``torch.save(model)`` would pickle) and nothing is kept alive.
- ``when_imported`` runs a callback right after a module finishes importing
  (a ``sys.meta_path`` finder), so ``infermeter.instrument()`` may run before
  ``import torch`` without importing torch itself.
- ``Patches`` replaces attributes of classes and puts them back, at most once
  per attribute however often ``patch()`` is called.
- ``Instrumentor`` is what each plugin's ``patch``/``unpatch``/``is_patched``
  and ``infermeter_instrument`` are: one instance per plugin module, which
  says only which modules to watch and what to patch in each.

Timing, in every plugin: ``perf_counter()`` before and after the call, and one
``emitter.wall_time()`` after it; ``t0 = t1 - (after - before)``. One call
into the emitter instead of two, and on Linux both clocks are CLOCK_MONOTONIC.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
import types
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from infermeter.hookspecs import hookimpl
from infermeter.records import Span

if TYPE_CHECKING:
    from infermeter.hookspecs import SpanEmitter

log = logging.getLogger(__name__)

T = TypeVar("T")

# The pid goes into every span; os.getpid() per call is cheap, an attribute is
# cheaper, and a fork (gunicorn workers forked after loading the model) must
# not keep the parent's.
PID = os.getpid()


def _after_fork() -> None:
    global PID
    PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork)

# --------------------------------------------------------------------------- spans

# The tags of a call that has none: shared, read-only, never allocated per call.
NO_TAGS: Mapping[str, str] = types.MappingProxyType({})

SpanFactory = Callable[..., Span]
_SPAN_ARGS = (
    "pid",
    "model",
    "t0",
    "t1",
    "items",
    "tags",
    "framework",
    "device",
    "dtype",
    "parameters",
)


def _slow_span(
    pid: int,
    model: str,
    t0: float,
    t1: float,
    items: int,
    tags: Mapping[str, str],
    framework: str | None,
    device: str | None,
    dtype: str | None,
    parameters: int | None,
) -> Span:
    return Span(
        pid=pid,
        model=model,
        t0=t0,
        t1=t1,
        items=items,
        tags=tags,
        framework=framework,
        device=device,
        dtype=dtype,
        parameters=parameters,
    )


def _build_fast_span() -> SpanFactory | None:
    """Compile a constructor that fills Span's slots directly, or None when unsafe."""
    if not dataclasses.is_dataclass(Span) or hasattr(Span, "__post_init__"):
        return None
    params = Span.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in Span.__dict__:
        return None
    fields = dataclasses.fields(Span)
    names = {f.name for f in fields}
    if not set(_SPAN_ARGS) <= names:
        return None
    ns: dict[str, Any] = {"_new": object.__new__, "Span": Span}
    lines = [f"def make_span({', '.join(_SPAN_ARGS)}):", "    s = _new(Span)"]
    for f in fields:
        slot = Span.__dict__.get(f.name)
        if type(slot) is not types.MemberDescriptorType:
            return None
        ns[f"_set_{f.name}"] = slot.__set__
        if f.name in _SPAN_ARGS:
            value = f.name
        elif f.default is not dataclasses.MISSING:
            ns[f"_d_{f.name}"] = f.default
            value = f"_d_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"_f_{f.name}"] = f.default_factory
            value = f"_f_{f.name}()"
        else:
            return None
        lines.append(f"    _set_{f.name}(s, {value})")
    lines.append("    return s")
    exec("\n".join(lines), ns)  # generated from Span's own field list, nothing external
    return ns["make_span"]  # type: ignore[no-any-return]


make_span: SpanFactory = _build_fast_span() or _slow_span

# --------------------------------------------------------------------------- helpers


def leading_dim(value: Any) -> int:
    """The batch size a tensor-like value suggests: its first dimension, else 1.

    Works for numpy arrays, torch tensors (``shape`` attribute) and ORT
    OrtValues (``shape()`` method); symbolic, zero or unknown sizes give 1.
    """
    shape = getattr(value, "shape", None)
    if shape is None:
        return 1
    if callable(shape):
        shape = shape()
    if not shape:
        return 1
    first = shape[0]
    try:
        n = int(first)
    except (TypeError, ValueError):
        return 1
    return n if n > 0 else 1


def short_hash(data: bytes | bytearray | memoryview, sample_over: int = 64 << 20) -> str:
    """A stable 8-hex-digit id for model bytes (same bytes, same id, any process).

    Models larger than ``sample_over`` are hashed on their length plus the
    first and last 8 MiB, so that naming a multi-gigabyte model does not stall
    its first call for seconds; two different models of identical size whose
    first and last 8 MiB agree would share a name.
    """
    view = memoryview(data).cast("B")
    h = hashlib.sha256()
    if len(view) > sample_over:
        h.update(len(view).to_bytes(8, "little"))
        h.update(view[: 8 << 20])
        h.update(view[-(8 << 20) :])
    else:
        h.update(view)
    return h.hexdigest()[:8]


def text_hash(parts: Sequence[object]) -> str:
    """Stable short hash of a description (shapes, names): never Python's hash()."""
    return hashlib.sha256(repr(tuple(parts)).encode()).hexdigest()[:8]


class WeakIdCache(Generic[T]):
    """Per-object values kept beside the object, gone when the object dies.

    ``get`` is a dict lookup plus one weakref call (the weakref check guards
    against an id reused by a new object before the callback ran).
    """

    __slots__ = ("__weakref__", "entries")

    def __init__(self) -> None:
        # id -> (weakref, value). Public so that a hot path may inline ``get``;
        # the dict object itself is never replaced.
        self.entries: dict[int, tuple[weakref.ref[Any], T]] = {}

    def get(self, obj: object) -> T | None:
        entry = self.entries.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        return None

    def set(self, obj: object, value: T) -> None:
        key = id(obj)
        data = self.entries
        self_ref = weakref.ref(self)

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            cache = self_ref()
            if cache is not None:
                entry = cache.entries.get(key)
                if entry is not None and entry[0] is ref:
                    del cache.entries[key]

        data[key] = (weakref.ref(obj, forget), value)

    def pop(self, obj: object) -> None:
        entry = self.entries.get(id(obj))
        if entry is not None and entry[0]() is obj:
            del self.entries[id(obj)]

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


# --------------------------------------------------------------------------- patches


class Patches:
    """Attributes replaced on classes, and how to put them back.

    A wrapper carries ``__infermeter_original__``; ``replace`` skips an
    attribute that already holds one, so patching twice never wraps twice,
    even across two copies of a plugin module.
    """

    def __init__(self) -> None:
        self._done: list[tuple[type, str, Any]] = []

    def replace(self, cls: type, name: str, make: Callable[[Any], Callable[..., Any]]) -> bool:
        """Set ``cls.name = make(original)`` where ``name`` is defined in ``cls``'s MRO."""
        owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
        if owner is None:
            return False
        original = owner.__dict__[name]
        if getattr(original, "__infermeter_original__", None) is not None:
            return False
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        wrapper.__infermeter_original__ = original  # type: ignore[attr-defined]
        setattr(owner, name, wrapper)
        self._done.append((owner, name, original))
        return True

    def restore(self) -> None:
        while self._done:
            owner, name, original = self._done.pop()
            setattr(owner, name, original)

    def __bool__(self) -> bool:
        return bool(self._done)


# --------------------------------------------------------------------------- import hooks


class _ChainedLoader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks; the module keeps the real loader."""

    def __init__(self, loader: importlib.abc.Loader, finder: _PostImportFinder) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # Put the real loader back before the module's code can look at it.
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        self.loader.exec_module(module)
        self.finder.fire(module.__name__, module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: notices the import of a watched module name."""

    def __init__(self) -> None:
        self.watch: dict[str, list[Callable[[types.ModuleType], None]]] = {}
        self._resolving: set[str] = set()
        self.lock = threading.RLock()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.watch or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders, in order
        except Exception:
            return None
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ChainedLoader(spec.loader, self)
        return spec

    def fire(self, name: str, module: types.ModuleType) -> None:
        with self.lock:
            callbacks = self.watch.pop(name, [])
        for callback in callbacks:
            try:
                callback(module)
            except Exception:  # an import of torch must never fail because of us
                log.debug("post-import hook for %s failed", name, exc_info=True)


_finder = _PostImportFinder()


def when_imported(name: str, callback: Callable[[types.ModuleType], None]) -> bool:
    """Call ``callback(module)`` now if ``name`` is imported, else right after its import.

    Returns False when the module is neither imported nor installed (nothing
    to wait for). Only the top-level package is looked up, which reads
    directory listings and imports nothing.
    """
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return True
    top = name.partition(".")[0]
    try:
        if top not in sys.modules and importlib.util.find_spec(top) is None:
            return False
    except (ImportError, ValueError):
        return False
    with _finder.lock:
        callbacks = _finder.watch.setdefault(name, [])
        if callback not in callbacks:
            callbacks.append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
    return True


def cancel_when_imported(callback: Callable[[types.ModuleType], None]) -> None:
    """Forget ``callback`` for every name; remove the finder when nothing is watched.

    (A finder whose names have all been imported stays until then: its cost
    is one dict lookup per import.)
    """
    with _finder.lock:
        for name in list(_finder.watch):
            callbacks = [c for c in _finder.watch[name] if c != callback]
            if callbacks:
                _finder.watch[name] = callbacks
            else:
                del _finder.watch[name]
        if not _finder.watch and _finder in sys.meta_path:
            # A new list, not list.remove(): another thread's import may be iterating
            # the old one, and removing an item under it would skip the next finder.
            sys.meta_path = [f for f in sys.meta_path if f is not _finder]


def watched() -> list[str]:
    """Module names still waiting for their import (for tests and diagnostics)."""
    with _finder.lock:
        return sorted(_finder.watch)


# --------------------------------------------------------------------------- instrumentor


class Instrumentor(ABC):
    """One runtime's instrumentation, behind a plugin's ``patch``/``unpatch``/``is_patched``.

    The idea of OpenTelemetry's ``BaseInstrumentor``: the plugin subclasses it
    once, names the modules to watch (``modules``) and what to patch in each
    (``install``), and its module-level ``patch``, ``unpatch``, ``is_patched``
    and ``infermeter_instrument`` are one instance's methods, so the import
    hooks, the lock, the restore and the hook's guard are written once.
    Unlike ``BaseInstrumentor``, patching again is not refused: ``Patches``
    never wraps twice, and the new emitter replaces the old one.

    The emitter and the failure count live in the plugin module's globals
    (``namespace``: pass ``globals()``), as ``_emitter`` and ``errors``. A
    wrapper reads ``_emitter`` on every call, and a module global is the
    cheapest read there is (one cached LOAD_GLOBAL); ``self.emitter`` would
    add an attribute load to every instrumented call.
    """

    framework: str = ""  # the runtime, in log messages
    modules: tuple[str, ...] = ()  # whose import (now or later) runs ``install``

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        namespace["_emitter"] = None
        namespace["errors"] = 0  # instrumentation failures swallowed (the call went on)
        self.log = logging.getLogger(str(namespace.get("__name__", __name__)))
        self.patches = Patches()
        self.lock = threading.Lock()
        # One bound method, registered with when_imported and cancelled by unpatch.
        self._on_import = self._install

    @abstractmethod
    def install(self, module: types.ModuleType) -> None:
        """Patch what ``module`` (one of ``modules``) defines, with ``self.patches``.

        Runs under ``self.lock``, at ``patch()`` when the module is already
        imported, else right after its import.
        """

    def forget(self) -> None:  # noqa: B027  (optional: a runtime may cache nothing)
        """Drop what was learnt about the runtime's objects (caches); runs in ``unpatch``.

        Runs under ``self.lock``, after the originals are back.
        """

    def _install(self, module: types.ModuleType) -> None:
        with self.lock:
            self.install(module)

    def patch(self, emitter: SpanEmitter) -> bool:
        """Instrument the watched modules imported now, and each one imported later.

        Idempotent: a second call patches nothing again and only replaces the
        emitter. False when none of ``modules`` is installed (nothing to wait for).
        """
        self.namespace["_emitter"] = emitter
        found = [when_imported(name, self._on_import) for name in self.modules]
        return any(found)

    def unpatch(self) -> None:
        """Put the originals back and forget cached objects and pending import hooks."""
        with self.lock:
            cancel_when_imported(self._on_import)
            self.patches.restore()
            self.namespace["_emitter"] = None
            self.forget()

    def is_patched(self) -> bool:
        return bool(self.patches)

    @hookimpl
    def instrument(self, emitter: SpanEmitter) -> bool | None:
        """The plugin's ``infermeter_instrument``: ``patch``, never raising into the application.

        True when patched or waiting for an import; None (no answer) when the
        runtime is not installed or patching failed, which is logged. A hook
        implementation already: the plugin module binds it as
        ``infermeter_instrument = _instrumentor.instrument`` (pluggy drops
        ``self`` from a bound method's arguments).
        """
        try:
            return self.patch(emitter) or None
        except Exception:
            self.log.warning("could not instrument %s", self.framework, exc_info=True)
            return None

    def failed(self) -> None:
        """Count a failure of the instrumentation that the call itself survived.

        Called from an ``except`` block; the first one is logged (at debug,
        with its traceback), the rest only counted: a broken emitter must not
        flood the application's log at every call.
        """
        errors = self.namespace["errors"] + 1
        self.namespace["errors"] = errors
        if errors == 1:
            self.log.debug(
                "%s instrumentation failed; the call went on", self.framework, exc_info=True
            )
