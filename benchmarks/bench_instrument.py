"""What instrumentation adds to one model call: torch, ONNX Runtime, LiteRT on the CPU.

Not a test: run it by hand and read the numbers.

    python benchmarks/bench_instrument.py [--rounds 40] [--block 500]

For each runtime a tiny model is called in alternating blocks, uninstrumented
and instrumented (patched between blocks, first call of each block dropped),
each call timed on its own with ``perf_counter_ns``. The added cost printed is
the instrumented median (p99) minus the uninstrumented median (p99). Spans go
to the real ``infermeter.spans.emitter.Emitter`` with no agent listening (its
thread drops them as "agent absent" every 0.1 s), and, to isolate the
plugins' own cost, to an emitter whose ``emit`` appends to a bounded deque.

The torch section also measures the price per *submodule* call of the
root-detection designs: the inlined thread-local check (what the plugin
does), a wrapper that calls the original ``Module.__call__``, and a global
forward hook (``register_module_forward_hook``, rejected), on a model of
one Linear and 200 Identity submodules.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infermeter.plugins.instrument import _base as _instrument
from infermeter.records import Span

ROOT = Path(__file__).resolve().parent.parent
TFLITE = ROOT / "tests" / "fixtures" / "models" / "tiny_fc.tflite"


class DequeEmitter:
    """The cheapest honest emitter: a bounded deque, no thread, no context."""

    def __init__(self) -> None:
        self.spans: deque[Span] = deque(maxlen=10_000)
        self._offset = time.time() - time.monotonic()

    def wall_time(self) -> float:
        return self._offset + time.monotonic()

    def emit(self, span: Span) -> None:
        self.spans.append(span)

    def emit_pending(self, span: Span, finished: Callable[[], float | None]) -> None:
        self.spans.append(span)

    def emit_call(self, *fields: Any) -> None:
        self.spans.append(fields)  # type: ignore[arg-type]


def real_emitter(tmp: str) -> Any:
    try:
        from infermeter.spans.emitter import Emitter
    except ImportError:
        return None
    return Emitter(str(Path(tmp) / "nobody-listens.sock"))


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def compare(
    call: Callable[[], Any],
    patch: Callable[[], Any],
    unpatch: Callable[[], Any],
    rounds: int,
    block: int,
) -> tuple[list[int], list[int]]:
    """Per-call ns, uninstrumented and instrumented, in interleaved blocks."""
    clock = time.perf_counter_ns
    plain: list[int] = []
    inst: list[int] = []
    for _ in range(rounds):
        for instrumented, out in ((False, plain), (True, inst)):
            (patch if instrumented else unpatch)()
            call()  # warm: first call describes the model
            for _ in range(block):
                t = clock()
                call()
                out.append(clock() - t)
    unpatch()
    return plain, inst


def report(label: str, plain: list[int], inst: list[int]) -> None:
    pm, p99 = statistics.median(plain) / 1000, pct(plain, 0.99)
    im, i99 = statistics.median(inst) / 1000, pct(inst, 0.99)
    print(
        f"  {label:<34} plain {pm:8.2f} / {p99:8.2f}   instrumented {im:8.2f} / {i99:8.2f}"
        f"   added {im - pm:6.2f} / {i99 - p99:6.2f}"
    )


def bench_torch(emitters: dict[str, Any], rounds: int, block: int) -> None:
    import torch
    from torch import nn

    from infermeter.plugins.instrument import torch as plugin

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 16)
    print(
        "torch: Sequential(Linear 16x16, ReLU, Linear 16x4), batch 1, inference_mode "
        "(median / p99, us per call)"
    )
    with torch.inference_mode():
        for name, emitter in emitters.items():
            plain, inst = compare(
                lambda: model(x), lambda e=emitter: plugin.patch(e), plugin.unpatch, rounds, block
            )
            report(f"emitter={name}", plain, inst)

        deep = nn.Sequential(nn.Linear(4, 4), *[nn.Identity() for _ in range(200)]).eval()
        y = torch.randn(1, 4)
        emitter = DequeEmitter()
        print("torch submodule cost, 1 Linear + 200 Identity (us per submodule call, median):")

        def per_sub(patch: Callable[[], Any], unpatch: Callable[[], Any]) -> float:
            plain, inst = compare(lambda: deep(y), patch, unpatch, max(4, rounds // 4), block // 5)
            return (statistics.median(inst) - statistics.median(plain)) / 1000 / 201

        inline = per_sub(lambda: plugin.patch(emitter), plugin.unpatch)
        can_inline = plugin._can_inline
        plugin._can_inline = lambda cls: False  # type: ignore[assignment]
        try:
            wrapped = per_sub(lambda: plugin.patch(emitter), plugin.unpatch)
        finally:
            plugin._can_inline = can_inline  # type: ignore[assignment]
        handles: list[Any] = []

        def hook_on() -> None:
            if not handles:
                hook = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
                handles.append(hook)

        def hook_off() -> None:
            while handles:
                handles.pop().remove()

        hooked = per_sub(hook_on, hook_off)
        print(f"  inlined thread-local check (used) {inline:6.3f}")
        print(f"  wrapper calling the original      {wrapped:6.3f}")
        print(f"  global forward hook (rejected)    {hooked:6.3f}")


def tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], w.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def bench_onnxruntime(emitters: dict[str, Any], rounds: int, block: int, tmp: str) -> None:
    import onnxruntime as ort

    from infermeter.plugins.instrument import onnxruntime as plugin

    path = Path(tmp) / "tiny.onnx"
    tiny_onnx(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.ones((1, 4), np.float32)}
    print("onnxruntime: MatMul 4x3, batch 1, InferenceSession.run (median / p99, us per call)")
    for name, emitter in emitters.items():
        plain, inst = compare(
            lambda: sess.run(None, feed),
            lambda e=emitter: plugin.patch(e),
            plugin.unpatch,
            rounds,
            block,
        )
        report(f"emitter={name}", plain, inst)


def bench_litert(emitters: dict[str, Any], rounds: int, block: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from infermeter.plugins.instrument import litert as plugin

    interp = Interpreter(model_path=str(TFLITE))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], np.ones((1, 4), np.float32))
    print("litert: FULLY_CONNECTED 4x3, batch 1, Interpreter.invoke (median / p99, us per call)")
    for name, emitter in emitters.items():
        # a lambda, not interp.invoke: a bound method taken before patching would stay unpatched
        plain, inst = compare(
            lambda: interp.invoke(),
            lambda e=emitter: plugin.patch(e),
            plugin.unpatch,
            rounds,
            block,
        )
        report(f"emitter={name}", plain, inst)


def bench_parts(n: int = 200_000) -> None:
    clock = time.perf_counter_ns
    args = (1, "m", 1.0, 2.0, 1, {}, "torch", "cpu", "float32", 10)

    def each(fn: Callable[[], Any]) -> float:
        t = clock()
        for _ in range(n):
            fn()
        return (clock() - t) / n / 1000

    empty = each(lambda: None)
    print("parts of the instrumented path (us, mean, minus an empty lambda call):")
    parts = {
        "Span(...) dataclass __init__": lambda: _instrument._slow_span(*args),
        "make_span (slot setters, used)": lambda: _instrument.make_span(*args),
        "time.perf_counter()": time.perf_counter,
    }
    for label, fn in parts.items():
        print(f"  {label:<34}{each(fn) - empty:6.3f}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        emitters: dict[str, Any] = {"deque": DequeEmitter()}
        real = real_emitter(tmp)
        if real is not None:
            emitters = {"real (no agent)": real, **emitters}
        print(
            f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.block} calls per mode"
        )
        bench_parts()
        bench_torch(emitters, args.rounds, args.block)
        bench_onnxruntime(emitters, args.rounds, args.block, tmp)
        bench_litert(emitters, args.rounds, args.block)
        if real is not None:
            real.close()
            print(f"real emitter: {real.stats()}")


if __name__ == "__main__":
    main(sys.argv[1:])
