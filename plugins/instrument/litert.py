"""LiteRT / TFLite: one span per ``Interpreter.invoke()`` and per signature-runner call.

The same ``Interpreter`` / ``SignatureRunner`` API ships as
``ai_edge_litert.interpreter`` (LiteRT), ``tflite_runtime.interpreter`` (the
older standalone wheel) and ``tensorflow.lite.python.interpreter``
(``tf.lite.Interpreter``); each that is imported (or, once imported later) is
patched. ``SignatureRunner.__call__`` invokes the native interpreter directly,
not through ``Interpreter.invoke``, so it is patched too and the two never
count the same run twice. Both run synchronously on the calling thread (a
delegate's work included), so the span ends at the return.

Identity: ``name_interpreter(interp, name)``, else the model file's name
without extension (the interpreter does not keep ``model_path``, so
``Interpreter.__init__`` is wrapped to note it), else ``tflite-`` and a hash
of ``model_content``, else (an interpreter created before patching, from a
file) ``tflite-`` and a hash of its inputs', outputs' and signatures'
names and shapes. Signature-runner spans carry the tag ``signature``.

Batch: for ``invoke`` the first input tensor's leading dimension, read with
``get_input_details()`` (a few microseconds) once per interpreter and read
again only after ``resize_tensor_input`` or a signature-runner call (which
resizes inputs itself); for a signature runner the leading dimension of the
first input array passed. Device: ``cpu``, or ``delegate:<library>`` when the
interpreter was given delegates (GPU, Edge TPU, ...). dtype and parameter
count stay None (the Python API does not tell weights from activations).

The interpreter refuses to run while anything else holds its native wrapper
(``_ensure_safe`` counts references), so nothing here ever keeps a reference
to ``interpreter._interpreter``.
"""

from __future__ import annotations

import os
import types
from time import perf_counter
from typing import Any

from infermeter.hookspecs import SpanEmitter
from infermeter.plugins.instrument import _base as base

FRAMEWORK = "litert"
# Kept by _instrumentor, beside `errors` (the failures it swallowed); read per call as a global.
_emitter: SpanEmitter | None = None
MODULES = (
    "ai_edge_litert.interpreter",
    "tflite_runtime.interpreter",
    "tensorflow.lite.python.interpreter",
)


class _Model:
    __slots__ = ("batch", "device", "name")

    def __init__(self, name: str, device: str | None) -> None:
        self.name = name
        self.device = device
        self.batch: int | None = None  # None: read it again at the next invoke


_models: base.WeakIdCache[_Model] = base.WeakIdCache()
_model_entries = _models.entries
_paths: base.WeakIdCache[str] = base.WeakIdCache()  # model_path given to __init__
_names: base.WeakIdCache[str] = base.WeakIdCache()


def name_interpreter(interpreter: Any, name: str) -> None:
    """Give ``interpreter`` (and its signature runners) the model name its spans carry."""
    _names.set(interpreter, str(name))
    _models.pop(interpreter)


def _device(interpreter: Any) -> str:
    delegates = interpreter.__dict__.get("_delegates") or []
    if not delegates:
        return "cpu"
    library = getattr(getattr(delegates[0], "_library", None), "_name", None) or ""
    stem = os.path.basename(str(library)).split(".")[0].removeprefix("lib")
    return f"delegate:{stem}" if stem else "delegate"


def _describe(interpreter: Any) -> _Model:
    name = _names.get(interpreter)
    if not name:
        path = _paths.get(interpreter)
        content = interpreter.__dict__.get("_model_content")
        if path:
            name = os.path.splitext(os.path.basename(path))[0]
        elif content:
            name = f"tflite-{base.short_hash(content)}"
        else:
            io = [
                (d["name"], tuple(int(n) for n in d["shape"]))
                for d in (*interpreter.get_input_details(), *interpreter.get_output_details())
            ]
            name = f"tflite-{base.text_hash([io, sorted(interpreter.get_signature_list())])}"
    return _Model(name, _device(interpreter))


def _model_of(interpreter: Any) -> _Model:
    entry = _model_entries.get(id(interpreter))
    if entry is not None and entry[0]() is interpreter:
        return entry[1]
    model = _describe(interpreter)
    _models.set(interpreter, model)
    return model


def _input_batch(interpreter: Any) -> int:
    details = interpreter.get_input_details()
    if not details or len(details[0]["shape"]) == 0:
        return 1
    n = int(details[0]["shape"][0])
    return n if n > 0 else 1


def _make_init(original: Any) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            path = kwargs.get("model_path", args[0] if args else None)
            if path:
                _paths.set(self, os.fspath(path))
        except Exception:
            _instrumentor.failed()

    return __init__


def _make_invoke(original: Any) -> Any:
    def invoke(self: Any) -> Any:
        emitter = _emitter
        if emitter is None:
            return original(self)
        start = perf_counter()
        result = original(self)
        end = perf_counter()
        try:
            model = _model_of(self)
            batch = model.batch
            if batch is None:
                batch = model.batch = _input_batch(self)
            emitter.emit_call(
                model.name, start, end, batch, base.NO_TAGS, FRAMEWORK, model.device, None, None
            )
        except Exception:
            _instrumentor.failed()
        return result

    return invoke


def _make_resize(original: Any) -> Any:
    def resize_tensor_input(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        model = _models.get(self)
        if model is not None:
            model.batch = None
        return result

    return resize_tensor_input


def _make_runner_call(original: Any) -> Any:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        emitter = _emitter
        if emitter is None:
            return original(self, *args, **kwargs)
        start = perf_counter()
        result = original(self, *args, **kwargs)
        end = perf_counter()
        try:
            model = _model_of(self.__dict__["_interpreter"])
            model.batch = None  # the runner resized the interpreter's inputs
            items = base.leading_dim(next(iter(kwargs.values()))) if kwargs else 1
            tags = {"signature": str(self.__dict__.get("_signature_key"))}
            emitter.emit_call(
                model.name, start, end, items, tags, FRAMEWORK, model.device, None, None
            )
        except Exception:
            _instrumentor.failed()
        return result

    return __call__


class _LiteRtInstrumentor(base.Instrumentor):
    """Patches ``Interpreter`` and ``SignatureRunner`` in each module that defines them."""

    framework = FRAMEWORK
    modules = MODULES

    def install(self, module: types.ModuleType) -> None:
        interpreter = getattr(module, "Interpreter", None)
        runner = getattr(module, "SignatureRunner", None)
        if isinstance(interpreter, type):
            self.patches.replace(interpreter, "__init__", _make_init)
            self.patches.replace(interpreter, "invoke", _make_invoke)
            self.patches.replace(interpreter, "resize_tensor_input", _make_resize)
        if isinstance(runner, type):
            self.patches.replace(runner, "__call__", _make_runner_call)

    def forget(self) -> None:
        _models.clear()


_instrumentor = _LiteRtInstrumentor(globals())
patch = _instrumentor.patch
unpatch = _instrumentor.unpatch
is_patched = _instrumentor.is_patched
infermeter_instrument = _instrumentor.instrument
