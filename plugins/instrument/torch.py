"""PyTorch: one span per call of a root model, timed to the end of its device work.

Root detection. ``torch.nn.Module.__call__`` is replaced by a function that
first reads a thread-local flag. When an instrumented call is already running
on this thread (a submodule, or a model called from inside another model's
forward) the flag is set and the function does exactly what the original
``Module._wrapped_call_impl`` does, inlined, so a submodule call costs one
thread-local attribute read and no extra Python frame. Measured per submodule
call on this project's 2-core CPU machine (benchmarks/bench_instrument.py,
a model of 200 submodules): ~0.1 us for this design, ~0.28 us for a wrapper
that calls the original, ~1.2 us for a global forward hook
(``register_module_forward_hook``, rejected: it sends every submodule down
torch's slow hook path). The inlined body is used only when
``Module.__call__`` is still ``_wrapped_call_impl`` and that function reads
exactly ``_compiled_call_impl`` and ``_call_impl``; otherwise the submodule
path calls the original, which is always correct.

A root call (flag clear) sets the flag, calls the original and emits a span:
model identity (``name_model``, else an ``infermeter_name`` attribute set
before the model's first call, else
class name plus a hash of parameter names and shapes, computed once per module
object), parameter count, dtype and device of the first parameter, batch size
from the first tensor argument's leading dimension (the length of a leading
list of tensors, as torchvision detection models take; else 1). Modules with
no parameters and no buffers (transforms, activations, losses called on their
own) are not models and emit nothing unless named.

CUDA is asynchronous: for a model whose first parameter is on a CUDA device,
timing events are recorded on the current stream around the call and the span
goes to ``emitter.emit_pending`` with a ``finished()`` that the emitter's
thread polls (``end.query()``), never the application; its end is
``t0 + start.elapsed_time(end)``, which assumes the stream was idle at the
call (else the span ends early by the queue's delay). Calls during CUDA graph
capture emit nothing (recording timed events there would break the capture).
A CPU model never touches ``torch.cuda``.

Tracing is not inference: while torch.compile/torch.export trace
(``torch.compiler.is_compiling()``, which dynamo folds to True, so a
``fullgraph=True`` compile sees no graph break) or ``torch.jit.trace`` runs,
nothing is emitted; a model called inside a compiled function is part of that
function's graph and emits nothing. A ``torch.compile(model)`` module is
named after the model it wraps; a ScriptModule after its ``original_name``.

Not covered: ``DataParallel`` runs replicas in worker threads, which therefore
emit their own spans besides the wrapper's; MPS/XPU spans end when the launch
returns. A failed call emits no span; the exception propagates unchanged.
"""

from __future__ import annotations

import threading
import types
from time import perf_counter
from typing import Any

from infermeter.hookspecs import SpanEmitter
from infermeter.plugins.instrument import _base as base
from infermeter.plugins.instrument._base import make_span

FRAMEWORK = "torch"
# Kept by _instrumentor, beside `errors` (the failures it swallowed); read per call as a global.
_emitter: SpanEmitter | None = None
_torch: Any = None  # the torch module, once seen
_Tensor: Any = type(None)  # torch.Tensor, once seen


def _never() -> bool:
    return False


_is_compiling: Any = _never  # torch.compiler.is_compiling once torch is seen
_is_tracing: Any = _never  # torch._C._is_tracing (35 ns; torch.jit.is_tracing wraps it)


class _Active(threading.local):
    active = False


_tls = _Active()


class _Model:
    """What a root module's spans say about it; computed once per module object.

    ``device``/``dtype`` are the first parameter's, as names; a call re-reads
    them only when that tensor is no longer a CPU tensor of the same dtype
    (``model.to(...)``, ``.half()``), which costs two attribute reads.
    """

    __slots__ = ("device", "dtype", "dtype_obj", "first", "name", "parameters")

    def __init__(self, name: str, parameters: int | None, first: Any) -> None:
        self.name = name
        self.parameters = parameters
        self.first = first  # first parameter (or buffer); None for a named parameter-free module
        self.device: str | None = None
        self.dtype: str | None = None
        self.dtype_obj: Any = None
        if first is not None:
            self.refresh()

    def refresh(self) -> None:
        first = self.first
        self.device, self.dtype_obj = str(first.device), first.dtype
        self.dtype = str(first.dtype).removeprefix("torch.")


_SKIP = _Model("", None, None)  # cached for modules that are not models
_models: base.WeakIdCache[_Model] = base.WeakIdCache()
_model_entries = _models.entries  # the cache's dict, read inline on the hot path
_names: base.WeakIdCache[str] = base.WeakIdCache()


def name_model(model: Any, name: str) -> None:
    """Give ``model`` the name its spans carry (instead of class name + shape hash)."""
    _names.set(model, str(name))
    _models.pop(model)


def _describe(module: Any) -> _Model | None:
    inner = module
    if type(module).__name__ == "OptimizedModule":  # torch.compile(model): name the model
        inner = module.__dict__.get("_modules", {}).get("_orig_mod", module)
    if getattr(inner, "has_uninitialized_params", None) and inner.has_uninitialized_params():
        return None  # lazy module before its first forward: describe it next time
    params = list(inner.named_parameters())
    first = params[0][1] if params else next(inner.buffers(), None)
    name = _names.get(module) or _names.get(inner) or inner.__dict__.get("infermeter_name")
    if first is None and not name:
        return _SKIP
    if not name:
        cls = getattr(inner, "original_name", None) or type(inner).__name__  # ScriptModule
        shapes = [(n, tuple(p.shape)) for n, p in params]
        name = f"{cls}-{base.text_hash(shapes)}"
    count = sum(int(p.numel()) for _, p in params)
    return _Model(str(name), count, first)


def _model_of(module: Any) -> _Model | None:
    model = _models.get(module)
    if model is None:
        try:
            model = _describe(module)
        except Exception:
            _instrumentor.failed()
            model = _SKIP
        if model is None:
            return None
        _models.set(module, model)
    return None if model is _SKIP else model


def _items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Leading dimension of the first tensor argument (or length of a leading tensor list)."""
    tensor = _torch.Tensor
    for value in (*args, *kwargs.values()):
        if isinstance(value, tensor):
            shape = value.shape
            return int(shape[0]) if shape else 1
        if isinstance(value, list | tuple) and value and isinstance(value[0], tensor):
            return len(value)
    return 1


def _cuda_call(
    original: Any,
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    model: _Model,
    emitter: Any,
) -> Any:
    """The CUDA variant: the span ends when the stream reaches the end event."""
    cuda = _torch.cuda
    try:
        stream = cuda.current_stream(model.first.device)
        if cuda.is_current_stream_capturing():
            begin = done = None
        else:
            begin, done = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            begin.record(stream)
    except Exception:
        begin = done = None
        _instrumentor.failed()
    _tls.active = True
    try:
        start = perf_counter()
        result = original(module, *args, **kwargs)
        end = perf_counter()
    finally:
        _tls.active = False
    if begin is None or done is None:
        return result
    try:
        done.record(stream)
        t_return: float = emitter.wall_time()
        t0 = t_return - (end - start)
        if model.first.dtype is not model.dtype_obj or model.device != str(model.first.device):
            model.refresh()
        span = make_span(
            base.PID,
            model.name,
            t0,
            t_return,
            _items(args, kwargs),
            {},
            FRAMEWORK,
            model.device,
            model.dtype,
            model.parameters,
        )

        def finished() -> float | None:
            try:
                if not done.query():
                    return None
                return float(t0 + begin.elapsed_time(done) / 1000.0)
            except Exception:
                return t_return

        emitter.emit_pending(span, finished)
    except Exception:
        _instrumentor.failed()
    return result


def _can_inline(module_cls: type) -> bool:
    """Whether ``Module.__call__`` is the two-branch ``_wrapped_call_impl`` we inline."""
    call = module_cls.__dict__.get("__call__")
    code = getattr(call, "__code__", None)
    return (
        call is not None
        and call is module_cls.__dict__.get("_wrapped_call_impl")
        and code is not None
        and set(code.co_names) == {"_compiled_call_impl", "_call_impl"}
    )


def _make_call(original: Any, inline: bool) -> Any:
    """The replacement ``Module.__call__``, one function so that a root call has one frame.

    ``inline``: the submodule path runs ``_wrapped_call_impl``'s body itself
    (see ``_can_inline``); else it calls ``original``.
    """

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _tls.active:  # a submodule, or a model called inside a model's forward
            if inline:
                if self._compiled_call_impl is not None:
                    return self._compiled_call_impl(*args, **kwargs)
                return self._call_impl(*args, **kwargs)
            return original(self, *args, **kwargs)
        # A root call. Written for speed: cache lookup, the usual model(x) batch
        # and the device check are inline, not helper calls (~50 ns each).
        emitter = _emitter
        # Under torch.compile/export tracing (dynamo folds is_compiling() to True)
        # or torch.jit.trace the call is traced, not run: add nothing to the graph.
        if emitter is None or _is_compiling() or _is_tracing():
            return original(self, *args, **kwargs)
        entry = _model_entries.get(id(self))
        model: _Model | None
        if entry is not None and entry[0]() is self:
            model = None if entry[1] is _SKIP else entry[1]
        else:
            model = _model_of(self)
        if model is None:
            return original(self, *args, **kwargs)
        first = model.first
        if first is not None and first.is_cuda:
            return _cuda_call(original, self, args, kwargs, model, emitter)
        _tls.active = True
        try:
            start = perf_counter()
            result = original(self, *args, **kwargs)
            end = perf_counter()
        finally:
            _tls.active = False
        try:
            if first is not None and (first.dtype is not model.dtype_obj or not first.is_cpu):
                model.refresh()
            x = args[0] if args else None
            if isinstance(x, _Tensor):
                shape = x.shape
                items = shape[0] if shape else 1
            else:
                items = _items(args, kwargs)
            emitter.emit_call(
                model.name,
                start,
                end,
                items,
                base.NO_TAGS,
                FRAMEWORK,
                model.device,
                model.dtype,
                model.parameters,
            )
        except Exception:
            _instrumentor.failed()
        return result

    return __call__


class _TorchInstrumentor(base.Instrumentor):
    """Patches ``torch.nn.Module.__call__`` once torch is imported; forgets described models."""

    framework = FRAMEWORK
    modules = ("torch",)

    def install(self, torch: types.ModuleType) -> None:
        global _torch, _Tensor, _is_compiling, _is_tracing
        _torch, _Tensor = torch, torch.Tensor
        compiler = getattr(torch, "compiler", None)
        _is_compiling = getattr(compiler, "is_compiling", _never)
        _is_tracing = getattr(torch._C, "_is_tracing", None) or torch.jit.is_tracing
        module_cls = torch.nn.Module
        inline = _can_inline(module_cls)
        self.patches.replace(module_cls, "__call__", lambda original: _make_call(original, inline))

    def forget(self) -> None:
        _models.clear()
        _tls.active = False


_instrumentor = _TorchInstrumentor(globals())
patch = _instrumentor.patch
unpatch = _instrumentor.unpatch
is_patched = _instrumentor.is_patched
infermeter_instrument = _instrumentor.instrument
