"""``infermeter demo``: the whole product on any machine, GPU or not, in half a minute.

A newcomer sees every part work for real, nothing mocked:

1. a real agent (``infermeter run`` in a subprocess) on a temporary SQLite
   store, ticking every 0.5 s and flushing every 2 s, its span socket in the
   temporary folder (``INFERMETER_SOCKET``);
2. a small real model served on the CPU (an ONNX Runtime MLP built with
   ``onnx.helper``, or PyTorch when ONNX Runtime is missing) under
   ``infermeter exec``, answering a mixed load from two tenants: many small
   requests from ``acme``, fewer large batches from ``globex``;
3. the H100 serving recording (shipped in the package as
   ``infermeter/data/h100-serving``) replayed into the same store, so GPU
   numbers appear on a machine without one;
4. the recommenders, then the report.

``python -m infermeter.sidecar.demo serve`` is the model server of step 2.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from infermeter.config import build_config
from infermeter.errors import InfermeterError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_or_none
from infermeter.safe_text import printable
from infermeter.sidecar.replay import replay, trace_host
from infermeter.spans.wire import ENV_SOCKET
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.models import DeviceWindow
from infermeter.store.private_files import private_dir
from infermeter.store.writer import Store

MODEL = "demo-mlp"
TENANTS = {"acme": (1, 2, 4), "globex": (16, 32, 64)}  # tenant -> batch sizes it sends
TRACE = Path(__file__).resolve().parent.parent / "data" / "h100-serving"
AGENT_CONFIG = """\
# infermeter demo: a fast agent, so half a minute shows something
[agent]
tick_s = 0.5
flush_s = 2.0
span_lag_s = 1.0
rollup_s = 5.0
log_level = "warning"
"""
Status = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoResult:
    store_url: str
    t_from: float  # the store's first and last window: the report's range
    t_to: float
    runtime: str  # onnxruntime | torch
    requests: dict[str, int]  # sent per tenant
    h100_host: str
    recommendations: int


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INFERMETER_CONFIG", "INFERMETER_DB")}
    env.update(extra)
    return env


@contextlib.contextmanager
def _agent(folder: Path, url: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``infermeter run`` on the demo store; SIGTERM (a final flush) on the way out."""
    config = folder / "agent.toml"
    config.write_text(AGENT_CONFIG)
    log = (folder / "agent.log").open("wb")
    command = [sys.executable, "-m", "infermeter", "--config", str(config), "--db", url, "run"]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            why = tail[0] if tail else "no output"
            raise InfermeterError(f"the demo agent did not start its span socket: {why}")
        time.sleep(0.1)


def run_demo(
    folder: Path, seconds: float, status: Status, progress: Callable[[float], None] | None = None
) -> DemoResult:
    """Run the demo in ``folder`` (which must be empty or new); see the module docstring."""
    private_dir(folder)
    db = folder / "store.db"
    url = f"sqlite:///{db}"
    socket_path = folder / "spans.sock"
    env = _python_env({ENV_SOCKET: str(socket_path)})
    engine = open_engine(url)
    migrate.upgrade(engine)  # before the agent, so the replay can write beside it at once
    status("starting the agent (tick 0.5 s, flush 2 s) on a temporary store")
    with _agent(folder, url, env) as agent:
        _wait_for(socket_path, agent, folder / "agent.log", 60)
        status(f"serving {MODEL} on the CPU for {seconds:g} s to tenants {', '.join(TENANTS)}")
        serve = [
            "-m",
            "infermeter.sidecar.demo",
            "serve",
            "--seconds",
            str(seconds),
            "--dir",
            str(folder),
        ]
        server = subprocess.Popen(
            [sys.executable, "-m", "infermeter", "exec", "--", sys.executable, *serve],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        status("replaying the H100 serving recording into the same store")
        h100 = _replay_h100(engine)
        started = time.monotonic()
        while server.poll() is None:
            if progress is not None:
                progress(min(1.0, (time.monotonic() - started) / (seconds + 8)))
            time.sleep(0.2)
        out, err = server.communicate()
        if server.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise InfermeterError(f"the demo model server failed: {last}")
        summary = json.loads(out.strip().splitlines()[-1])
        time.sleep(2 * 2.0 + 1.0)  # two flushes and the span lag: the last calls stored
    if agent.returncode not in (0, None):
        raise InfermeterError(f"the demo agent exited with {agent.returncode}; see agent.log")
    status("running the recommenders")
    recs = _recommend(engine)
    with engine.connect() as conn:
        lo, hi = conn.execute(select(func.min(DeviceWindow.t0), func.max(DeviceWindow.t1))).one()
    engine.dispose()
    if lo is None:
        raise InfermeterError("the demo store is empty: the agent wrote nothing")
    return DemoResult(
        store_url=url,
        t_from=float(lo),
        t_to=float(hi) + 1.0,
        runtime=str(summary["runtime"]),
        requests={str(k): int(v) for k, v in summary["requests"].items()},
        h100_host=h100,
        recommendations=recs,
    )


def _replay_h100(engine: Any) -> str:
    # The replayed agent reads its spans from the recording: no span socket of
    # its own, which would contend with the demo agent's (or a system agent's).
    pm = make_plugin_manager(blocked=["core.span_socket"])
    config = build_config(pm.config_options(), environ={})
    host = trace_host(TRACE)
    store = Store(engine, host)
    replay(TRACE, config, pm, store)
    return host


def _recommend(engine: Any) -> int:
    """What the recommenders say about each host's newest data; 0 if they cannot run."""
    try:
        from infermeter.recommend import run as recommend
    except ImportError:
        return 0
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), environ={})
    count = 0
    for host in recommend.hosts(engine):
        try:
            count += len(recommend.run(engine, host, config, pm, card_or_none(config)))
        except Exception as e:  # the demo goes on to the report
            why = printable(f"recommenders failed on {host}: {e}")
            print(f"infermeter demo: {why}", file=sys.stderr)
    return count


# ----- the model server (python -m infermeter.sidecar.demo serve) ---------------------------------


def _onnx_model(folder: Path) -> Callable[[int], object]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    ort: Any = importlib.import_module("onnxruntime")  # ships no type information

    rng = np.random.default_rng(0)
    sizes = [(256, 1024), (1024, 1024), (1024, 10)]
    weights = [
        helper.make_tensor(f"w{i}", TensorProto.FLOAT, list(s), rng.standard_normal(s, np.float32))
        for i, s in enumerate(sizes)
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("MatMul", ["a0", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        weights,
    )
    path = folder / f"{MODEL}.onnx"  # the instrumentation names the model after the file
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {n: np.ones((n, 256), np.float32) for batches in TENANTS.values() for n in batches}

    def call(batch: int) -> object:
        return session.run(None, {"x": inputs[batch]})

    return call


def _torch_model() -> Callable[[int], object]:
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    model.infermeter_name = MODEL  # type: ignore[assignment]

    def call(batch: int) -> object:
        with torch.no_grad():
            return model(torch.ones(batch, 256))

    return call


def serve(seconds: float, folder: Path, rate_per_s: float = 40.0) -> dict[str, Any]:
    """Answer Poisson arrivals from the two tenants for ``seconds``; what was sent, per tenant."""
    import infermeter

    try:
        call, runtime = _onnx_model(folder), "onnxruntime"
    except ImportError:
        call, runtime = _torch_model(), "torch"
    rng = random.Random(42)
    sent = dict.fromkeys(TENANTS, 0)
    time.sleep(1.5)  # loaded, as a server is before its first request: discovery sees it
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        tenant = "acme" if rng.random() < 0.7 else "globex"
        batch = rng.choice(TENANTS[tenant])
        i += 1
        with infermeter.request(tenant=tenant, request_id=f"demo-{i}", route="/v1/classify"):
            call(batch)
        sent[tenant] += 1
        time.sleep(rng.expovariate(rate_per_s))
    time.sleep(3.0)  # a server lives on: the agent attributes its last intervals
    return {"runtime": runtime, "model": MODEL, "requests": sent}


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infermeter.sidecar.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the demo's model server")
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(serve(args.seconds, args.dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
