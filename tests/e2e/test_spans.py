"""Real runtimes, instrumented by `infermeter exec`, through the real socket
into a running agent, and into the store as model calls with their energy."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FIXTURES, infermeter_cmd
from support.agent_run import RunningAgent

pytestmark = pytest.mark.slow

CLIENT = r"""
import sys, time
import infermeter
runtime, calls, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

if runtime == "torch":
    import torch
    torch.set_num_threads(1)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 8))
    model.infermeter_name = "tiny-mlp"
    x = torch.ones(batch, 512)
    def call():
        with torch.no_grad():
            model(x)
elif runtime == "onnxruntime":
    import numpy as np, onnx, onnxruntime as ort
    from onnx import TensorProto, helper
    w = helper.make_tensor("w", TensorProto.FLOAT, [512, 512], np.ones(512 * 512, np.float32))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])], [w])
    path = sys.argv[4] + "/tiny_matmul.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.ones((batch, 512), np.float32)
    def call():
        s.run(None, {"x": x})
else:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=sys.argv[4] + "/tiny_fc.tflite")
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    def call():
        it.set_tensor(inp["index"], np.ones(inp["shape"], inp["dtype"]))
        it.invoke()

time.sleep(2.5)  # like a server, loaded before its first request: discovery sees it
for i in range(calls):
    with infermeter.request(tenant="acme" if i % 2 else "globex", request_id=f"{runtime}-{i}"):
        call()
    time.sleep(0.0002)
print("done", flush=True)
time.sleep(3)  # a server lives on: the agent attributes its last intervals
"""


def test_three_runtimes_reach_the_store(tmp_path: Path, cli_env: dict[str, str]) -> None:
    sock = tmp_path / "run" / "spans.sock"
    sock.parent.mkdir()
    env = {**cli_env, "INFERMETER_SOCKET": str(sock)}
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\n"
        '[plugins]\ndisabled = ["synthetic"]\n'
    )
    db = tmp_path / "store.db"
    agent = RunningAgent(env, config, f"sqlite:///{db}", tmp_path / "agent.log")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(FIXTURES / "models" / "tiny_fc.tflite", models)
    try:
        agent.wait_for(sock.exists, "the span socket")
        clients = {
            rt: subprocess.Popen(
                [
                    *infermeter_cmd(),
                    "exec",
                    "--",
                    sys.executable,
                    "-c",
                    CLIENT,
                    rt,
                    "300",
                    str(batch),
                    str(models),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rt, batch in (("torch", 64), ("onnxruntime", 64), ("litert", 1))
        }
        for rt, c in clients.items():
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, (rt, err)
            assert "done" in out
        time.sleep(1.0)
    finally:
        code = agent.stop()
    assert code == 0, agent.text()

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT m.name, m.framework, t.pid, count(*), sum(r.items), min(r.t1 - r.t0), "
            "sum(r.energy_j), count(DISTINCT r.tenant), count(DISTINCT r.request_id) "
            "FROM requests r JOIN models m ON m.id = r.model_id "
            "JOIN targets t ON t.id = r.target_id GROUP BY 1, 2, 3"
        ).fetchall()
        tenants = dict(
            conn.execute(
                "SELECT r.request_id, r.tenant FROM requests r WHERE r.request_id LIKE 'torch-%'"
            ).fetchall()
        )
        frameworks = dict(conn.execute("SELECT pid, framework FROM targets").fetchall())
    got = {name: row for name, *row in rows}
    assert set(got) == {"tiny-mlp", "tiny_matmul", "tiny_fc"}, rows
    expect = {
        "tiny-mlp": ("torch", 64),
        "tiny_matmul": ("onnxruntime", 64),
        "tiny_fc": ("litert", 1),
    }
    for name, (framework, batch) in expect.items():
        fw, pid, n, items, shortest, energy, n_tenants, n_requests = got[name]
        assert fw == framework
        assert n == 300 and items == 300 * batch and n_requests == 300 and n_tenants == 2
        assert shortest > 0
        if name != "tiny_fc":  # LiteRT's tiny model runs in microseconds: too little to see
            assert energy > 0, f"{name}: the calls drew no energy"
        assert frameworks[pid] == framework
    assert tenants["torch-1"] == "acme" and tenants["torch-2"] == "globex"


LOOP_100K = r"""
import sys, time
from pathlib import Path
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1])
it.allocate_tensors()
inp = it.get_input_details()[0]
it.set_tensor(inp["index"], np.ones(inp["shape"], inp["dtype"]))
for _ in range(100_000):
    it.invoke()
print("looped", flush=True)
go = Path(sys.argv[2])
while not go.exists():  # stay up until the agent is back, as a server would
    time.sleep(0.05)
time.sleep(3)
"""


def test_agent_away_100k_calls_then_the_agent_hears_of_100k_drops(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    sock = tmp_path / "run" / "spans.sock"
    sock.parent.mkdir()
    env = {**cli_env, "INFERMETER_SOCKET": str(sock)}
    go = tmp_path / "agent-is-back"
    app = subprocess.Popen(
        [
            *infermeter_cmd(),
            "exec",
            "--",
            sys.executable,
            "-c",
            LOOP_100K,
            str(FIXTURES / "models" / "tiny_fc.tflite"),
            str(go),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None
    assert app.stdout.readline().strip() == "looped", app.stderr
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\ntick_s = 0.2\nflush_s = 0.4\n")
    agent = RunningAgent(env, config, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "agent.log")
    try:
        agent.wait_for(sock.exists, "the span socket", poll_s=0.05)
        go.touch()
        _, app_err = app.communicate(timeout=60)
        assert app.returncode == 0, app_err
    finally:
        code = agent.stop()
    err = agent.text()
    assert code == 0, err
    assert f"by sender pid: {{{app.pid}: 100000}}" in err, err
