"""The onnxruntime plugin against real ONNX Runtime on the CPU, with a model built here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from support import TESTS
from support.span_sink import BrokenEmitter, MemoryEmitter

from infermeter.plugins.instrument import onnxruntime as plugin

SESSION = ort.capi.onnxruntime_inference_collection.Session
ORIGINALS = {
    name: SESSION.__dict__[name] for name in plugin.RUN_METHODS if name in SESSION.__dict__
}
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def tiny_model() -> onnx.ModelProto:
    """y = x @ W + B, with a dynamic batch dimension."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
        ],
        "tiny_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [4, 3], W.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [3], B.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_gemm.onnx"
    onnx.save(tiny_model(), str(path))
    return path


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    plugin.unpatch()
    yield
    plugin.unpatch()
    assert {n: SESSION.__dict__[n] for n in ORIGINALS} == ORIGINALS


@pytest.fixture
def em() -> MemoryEmitter:
    emitter = MemoryEmitter()
    assert plugin.patch(emitter) is True
    return emitter


def session(source: Path | bytes) -> ort.InferenceSession:
    src = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def test_run_emits_one_span_with_the_models_identity(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    before = em.wall_time()
    [y] = sess.run(None, {"x": x})
    after = em.wall_time()
    [span] = em.take()
    assert (span.model, span.framework, span.device, span.items) == (
        "tiny_gemm",
        "onnxruntime",
        "cpu",
        5,
    )
    assert (span.dtype, span.parameters) == (None, None)
    assert before <= span.t0 < span.t1 <= after
    np.testing.assert_allclose(y, x @ W + B, rtol=1e-6)
    plugin.unpatch()
    assert np.array_equal(y, sess.run(None, {"x": x})[0])


def test_keyword_arguments_and_output_names(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    sess.run(output_names=["y"], input_feed={"x": np.zeros((7, 4), np.float32)})
    sess.run(["y"], {"x": np.zeros((2, 4), np.float32)}, ort.RunOptions())
    assert [s.items for s in em.take()] == [7, 2]


def test_run_with_ort_values(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    x = ort.OrtValue.ortvalue_from_numpy(np.ones((3, 4), np.float32))
    [y] = sess.run_with_ort_values(["y"], {"x": x})
    np.testing.assert_allclose(y.numpy(), np.ones((3, 4)) @ W + B, rtol=1e-6)
    assert [(s.model, s.items) for s in em.take()] == [("tiny_gemm", 3)]


def test_run_with_iobinding(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", np.ones((6, 4), np.float32))
    binding.bind_output("y")
    sess.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], np.ones((6, 4)) @ W + B, rtol=1e-6)
    assert [(s.model, s.items) for s in em.take()] == [("tiny_gemm", 6)]


def test_run_with_ortvaluevector(em: MemoryEmitter, model_path: Path) -> None:
    c = ort.capi._pybind_state
    sess = session(model_path)
    feeds = c.OrtValueVector()
    feeds.push_back(ort.OrtValue.ortvalue_from_numpy(np.ones((2, 4), np.float32))._ortvalue)
    fetches = c.OrtValueVector()
    cpu = c.OrtDevice(c.OrtDevice.cpu(), c.OrtDevice.default_memory(), 0)
    sess.run_with_ortvaluevector(c.RunOptions(), ["x"], feeds, ["y"], fetches, [cpu])
    assert len(fetches) == 1
    assert [(s.model, s.items) for s in em.take()] == [("tiny_gemm", 1)]  # no shapes visible


def test_run_async_ends_at_the_callback(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    done = threading.Event()
    got: dict[str, Any] = {}

    def callback(results: Any, user_data: Any, err: str) -> None:
        got.update(results=results, user_data=user_data, err=err, spans=len(em.spans))
        done.set()

    marker = object()
    sess.run_async(["y"], {"x": np.ones((4, 4), np.float32)}, callback, marker)
    assert done.wait(10)
    assert got["user_data"] is marker and not got["err"]
    np.testing.assert_allclose(got["results"][0], np.ones((4, 4)) @ W + B, rtol=1e-6)
    assert got["spans"] == 1  # emitted before the application's callback ran
    assert [(s.model, s.items) for s in em.take()] == [("tiny_gemm", 4)]


def test_session_from_bytes_is_named_by_their_hash(em: MemoryEmitter) -> None:
    data = tiny_model().SerializeToString()
    session(data).run(None, {"x": np.zeros((1, 4), np.float32)})
    [span] = em.take()
    assert span.model == "onnx-" + hashlib.sha256(data).hexdigest()[:8]


def test_name_session_overrides(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    plugin.name_session(sess, "ranker-v2")
    sess.run(None, {"x": np.zeros((1, 4), np.float32)})
    assert [s.model for s in em.take()] == ["ranker-v2"]


def test_errors_propagate_unchanged_and_emit_nothing(em: MemoryEmitter, model_path: Path) -> None:
    sess = session(model_path)
    bad = {"x": np.zeros((2, 5), np.float32)}  # wrong inner dimension
    with pytest.raises(Exception) as patched_error:
        sess.run(None, bad)
    assert em.take() == []
    plugin.unpatch()
    with pytest.raises(Exception) as plain_error:
        sess.run(None, bad)
    assert type(patched_error.value) is type(plain_error.value)
    assert str(patched_error.value) == str(plain_error.value)


def test_instrumentation_failures_never_reach_the_application(model_path: Path) -> None:
    plugin.patch(BrokenEmitter())
    before = plugin.errors
    [y] = session(model_path).run(None, {"x": np.ones((1, 4), np.float32)})
    assert plugin.errors == before + 1
    np.testing.assert_allclose(y, np.ones((1, 4)) @ W + B, rtol=1e-6)


def test_patching_is_idempotent_and_reversible(model_path: Path) -> None:
    em1, em2 = MemoryEmitter(), MemoryEmitter()
    assert plugin.patch(em1) and plugin.patch(em2)
    assert set(ORIGINALS) >= {"run", "run_with_ort_values", "run_with_iobinding", "run_async"}
    for name, original in ORIGINALS.items():
        assert SESSION.__dict__[name].__infermeter_original__ is original
    session(model_path).run(None, {"x": np.zeros((1, 4), np.float32)})
    assert (len(em1.spans), len(em2.spans)) == (0, 1)
    plugin.unpatch()
    assert not plugin.is_patched()
    session(model_path).run(None, {"x": np.zeros((1, 4), np.float32)})
    assert len(em2.spans) == 1


def test_provider_devices() -> None:
    assert plugin.provider_device("CPUExecutionProvider", {}) == "cpu"
    assert plugin.provider_device("CUDAExecutionProvider", {"device_id": "1"}) == "cuda:1"
    assert plugin.provider_device("TensorrtExecutionProvider", None) == "cuda:0"
    assert plugin.provider_device("ROCMExecutionProvider", {"device_id": "2"}) == "rocm:2"
    assert plugin.provider_device("OpenVINOExecutionProvider", {}) == "openvino"


def test_hook_entry_point_reports_patched(model_path: Path) -> None:
    em = MemoryEmitter()
    assert plugin.infermeter_instrument(em) is True
    session(model_path).run(None, {"x": np.zeros((1, 4), np.float32)})
    assert len(em.spans) == 1


IMPORT_LATER = """
import sys
sys.path.insert(0, {tests!r})
from support.span_sink import MemoryEmitter
from infermeter.plugins.instrument import onnxruntime as plugin
em = MemoryEmitter()
print("patched-before-import", plugin.patch(em), "onnxruntime" in sys.modules)
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
sess.run(None, {{"x": np.zeros((3, 4), np.float32)}})
print(em.dump_json())
"""


def test_patch_before_import_onnxruntime_instruments_on_import(model_path: Path) -> None:
    code = IMPORT_LATER.format(tests=str(TESTS), path=str(model_path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    first, spans_line = out.strip().splitlines()[-2:]
    assert first == "patched-before-import True False"
    spans = json.loads(spans_line)
    assert [(s["model"], s["framework"], s["items"]) for s in spans] == [
        ("tiny_gemm", "onnxruntime", 3)
    ]
