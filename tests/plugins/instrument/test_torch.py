"""The torch plugin against real torch on the CPU: root calls only, metadata, timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
import torch
from support import TESTS
from support.span_sink import BrokenEmitter, MemoryEmitter
from torch import nn

from infermeter.plugins.instrument import _base as _instrument
from infermeter.plugins.instrument import torch as instrument_torch

ORIGINAL_CALL = nn.Module.__call__


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    instrument_torch.unpatch()
    yield
    instrument_torch.unpatch()
    assert nn.Module.__call__ is ORIGINAL_CALL


@pytest.fixture
def em() -> MemoryEmitter:
    emitter = MemoryEmitter()
    assert instrument_torch.patch(emitter) is True
    return emitter


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


class Slow(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.lin(x)


class Boom(Exception):
    pass


class Failing(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin(x)
        raise self.error


def test_one_span_per_root_call_with_the_models_metadata(em: MemoryEmitter) -> None:
    model = mlp().eval()
    x = torch.randn(5, 8)
    y = model(x)
    [span] = em.take()
    assert span.framework == "torch"
    assert span.model.startswith("Sequential-") and len(span.model) == len("Sequential-") + 8
    assert span.items == 5
    assert span.parameters == 8 * 16 + 16 + 16 * 4 + 4
    assert (span.device, span.dtype) == ("cpu", "float32")
    assert span.pid == os.getpid()
    assert span.t0 < span.t1
    instrument_torch.unpatch()
    assert torch.equal(y, model(x))  # the result is the uninstrumented one


def test_submodules_emit_nothing_and_a_submodule_called_alone_is_a_root(em: MemoryEmitter) -> None:
    model = TinyConv().eval()
    model(torch.randn(3, 1, 8, 8))
    spans = em.take()
    assert [s.model.split("-")[0] for s in spans] == ["TinyConv"]
    assert spans[0].items == 3
    assert spans[0].parameters == sum(p.numel() for p in model.parameters())
    model.head(torch.randn(2, 256))  # called by the application: a root of its own
    [head] = em.take()
    assert head.model.startswith("Sequential-") and head.items == 2


def test_a_model_called_inside_another_models_forward_is_part_of_it(em: MemoryEmitter) -> None:
    inner = mlp()

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(inner(x))

    Outer()(torch.randn(7, 8))
    assert [(s.model.split("-")[0], s.items) for s in em.take()] == [("Outer", 7)]


def test_name_is_stable_per_shapes_and_can_be_configured(em: MemoryEmitter) -> None:
    a, b = mlp(), mlp()
    other = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(1, 8)
    a(x), b(x), other(x)
    na, nb, no = (s.model for s in em.take())
    assert na == nb != no
    instrument_torch.name_model(a, "resnet-ish")
    b.infermeter_name = "from-attribute"  # type: ignore[assignment]
    c = mlp()
    c.infermeter_name = "from-attribute-c"  # type: ignore[assignment]
    a(x), c(x)
    assert [s.model for s in em.take()] == ["resnet-ish", "from-attribute-c"]


def test_batch_from_first_tensor_argument_keyword_list_or_none(em: MemoryEmitter) -> None:
    class Multi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, *args: object, **kwargs: object) -> int:
            return 0

    m = Multi()
    m(torch.zeros(6, 3))
    m("prompt", input_ids=torch.zeros(4, 9, dtype=torch.long))
    m([torch.zeros(3, 5, 5), torch.zeros(3, 6, 6)])  # torchvision detection style
    m("no tensors at all")
    m(torch.tensor(3.0))  # a 0-d tensor
    assert [s.items for s in em.take()] == [6, 4, 2, 1, 1]


def test_span_times_cover_the_call_and_nothing_else(em: MemoryEmitter) -> None:
    model = Slow(0.03)
    before = em.wall_time()
    model(torch.zeros(1, 2))
    after = em.wall_time()
    [span] = em.take()
    assert before <= span.t0 < span.t1 <= after
    assert 0.03 <= span.t1 - span.t0 <= after - before


def test_model_exception_propagates_unchanged_and_no_span(em: MemoryEmitter) -> None:
    error = Boom("inside the model")
    model = Failing(error)
    with pytest.raises(Boom) as caught:
        model(torch.zeros(1, 2))
    assert caught.value is error
    assert em.take() == []
    model.lin(torch.zeros(3, 2))  # the thread is not left "inside a call"
    assert [s.items for s in em.take()] == [3]


def test_instrumentation_failures_never_reach_the_application() -> None:
    instrument_torch.patch(BrokenEmitter())
    before = instrument_torch.errors
    model = mlp()
    x = torch.randn(2, 8)
    y = model(x)
    assert instrument_torch.errors == before + 1
    instrument_torch.unpatch()
    assert torch.equal(y, model(x))


def test_grad_modes_are_respected(em: MemoryEmitter) -> None:
    model = mlp()
    x = torch.randn(2, 8)
    with torch.inference_mode():
        assert model(x).is_inference()
    with torch.no_grad():
        assert not model(x).requires_grad
    out = model(x)
    assert out.requires_grad
    out.sum().backward()
    assert model[0].weight.grad is not None
    assert len(em.take()) == 3


def test_parameter_free_modules_are_not_models_unless_named(em: MemoryEmitter) -> None:
    relu = nn.ReLU()
    relu(torch.zeros(3))
    assert em.take() == []
    instrument_torch.name_model(relu, "postprocess")
    relu(torch.zeros(3))
    assert [(s.model, s.parameters, s.device) for s in em.take()] == [("postprocess", 0, None)]


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_scripted_and_traced_modules(em: MemoryEmitter) -> None:
    model = TinyConv().eval()
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    em.take()
    scripted = torch.jit.script(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # none caused by us
        traced = torch.jit.trace(model, x, check_trace=False)  # the check would run it eagerly
    assert em.take() == []  # tracing runs the model but is not inference
    assert torch.allclose(scripted(x), expected) and torch.allclose(traced(x), expected)
    spans = em.take()
    assert [s.model.split("-")[0] for s in spans] == ["TinyConv", "TinyConv"]
    assert [s.items for s in spans] == [2, 2]


def test_torch_compile_names_the_model_and_fullgraph_still_compiles(em: MemoryEmitter) -> None:
    model = mlp()
    x = torch.randn(3, 8)
    expected = model(x)
    [plain] = em.take()
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(x), expected)
    [span] = em.take()
    assert span.model == plain.model and span.items == 3

    @torch.compile(backend="eager", fullgraph=True)  # a graph break would raise here
    def pipeline(t: torch.Tensor) -> torch.Tensor:
        return model(t) * 2

    assert torch.allclose(pipeline(x), expected * 2)
    assert em.take() == []  # part of the compiled function's graph, not a module call


def test_fx_tracing_and_export_emit_nothing_and_still_work(em: MemoryEmitter) -> None:
    model = mlp()
    x = torch.randn(3, 8)
    graph_module = torch.fx.symbolic_trace(model)
    exported = torch.export.export(model, (x,))
    assert em.take() == []  # tracing, not inference
    assert torch.allclose(graph_module(x), model(x))
    assert torch.allclose(exported.module()(x), model(x))
    assert [s.items for s in em.take()] == [3, 3, 3, 3]


def test_lazy_modules_are_described_once_initialised(em: MemoryEmitter) -> None:
    model = nn.Sequential(nn.LazyLinear(4))
    model(torch.zeros(2, 3))
    model(torch.zeros(5, 3))
    spans = em.take()
    assert [s.items for s in spans] == [5]
    assert spans[0].parameters == 3 * 4 + 4


def test_cpu_models_never_touch_torch_cuda(
    em: MemoryEmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.cuda used for a CPU model")

    for name in ("Event", "current_stream", "is_current_stream_capturing", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    mlp()(torch.randn(2, 8))
    assert len(em.take()) == 1 and em.pending == []


def test_each_thread_has_its_own_root(em: MemoryEmitter) -> None:
    model = Slow(0.02)
    threads = [threading.Thread(target=model, args=(torch.zeros(i + 1, 2),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.items for s in em.take()) == [1, 2, 3, 4]


def test_patching_is_idempotent_and_reversible() -> None:
    em1, em2 = MemoryEmitter(), MemoryEmitter()
    assert instrument_torch.patch(em1) and instrument_torch.patch(em2)
    assert nn.Module.__call__ is not ORIGINAL_CALL
    assert nn.Module.__call__.__infermeter_original__ is ORIGINAL_CALL  # type: ignore[attr-defined]
    mlp()(torch.randn(1, 8))
    assert (len(em1.spans), len(em2.spans)) == (0, 1)  # the latest emitter, once
    instrument_torch.unpatch()
    assert nn.Module.__call__ is ORIGINAL_CALL and not instrument_torch.is_patched()
    mlp()(torch.randn(1, 8))
    assert len(em2.spans) == 1


def test_submodule_path_is_the_inlined_original() -> None:
    assert instrument_torch._can_inline(nn.Module)
    instrument_torch.patch(MemoryEmitter())
    names = nn.Module.__call__.__code__.co_names
    assert "_call_impl" in names and "_compiled_call_impl" in names  # no call to the original
    assert not instrument_torch._can_inline(type("Custom", (), {"__call__": lambda self: 0}))


def test_hook_entry_point_reports_patched() -> None:
    em = MemoryEmitter()
    assert instrument_torch.infermeter_instrument(em) is True
    mlp()(torch.randn(1, 8))
    assert len(em.spans) == 1


def test_span_factory_builds_the_same_span_as_the_dataclass() -> None:
    from infermeter.records import Span

    assert _instrument.make_span is not _instrument._slow_span  # the fast path is in use
    args = (12, "m", 1.5, 2.5, 3, {"k": "v"}, "torch", "cpu", "float16", 99)
    fast, slow = _instrument.make_span(*args), _instrument._slow_span(*args)
    assert fast == slow and repr(fast) == repr(slow) and type(fast) is Span
    assert fast.tokens_in is None and fast.request_id is None


IMPORT_LATER = """
import sys, json
sys.path.insert(0, {tests!r})
from support.span_sink import MemoryEmitter
from infermeter.plugins.instrument import torch as instrument_torch
em = MemoryEmitter()
assert "torch" not in sys.modules
print("patched-before-import", instrument_torch.patch(em), "torch" in sys.modules)
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
model(torch.zeros(3, 8))
print(em.dump_json())
"""


def test_patch_before_import_torch_instruments_on_import() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_LATER.format(tests=str(TESTS))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    first, spans_line = out.strip().splitlines()[-2:]
    assert first == "patched-before-import True False"
    spans = json.loads(spans_line)
    assert [(s["framework"], s["items"], s["parameters"]) for s in spans] == [("torch", 3, 212)]
    em = MemoryEmitter()
    instrument_torch.patch(em)
    mlp()(torch.zeros(1, 8))
    assert spans[0]["model"] == em.spans[0].model  # same shapes, same name, any process
