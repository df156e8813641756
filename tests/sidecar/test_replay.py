"""The whole agent over the two H100 recordings, through the real meter code.

The NVML stand-in answers from the recording (plugins/nvml/replay.py); the
rest is what runs live: attribution, span splitting, the store.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from support import FIXTURES, run_cli

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Bucket, Method, Share
from infermeter.sidecar.agent import Agent
from infermeter.sidecar.replay import ReplayResult, replay
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"


class Run:
    """One replay into a fresh SQLite store, with every tick's shares kept."""

    def __init__(self, trace: Path, db: Path, tick_s: float = 1.0) -> None:
        self.pm = make_plugin_manager()
        self.config = build_config(
            self.pm.config_options(), {"agent": {"tick_s": tick_s}}, environ={}
        )
        engine = open_engine(f"sqlite:///{db}")
        migrate.upgrade(engine)
        self.store = Store(engine, trace.name)
        self.ticks: list[tuple[list, list[Share]]] = []
        self.agent: Agent | None = None

        def observe(agent: Agent, shares: list[Share]) -> None:
            self.agent = agent
            self.ticks.append((list(agent.last_readings), shares))

        self.result: ReplayResult = replay(trace, self.config, self.pm, self.store, observe=observe)
        self.db = db

    def sql(self, query: str, *args: object) -> list[tuple]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    run = Run(SERVING, tmp_path_factory.mktemp("serving") / "s.db")
    yield run
    run.store.close()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    # Phases are 7 s long and start and stop steeply: ticks of 0.2 s (energy
    # from the once-a-second counter, shaped by the instant power inside)
    # resolve their edges; 1 s ticks would blur each edge by up to a second.
    run = Run(ENCODER, tmp_path_factory.mktemp("encoder") / "e.db", tick_s=0.2)
    yield run
    run.store.close()


def counter_j(trace: Path) -> list[tuple[float, float]]:
    with (trace / "nvml_device0.csv").open() as f:
        return [
            (float(r["t"]), float(r["energy_mj"]) / 1000)
            for r in csv.DictReader(f)
            if r["energy_mj"]
        ]


def counter_at(rows: list[tuple[float, float]], t: float) -> float:
    """The counter interpolated at t (it advances about every 100 ms)."""
    for (ta, ea), (tb, eb) in pairwise(rows):
        if ta <= t <= tb:
            return ea + (eb - ea) * (t - ta) / (tb - ta)
    raise AssertionError(f"{t} outside the recording")


@pytest.mark.parametrize("trace", ["serving", "encoder"])
def test_every_interval_conserves_energy(trace: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(trace)
    assert len(run.ticks) > 80
    assert run.agent is not None and run.agent.ticks == len(run.ticks) + 1
    for readings, shares in run.ticks:
        by_device: dict[tuple[str, float], float] = defaultdict(float)
        for s in shares:
            by_device[(s.device_uid, s.t0)] += s.energy_j
        for r in readings:
            if r.energy_j > 0:
                assert by_device[(r.device.uid, r.t0)] == pytest.approx(r.energy_j, abs=1e-6)


@pytest.mark.parametrize(("trace", "path"), [("serving", SERVING), ("encoder", ENCODER)])
def test_stored_gpu_energy_is_the_counters(
    trace: str, path: Path, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(trace)
    rows = counter_j(path)
    (stored,) = run.sql(
        "SELECT sum(s.energy_j) FROM usage_shares s JOIN devices d "
        "ON d.id = s.device_id WHERE d.kind = 'gpu'"
    )[0]
    # The replay runs from the first row of the device file to the last.
    assert stored == pytest.approx(rows[-1][1] - rows[0][1], abs=1e-3)
    methods = run.sql(
        "SELECT DISTINCT s.method FROM usage_shares s JOIN devices d "
        "ON d.id = s.device_id WHERE d.kind = 'gpu'"
    )
    assert methods == [("measured",)]


def test_each_phase_matches_the_counter_within_one_percent(encoder: Run) -> None:
    rows = counter_j(ENCODER)
    phases = json.loads((ENCODER / "workload.json").read_text())
    checked = 0
    for phase in phases:
        if phase["pid"] is None or phase["name"].startswith("conc-"):
            continue
        t0, t1 = phase["t0"], phase["t1"]
        by_bucket: dict[str, float] = defaultdict(float)
        for _readings, shares in encoder.ticks:
            for s in shares:
                overlap = min(s.t1, t1) - max(s.t0, t0)
                if overlap > 0 and s.device_uid.startswith("GPU"):
                    who = "process" if s.target and s.target[1] == phase["pid"] else s.bucket
                    by_bucket[who] += s.energy_j * overlap / (s.t1 - s.t0)
        counter = counter_at(rows, t1) - counter_at(rows, t0)
        total = sum(by_bucket.values())
        assert total == pytest.approx(counter, rel=0.01), phase["name"]
        # The process gets all but the bare idle draw of the card.
        idle = by_bucket[Bucket.IDLE]
        assert idle == pytest.approx(70.0 * (t1 - t0), rel=0.03), phase["name"]
        assert by_bucket["process"] == pytest.approx(counter - idle, rel=0.01), phase["name"]
        checked += 1
    assert checked == 9


@pytest.mark.parametrize(("trace", "pids"), [("encoder", (534, 535)), ("serving", (416, 417))])
def test_two_processes_on_one_gpu_are_split_by_the_energy_model(
    trace: str, pids: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(trace)
    rows = run.sql(
        "SELECT t.pid, s.weight_basis, sum(s.energy_j) FROM usage_shares s "
        "JOIN targets t ON t.id = s.target_id JOIN devices d ON d.id = s.device_id "
        "WHERE d.kind = 'gpu' AND s.bucket = 'active' GROUP BY 1, 2"
    )
    got: dict[int, dict[str, float]] = defaultdict(dict)
    for pid, basis, energy in rows:
        got[pid][basis] = energy
    for pid in pids:
        # Shared intervals by the energy model; those it had alone by the meter's SM time.
        assert set(got[pid]) <= {"energy-model", "sm-util"}
        assert got[pid]["energy-model"] > 0.25 * sum(got[pid].values()) > 10.0


def test_every_request_gets_energy_and_calls_plus_overhead_equal_the_share(serving: Run) -> None:
    assert serving.agent is not None
    expected = {}
    for name in "ABC":
        lines = (SERVING / f"spans_{name}.jsonl").read_text().splitlines()
        header = json.loads(lines[0])
        expected[header["pid"]] = (
            header["model"],
            len(lines) - 1,
            sum(json.loads(x)[4] for x in lines[1:]),
        )
    rows = serving.sql(
        "SELECT t.pid, t.start_time, m.name, count(*), sum(r.items), sum(r.energy_j), "
        "min(r.energy_j) FROM requests r JOIN targets t ON t.id = r.target_id "
        "JOIN models m ON m.id = r.model_id GROUP BY 1, 2, 3"
    )
    assert {pid: (m, n, items) for pid, _st, m, n, items, _e, _min in rows} == expected
    for pid, start, _model, _n, _items, calls_j, min_j in rows:
        assert min_j > 0, "every request drew some energy"
        (active_j,) = serving.sql(
            "SELECT sum(s.energy_j) FROM usage_shares s JOIN targets t ON t.id = s.target_id "
            "WHERE t.pid = ? AND s.bucket = 'active'",
            pid,
        )[0]
        overhead = serving.agent.ledger.overhead_j[(SERVING.name, pid, start)]
        assert calls_j + overhead == pytest.approx(active_j, abs=1e-6)
        assert 0 < calls_j <= active_j
    assert serving.agent.ledger.late_spans == 0
    assert serving.agent.ledger.unattributed_calls == 0


def test_cpu_server_gets_estimated_cpu_energy(serving: Run) -> None:
    rows = serving.sql(
        "SELECT s.method, s.weight_basis, sum(s.energy_j) FROM usage_shares s "
        "JOIN targets t ON t.id = s.target_id WHERE t.pid = 418 AND s.bucket = 'active' "
        "GROUP BY 1, 2"
    )
    assert [(m, b) for m, b, _ in rows] == [("estimated", "cpu-seconds")]
    assert rows[0][2] > 0
    assert serving.sql("SELECT framework FROM targets WHERE pid = 418") == [("onnxruntime",)]


def test_replay_cli(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "r.db"
    r = run_cli(cli_env, "--db", f"sqlite:///{db}", "replay", str(SERVING))
    assert r.returncode == 0, r.stderr
    assert "as host h100-serving" in r.stdout and "meters nvml, cpu_estimate" in r.stdout
    bad = run_cli(cli_env, "--db", f"sqlite:///{db}", "replay", str(tmp_path / "nope"))
    assert bad.returncode == 2
    assert "is not a folder" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli(cli_env, "--db", f"sqlite:///{db}", "replay", str(empty))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"infermeter: error: {empty}: no plugin recognises any file in it"
    )


def test_methods_are_what_the_meters_said(serving: Run) -> None:
    methods = {r.method for readings, _ in serving.ticks for r in readings}
    assert methods == {Method.MEASURED, Method.ESTIMATED}


def test_requests_carry_nearly_all_their_process_active_energy(serving: Run) -> None:
    # Requests ran synchronously and nothing else ran in these processes, so
    # what is left as overhead must be small: the intervals where a process
    # drew energy (SM or CPU time) with no request in flight.
    assert serving.agent is not None
    rows = serving.sql(
        "SELECT t.pid, t.start_time, sum(s.energy_j) FROM usage_shares s "
        "JOIN targets t ON t.id = s.target_id WHERE s.bucket = 'active' "
        "AND t.pid IN (416, 417, 418) GROUP BY 1, 2"
    )
    assert len(rows) == 3
    for pid, start, active_j in rows:
        overhead = serving.agent.ledger.overhead_j[(SERVING.name, pid, start)]
        assert 0 <= overhead < 0.10 * active_j, pid


@pytest.mark.parametrize("pid", [416, 417])  # ResNet-50 fp32 and the bf16 encoder, on the GPU
def test_mean_request_energy_rises_with_batch_size(serving: Run, pid: int) -> None:
    rows = serving.sql(
        "SELECT r.items, avg(r.energy_j) FROM requests r JOIN targets t ON t.id = r.target_id "
        "WHERE t.pid = ? GROUP BY 1 ORDER BY 1",
        pid,
    )
    assert [items for items, _ in rows] == [1, 2, 4, 8]
    means = [j for _, j in rows]
    assert all(a < b for a, b in pairwise(means)), means
    # A batch of 8 is no longer charged what a batch of 1 is (wall-clock overlap did that).
    assert means[-1] > 1.5 * means[0]
