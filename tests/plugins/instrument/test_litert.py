"""The litert plugin against the real LiteRT interpreter, with the shipped tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import interpreter as litert
from support import TESTS
from support.span_sink import BrokenEmitter, MemoryEmitter

from infermeter.plugins.instrument import litert as plugin

MODEL = TESTS / "fixtures" / "models" / "tiny_fc.tflite"
sys.path.insert(0, str(MODEL.parent))
import make_tiny_tflite  # noqa: E402  (the script that made the model)

W = np.array(make_tiny_tflite.WEIGHTS, dtype=np.float32)
B = np.array(make_tiny_tflite.BIAS, dtype=np.float32)
PATCHED = {
    (litert.Interpreter, "__init__"): litert.Interpreter.__dict__["__init__"],
    (litert.Interpreter, "invoke"): litert.Interpreter.__dict__["invoke"],
    (litert.Interpreter, "resize_tensor_input"): litert.Interpreter.__dict__["resize_tensor_input"],
    (litert.SignatureRunner, "__call__"): litert.SignatureRunner.__dict__["__call__"],
}


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    plugin.unpatch()
    yield
    plugin.unpatch()
    assert {key: key[0].__dict__[key[1]] for key in PATCHED} == PATCHED


@pytest.fixture
def em() -> MemoryEmitter:
    emitter = MemoryEmitter()
    assert plugin.patch(emitter) is True
    return emitter


def run_invoke(interp: litert.Interpreter, x: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


def test_the_fixture_is_what_its_script_makes() -> None:
    assert MODEL.read_bytes() == make_tiny_tflite.build()
    assert MODEL.stat().st_size < 10_000


def test_invoke_emits_one_span_per_call(em: MemoryEmitter) -> None:
    interp = litert.Interpreter(model_path=str(MODEL))
    interp.allocate_tensors()
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    before = em.wall_time()
    y = run_invoke(interp, x)
    after = em.wall_time()
    np.testing.assert_allclose(y, x @ W.T + B)
    [span] = em.take()
    assert (span.model, span.framework, span.device, span.items) == ("tiny_fc", "litert", "cpu", 1)
    assert (span.dtype, span.parameters, dict(span.tags)) == (None, None, {})
    assert before <= span.t0 <= span.t1 <= after and span.t0 < span.t1
    for _ in range(3):  # no reference to the native wrapper is kept: invoke stays allowed
        run_invoke(interp, x)
    assert len(em.take()) == 3


def test_batch_follows_resize(em: MemoryEmitter) -> None:
    interp = litert.Interpreter(model_path=MODEL)  # a Path works as model_path too
    interp.allocate_tensors()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    interp.resize_tensor_input(0, [6, 4])
    interp.allocate_tensors()
    y = run_invoke(interp, np.ones((6, 4), np.float32))
    assert y.shape == (6, 3)
    assert [s.items for s in em.take()] == [1, 6]


def test_model_content_is_named_by_its_hash(em: MemoryEmitter) -> None:
    data = MODEL.read_bytes()
    interp = litert.Interpreter(model_content=data)
    interp.allocate_tensors()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    assert [s.model for s in em.take()] == ["tflite-" + hashlib.sha256(data).hexdigest()[:8]]


def test_signature_runner_emits_once_with_its_batch_and_tag(em: MemoryEmitter) -> None:
    interp = litert.Interpreter(model_path=str(MODEL))
    interp.allocate_tensors()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    assert [s.items for s in em.take()] == [1]
    runner = interp.get_signature_runner()
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    out = runner(x=x)
    np.testing.assert_allclose(out["y"], x @ W.T + B, rtol=1e-6)
    [span] = em.take()
    assert (span.model, span.items, dict(span.tags)) == (
        "tiny_fc",
        5,
        {"signature": "serving_default"},
    )
    del runner, out  # LiteRT refuses invoke() while a runner holds the native wrapper
    run_invoke(interp, np.zeros((5, 4), np.float32))  # the runner resized the input to 5
    assert [s.items for s in em.take()] == [5]


def test_name_interpreter_applies_to_runners(em: MemoryEmitter) -> None:
    interp = litert.Interpreter(model_path=str(MODEL))
    plugin.name_interpreter(interp, "keyword-spotter")
    interp.get_signature_runner("serving_default")(x=np.zeros((2, 4), np.float32))
    assert [(s.model, s.items) for s in em.take()] == [("keyword-spotter", 2)]


def test_interpreters_created_before_patching_get_a_stable_name() -> None:
    first = litert.Interpreter(model_path=str(MODEL))
    second = litert.Interpreter(model_path=str(MODEL))
    em = MemoryEmitter()
    plugin.patch(em)
    for interp in (first, second):
        interp.allocate_tensors()
        run_invoke(interp, np.zeros((1, 4), np.float32))
    a, b = (s.model for s in em.take())
    assert a == b and a.startswith("tflite-") and len(a) == len("tflite-") + 8


def test_errors_propagate_unchanged_and_emit_nothing(em: MemoryEmitter) -> None:
    interp = litert.Interpreter(model_path=str(MODEL))
    runner = interp.get_signature_runner()
    with pytest.raises(ValueError, match="Invalid Input name") as patched_error:
        runner(z=np.zeros((1, 4), np.float32))
    assert em.take() == []
    plugin.unpatch()
    with pytest.raises(ValueError) as plain_error:
        runner(z=np.zeros((1, 4), np.float32))
    assert str(patched_error.value) == str(plain_error.value)


def test_instrumentation_failures_never_reach_the_application() -> None:
    plugin.patch(BrokenEmitter())
    before = plugin.errors
    interp = litert.Interpreter(model_path=str(MODEL))
    interp.allocate_tensors()
    y = run_invoke(interp, np.ones((1, 4), np.float32))
    assert plugin.errors == before + 1
    np.testing.assert_allclose(y, np.ones((1, 4)) @ W.T + B)


def test_patching_is_idempotent_and_reversible() -> None:
    em1, em2 = MemoryEmitter(), MemoryEmitter()
    assert plugin.patch(em1) and plugin.patch(em2)
    for (cls, name), original in PATCHED.items():
        assert cls.__dict__[name].__infermeter_original__ is original
    interp = litert.Interpreter(model_path=str(MODEL))
    interp.allocate_tensors()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    assert (len(em1.spans), len(em2.spans)) == (0, 1)
    plugin.unpatch()
    assert not plugin.is_patched()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    assert len(em2.spans) == 1


def test_hook_entry_point_reports_patched() -> None:
    em = MemoryEmitter()
    assert plugin.infermeter_instrument(em) is True
    interp = litert.Interpreter(model_path=str(MODEL))
    interp.allocate_tensors()
    run_invoke(interp, np.zeros((1, 4), np.float32))
    assert len(em.spans) == 1


SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from support.span_sink import MemoryEmitter
from infermeter.plugins.instrument import litert as plugin
em = MemoryEmitter()
print("patched-before-import", plugin.patch(em), {module!r} in sys.modules)
from {module} import Interpreter
interp = Interpreter(model_path={model!r})
interp.allocate_tensors()
interp.set_tensor(interp.get_input_details()[0]["index"], np.zeros((1, 4), np.float32))
interp.invoke()
runner = interp.get_signature_runner()
runner(x=np.zeros((3, 4), np.float32))
print(em.dump_json())
"""

# A stand-in for the tflite_runtime wheel: the same interpreter source as
# ai_edge_litert's, loaded a second time so that its classes are distinct.
TFLITE_RUNTIME = """
import importlib.util
_origin = importlib.util.find_spec("ai_edge_litert.interpreter").origin
_spec = importlib.util.spec_from_file_location("tflite_runtime._litert_copy", _origin)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
Interpreter = _module.Interpreter
SignatureRunner = _module.SignatureRunner
"""


def _run_script(module: str, env_path: str | None = None) -> list[dict[str, object]]:
    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env_path, env.get("PYTHONPATH")]))
    code = SCRIPT.format(tests=str(TESTS), module=module, model=str(MODEL))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    ).stdout
    first, spans_line = out.strip().splitlines()[-2:]
    assert first == "patched-before-import True False"
    return list(json.loads(spans_line))


def test_patch_before_import_litert_instruments_on_import() -> None:
    spans = _run_script("ai_edge_litert.interpreter")
    assert [(s["model"], s["items"], s["tags"]) for s in spans] == [
        ("tiny_fc", 1, {}),
        ("tiny_fc", 3, {"signature": "serving_default"}),
    ]


def test_tflite_runtime_module_is_patched_on_import(tmp_path: Path) -> None:
    package = tmp_path / "tflite_runtime"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "interpreter.py").write_text(TFLITE_RUNTIME)
    spans = _run_script("tflite_runtime.interpreter", env_path=str(tmp_path))
    assert [(s["model"], s["framework"], s["items"]) for s in spans] == [
        ("tiny_fc", "litert", 1),
        ("tiny_fc", "litert", 3),
    ]
