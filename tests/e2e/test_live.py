"""The agent live on this machine: no GPU, no RAPL, real inference processes.

A real ONNX Runtime server burns CPU next to an idle PyTorch process; the
agent, with every built-in plugin loaded from its entry point, must find
both with their framework, estimate the CPU's energy, and give the busy one
its share in proportion to the CPU time it used.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import run_cli

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Bucket, Framework, Method
from infermeter.sidecar.agent import Agent

pytestmark = pytest.mark.slow

ORT_SERVER = """
import sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
w = helper.make_tensor("w", TensorProto.FLOAT, [256, 256], np.ones(256 * 256, np.float32) / 256)
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])], [w])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
x = np.ones((64, 256), np.float32)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    s.run(None, {"x": x})
"""

TORCH_IDLE = "import torch, time; print('ready', flush=True); time.sleep(120)"


def start(code: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def servers() -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    ort = start(ORT_SERVER, "60")
    idle = start(TORCH_IDLE)
    yield ort, idle
    for p in (ort, idle):
        p.kill()
        p.wait()


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def test_real_cpu_servers_are_found_and_charged_by_cpu_time(
    servers: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    ort, idle = servers
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), {"agent": {"tick_s": 0.5}}, environ={})
    agent = Agent(config, pm, store=None)
    agent.start()
    assert [m.name for m in agent.meters] == ["cpu_estimate"], "no GPU and no RAPL here"
    agent.tick()  # the baseline read
    ort_cpu0 = cpu_seconds(ort.pid)
    busy0 = psutil.cpu_times()
    energy: dict[object, float] = defaultdict(float)
    for _ in range(8):
        time.sleep(0.5)
        shares = agent.tick()
        for r in agent.last_readings:
            assert r.method is Method.ESTIMATED and r.weight_basis == "cpu-seconds"
            mine = [s for s in shares if s.device_uid == r.device.uid and s.t0 == r.t0]
            assert sum(s.energy_j for s in mine) == pytest.approx(r.energy_j, abs=1e-6)
        for s in shares:
            energy[(s.bucket, s.target[1] if s.target else None)] += s.energy_j
    ort_cpu = cpu_seconds(ort.pid) - ort_cpu0
    busy1 = psutil.cpu_times()
    busy = sum(
        getattr(busy1, f) - getattr(busy0, f) for f in ("user", "nice", "system", "irq", "softirq")
    )

    targets = agent.discovery.targets
    assert targets[ort.pid].framework is Framework.ONNXRUNTIME
    assert targets[idle.pid].framework is Framework.TORCH
    ort_j = energy[(Bucket.ACTIVE, ort.pid)]
    # Everything above idle: other inference processes on a busy machine are
    # targets too (their active shares), the rest of the busy time is other.
    working_j = sum(
        j for (bucket, _pid), j in energy.items() if bucket in (Bucket.ACTIVE, Bucket.OTHER)
    )
    assert ort_j > 0 and working_j > 0
    # The busy server's part of the energy above idle is its part of the CPU time.
    assert ort_j / working_j == pytest.approx(ort_cpu / busy, abs=0.1)
    assert energy[(Bucket.ACTIVE, idle.pid)] < 0.05 * ort_j
    assert energy[(Bucket.IDLE, None)] > 0


def test_record_then_replay_on_this_machine(
    tmp_path: Path,
    cli_env: dict[str, str],
    servers: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    ort, idle = servers
    out = tmp_path / "trace"
    r = run_cli(cli_env, "record", "--out", str(out), "--seconds", "3")
    assert r.returncode == 0, r.stderr
    assert "recorders cpu_times" in r.stdout
    files = {p.name for p in out.iterdir()}
    assert {"cpu_times.jsonl", "processes.jsonl", "meta.json", "cpu_info.json"} <= files
    procs = {json.loads(x)["pid"]: json.loads(x) for x in (out / "processes.jsonl").open()}
    assert procs[ort.pid]["framework"] == "onnxruntime"
    assert procs[idle.pid]["framework"] == "torch"
    rows = [json.loads(x) for x in (out / "cpu_times.jsonl").open()]
    assert len(rows) >= 10 and str(ort.pid) in rows[-1]["procs"]

    again = run_cli(cli_env, "record", "--out", str(out), "--seconds", "1")
    assert again.returncode == 2 and "is not empty" in again.stderr

    db = tmp_path / "r.db"
    r = run_cli(cli_env, "--db", f"sqlite:///{db}", "replay", str(out))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as conn:
        got = conn.execute(
            "SELECT t.pid, t.framework, s.method, sum(s.energy_j) FROM usage_shares s "
            "JOIN targets t ON t.id = s.target_id WHERE s.bucket = 'active' GROUP BY 1, 2, 3"
        ).fetchall()
    by_pid = {pid: (fw, method, e) for pid, fw, method, e in got}
    assert by_pid[ort.pid][:2] == ("onnxruntime", "estimated")
    assert by_pid[ort.pid][2] > 0
