"""ONNX Runtime: one span per ``InferenceSession.run*`` call.

Patched on the class that defines them (``Session``, the base of
``InferenceSession``), whichever of these exist in the installed version:
``run``, ``run_with_ort_values``, ``run_with_iobinding``,
``run_with_ortvaluevector`` (each runs the graph once and returns when it is
done: ORT synchronises its execution providers at the end of a run, so the
span's end is the return) and ``run_async`` (ORT calls back from its own
thread pool; the span ends when the callback is entered, and a run that
reports an error emits nothing).

Identity: ``name_session(session, name)``, else the model file's name without
its extension (``/models/resnet50.onnx`` -> ``resnet50``; the session keeps
the path it was built from in ``_model_path``), else for a session built from
bytes ``onnx-`` and a hash of the bytes (``_model_bytes``), else (a session
created from an initialised C session) ``onnx-`` and a hash of the input and
output names and shapes. Device: the first (highest-priority) execution
provider: CPU -> ``cpu``, CUDA/TensorRT -> ``cuda:<device_id>``, ROCm/MIGraphX
-> ``rocm:<device_id>``, DirectML -> ``dml:<device_id>``, others their
lower-case name. Batch: the leading dimension of the first input fed (for
IOBinding the first bound input whose shape the binding kept; for an
OrtValueVector, which shows no shapes, 1). The model's dtype and parameter
count are not visible without parsing the model, so they stay None.

A session's description is computed on its first run and kept (outside the
session, in a weak cache) until ``set_providers`` or an EP fallback replaces
its provider list. A failed run emits nothing and raises what it raised.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from time import perf_counter
from typing import Any

from infermeter.hookspecs import SpanEmitter
from infermeter.plugins.instrument import _base as base
from infermeter.plugins.instrument._base import make_span

FRAMEWORK = "onnxruntime"
# Kept by _instrumentor, beside `errors` (the failures it swallowed); read per call as a global.
_emitter: SpanEmitter | None = None
MODULE = "onnxruntime.capi.onnxruntime_inference_collection"
RUN_METHODS = (
    "run",
    "run_with_ort_values",
    "run_with_iobinding",
    "run_with_ortvaluevector",
    "run_async",
)


class _Session:
    __slots__ = ("device", "name", "providers")

    def __init__(self, name: str, device: str | None, providers: object) -> None:
        self.name = name
        self.device = device
        self.providers = providers  # the list it was computed from (identity checked)


_sessions: base.WeakIdCache[_Session] = base.WeakIdCache()
_session_entries = _sessions.entries
_names: base.WeakIdCache[str] = base.WeakIdCache()

_DEVICE_PREFIX = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "NvTensorRTRTXExecutionProvider": "cuda",
    "ROCMExecutionProvider": "rocm",
    "MIGraphXExecutionProvider": "rocm",
    "DmlExecutionProvider": "dml",
}


def name_session(session: Any, name: str) -> None:
    """Give ``session`` the model name its spans carry."""
    _names.set(session, str(name))
    _sessions.pop(session)


def provider_device(provider: str, options: dict[str, Any] | None) -> str:
    """``CUDAExecutionProvider`` with device_id 1 -> ``cuda:1``; CPU -> ``cpu``."""
    if provider == "CPUExecutionProvider":
        return "cpu"
    prefix = _DEVICE_PREFIX.get(provider)
    if prefix is None:
        return provider.removesuffix("ExecutionProvider").lower()
    device_id = (options or {}).get("device_id", "0")
    return f"{prefix}:{device_id}"


def _describe(session: Any) -> _Session:
    providers = session.__dict__.get("_providers")
    name = _names.get(session)
    if not name:
        path = session.__dict__.get("_model_path")
        data = session.__dict__.get("_model_bytes")
        if path:
            name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
        elif data:
            name = f"onnx-{base.short_hash(data)}"
        else:
            io = [(a.name, a.shape) for a in (*session.get_inputs(), *session.get_outputs())]
            name = f"onnx-{base.text_hash(io)}"
    device = None
    if providers:
        options = (session.__dict__.get("_provider_options") or {}).get(providers[0])
        device = provider_device(providers[0], options)
    return _Session(name, device, providers)


def _session_of(session: Any) -> _Session:
    entry = _session_entries.get(id(session))
    if entry is not None and entry[0]() is session:
        described = entry[1]
        if described.providers is session.__dict__.get("_providers"):
            return described
    described = _describe(session)
    _sessions.set(session, described)
    return described


def _items_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """``run(output_names, input_feed, ...)`` and ``run_with_ort_values``: the first feed."""
    feed = (
        args[1] if len(args) > 1 else kwargs.get("input_feed", kwargs.get("input_dict_ort_values"))
    )
    if isinstance(feed, dict):
        for value in feed.values():
            return base.leading_dim(value)
    return 1


def _items_iobinding(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    binding = args[0] if args else kwargs.get("iobinding")
    for kept in ("_numpy_obj_references", "_bound_inputs"):  # what the binding kept, if any
        for value in (getattr(binding, kept, None) or {}).values():
            if value is not None:
                return base.leading_dim(value)
    return 1


def _items_unknown(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return 1


_ITEMS: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], int]] = {
    "run": _items_run,
    "run_with_ort_values": _items_run,
    "run_async": _items_run,
    "run_with_iobinding": _items_iobinding,
}


def _emit(emitter: Any, session: Any, t0: float, t1: float, items: int) -> None:
    described = _session_of(session)
    emitter.emit(
        make_span(
            base.PID, described.name, t0, t1, items, {}, FRAMEWORK, described.device, None, None
        )
    )


def _make_run(name: str) -> Callable[[Any], Any]:
    items_of = _ITEMS.get(name, _items_unknown)

    def make(original: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            emitter = _emitter
            if emitter is None:
                return original(self, *args, **kwargs)
            start = perf_counter()
            result = original(self, *args, **kwargs)
            end = perf_counter()
            try:
                described = _session_of(self)
                emitter.emit_call(
                    described.name,
                    start,
                    end,
                    items_of(args, kwargs),
                    base.NO_TAGS,
                    FRAMEWORK,
                    described.device,
                    None,
                    None,
                )
            except Exception:
                _instrumentor.failed()
            return result

        return run

    return make


def _make_run_async(original: Any) -> Any:
    def run_async(
        self: Any,
        output_names: Any,
        input_feed: Any,
        callback: Any,
        user_data: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        emitter = _emitter
        if emitter is None:
            return original(self, output_names, input_feed, callback, user_data, *args, **kwargs)
        start = perf_counter()
        try:
            items = _items_run((output_names, input_feed), {})
        except Exception:
            items = 1

        def on_done(results: Any, data: Any, err: Any) -> Any:
            if not err:
                try:
                    t1 = emitter.wall_time()
                    _emit(emitter, self, t1 - (perf_counter() - start), t1, items)
                except Exception:
                    _instrumentor.failed()
            return callback(results, data, err)

        return original(self, output_names, input_feed, on_done, user_data, *args, **kwargs)

    return run_async


class _OnnxRuntimeInstrumentor(base.Instrumentor):
    """Patches the ``run*`` methods of ``InferenceSession``'s class; forgets described sessions."""

    framework = FRAMEWORK
    modules = (MODULE,)

    def install(self, module: types.ModuleType) -> None:
        session_cls = getattr(module, "InferenceSession", None)
        if session_cls is None:
            return
        for name in RUN_METHODS:
            if callable(getattr(session_cls, name, None)):
                make = _make_run_async if name == "run_async" else _make_run(name)
                self.patches.replace(session_cls, name, make)

    def forget(self) -> None:
        _sessions.clear()


_instrumentor = _OnnxRuntimeInstrumentor(globals())
patch = _instrumentor.patch
unpatch = _instrumentor.unpatch
is_patched = _instrumentor.is_patched
infermeter_instrument = _instrumentor.instrument
