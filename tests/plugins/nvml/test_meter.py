"""The NVML meter over the two H100 recordings, through the pynvml stand-in.

Every test replays real rows (tests/fixtures/h100-*) through NvmlMeter, the
same class the agent runs over pynvml; the stand-in is the only fake.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import pynvml
import pytest
from support import FIXTURES
from support.waiting import eventually

from infermeter.attribute.split import Baseline, attribute_reading
from infermeter.config import CORE_OPTIONS, Config, build_config
from infermeter.plugins import nvml as plugin
from infermeter.plugins.nvml.devices import open_gpus
from infermeter.plugins.nvml.meter import COUNTER_PROBE_S, PROFILE_PIECE_S, NvmlMeter
from infermeter.plugins.nvml.replay import MigInstance, NvmlStandIn, ReplayNvmlMeter
from infermeter.plugins.nvml.samples import integrate, power_pieces
from infermeter.plugins.nvml.trace import replay_targets
from infermeter.records import Bucket, Method, Reading, Share

ENCODER = FIXTURES / "h100-resnet-encoder"
SERVING = FIXTURES / "h100-serving"
PHASES = json.loads((ENCODER / "workload.json").read_text())
SERVING_T0 = json.loads((SERVING / "spans_A.jsonl").read_text().splitlines()[0])["t0"]
SERVING_WINDOW = (SERVING_T0, SERVING_T0 + 40.0)
CONC = [p for p in PHASES if p["name"].startswith("conc-")]
CONC_WINDOW = (max(p["t0"] for p in CONC), min(p["t1"] for p in CONC))


def config(**nvml: object) -> Config:
    return build_config([*CORE_OPTIONS, *plugin.OPTIONS], {"nvml": nvml} if nvml else None)


def ticks(standin: NvmlStandIn, step: float = 1.0, extra: Iterable[float] = ()) -> list[float]:
    """A tick every ``step`` from the trace's start, its end, and any extra times."""
    out = {standin.end_t, *extra}
    t = standin.start_t
    while t < standin.end_t:
        out.add(t)
        t += step
    return sorted(out)


def replay(meter: NvmlMeter, times: Iterable[float]) -> list[Reading]:
    return [r for t in times for r in meter.read(t, {})]


def counter(standin: NvmlStandIn, t: float | None = None) -> float:
    """The recorded counter in mJ at t, linear between rows; the last value when t is None."""
    trace = standin.gpus[0].trace
    et, em = trace.energy_t, trace.energy_mj
    if t is None:
        return em[-1]
    i = bisect.bisect_right(et, t) - 1
    if i + 1 >= len(et):
        return em[-1]
    return em[i] + (em[i + 1] - em[i]) * (t - et[i]) / (et[i + 1] - et[i])


def baseline(reading: Reading) -> Baseline:
    d = reading.device
    return Baseline(d.idle_power_w or 0.0, d.keepwarm_power_w or 0.0)


def shares(readings: Iterable[Reading], trace_dir: Path) -> list[Share]:
    targets = {t.pid: t for t in replay_targets(trace_dir)}
    return [s for r in readings for s in attribute_reading(r, targets, baseline(r))]


def inside(readings: Iterable[Reading], t0: float, t1: float) -> list[Reading]:
    return [r for r in readings if r.t0 >= t0 - 1e-9 and r.t1 <= t1 + 1e-9]


@pytest.fixture(scope="module")
def encoder_run() -> tuple[NvmlStandIn, list[Reading]]:
    """The encoder trace at 1 s ticks plus a tick at every phase bound."""
    standin = NvmlStandIn.from_trace(ENCODER)
    bounds = [t for p in PHASES for t in (p["t0"], p["t1"])]
    return standin, replay(ReplayNvmlMeter(standin), ticks(standin, extra=bounds))


@pytest.fixture(scope="module")
def serving_run() -> tuple[NvmlStandIn, list[Reading]]:
    standin = NvmlStandIn.from_trace(SERVING)
    return standin, replay(ReplayNvmlMeter(standin), ticks(standin, extra=SERVING_WINDOW))


# -- (1) energy equals the counter ------------------------------------------------


@pytest.mark.parametrize("trace_dir", [ENCODER, SERVING], ids=["encoder", "serving"])
def test_measured_energy_sums_to_the_counter_delta(trace_dir: Path) -> None:
    standin = NvmlStandIn.from_trace(trace_dir)
    readings = replay(ReplayNvmlMeter(standin), ticks(standin))
    trace = standin.gpus[0].trace
    assert {r.method for r in readings} == {Method.MEASURED}
    assert all(r.energy_j >= 0 for r in readings)
    expected = (trace.energy_mj[-1] - trace.energy_mj[0]) / 1000.0
    assert sum(r.energy_j for r in readings) == pytest.approx(expected, abs=1e-6)
    # the readings tile the trace: no gap, no overlap
    assert readings[0].t0 == standin.start_t and readings[-1].t1 == standin.end_t
    assert all(a.t1 == b.t0 for a, b in itertools.pairwise(readings))


def test_short_ticks_wait_for_the_counter_and_split_it_by_power() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    meter = ReplayNvmlMeter(standin)
    times = ticks(standin, step=0.1)
    readings = replay(meter, times)
    trace = standin.gpus[0].trace
    assert sum(r.energy_j for r in readings) == pytest.approx(
        (trace.energy_mj[-1] - trace.energy_mj[0]) / 1000.0, abs=1e-6
    )
    assert len(readings) == len(times) - 1  # one per tick, none lost
    assert {r.method for r in readings} == {Method.MEASURED}
    assert any("split over ticks by power" in r.note for r in readings)
    # the ~3 ms counter is read about once a second, not at every 0.1 s tick
    duration = standin.end_t - standin.start_t
    assert standin.calls["nvmlDeviceGetTotalEnergyConsumption"] <= duration / 0.9 + 3
    # a tenth of a second while ResNet-50 bs32 runs draws about a tenth of its second
    busy = [r for r in readings if PHASES[2]["t0"] + 1 < r.t0 < PHASES[2]["t1"] - 1]
    watts = [r.energy_j / r.duration_s for r in busy]
    assert min(watts) > 200 and max(watts) < 700
    # a tenth of a second often misses the 5 Hz process samples: it then takes the
    # weights of its counter interval
    assert busy and all(dict(r.weights) == {439: 1.0} for r in busy)


# -- (2) attribution conserves every reading --------------------------------------


@pytest.mark.parametrize("run", ["encoder_run", "serving_run"])
def test_attribution_conserves_each_reading(run: str, request: pytest.FixtureRequest) -> None:
    _, readings = request.getfixturevalue(run)
    trace_dir = ENCODER if run == "encoder_run" else SERVING
    targets = {t.pid: t for t in replay_targets(trace_dir)}
    assert readings
    for r in readings:
        parts = attribute_reading(r, targets, baseline(r))
        assert sum(s.energy_j for s in parts) == pytest.approx(r.energy_j, abs=1e-6)
        assert all(s.method is r.method for s in parts)


# -- (3) per phase: the pid's energy plus idle is the counter's -------------------


@pytest.mark.parametrize("phase", [p for p in PHASES if p["pid"]], ids=lambda p: p["name"])
def test_phase_energy_matches_the_counter(
    phase: dict[str, object], encoder_run: tuple[NvmlStandIn, list[Reading]]
) -> None:
    standin, readings = encoder_run
    t0, t1 = float(phase["t0"]), float(phase["t1"])  # type: ignore[arg-type]
    # phases that overlap this one (the two concurrent processes) share its window
    pids = {p["pid"] for p in PHASES if p["pid"] and p["t0"] < t1 and p["t1"] > t0}
    window = inside(readings, t0, t1)
    assert sum(r.duration_s for r in window) == pytest.approx(t1 - t0, abs=1e-6)
    got = shares(window, ENCODER)
    theirs = sum(
        s.energy_j
        for s in got
        if s.target and s.target[1] in pids and s.bucket in (Bucket.ACTIVE, Bucket.KEEPWARM)
    )
    idle = sum(s.energy_j for s in got if s.bucket is Bucket.IDLE)
    measured = (counter(standin, t1) - counter(standin, t0)) / 1000.0
    assert theirs + idle == pytest.approx(measured, rel=0.01)
    # idle is the H100's 70 W: what the pids drew is the counter less 70 W x duration
    assert idle == pytest.approx(70.0 * (t1 - t0), rel=1e-6)
    assert theirs == pytest.approx(measured - 70.0 * (t1 - t0), rel=0.01)


# -- (4) two processes time-sharing the GPU ---------------------------------------


def _sm_share(trace_dir: Path, t0: float, t1: float, a: int, b: int) -> float:
    sm = {a: 0, b: 0}
    for line in (trace_dir / "nvml_processes.jsonl").read_text().splitlines():
        row = json.loads(line)
        if t0 < row["t"] <= t1:
            for s in row.get("samples", []):
                if s[0] in sm:
                    sm[s[0]] += s[1]
    return sm[a] / (sm[a] + sm[b])


@pytest.mark.parametrize(
    ("run", "trace_dir", "window", "a", "b"),
    [
        ("serving_run", SERVING, SERVING_WINDOW, 416, 417),
        ("encoder_run", ENCODER, CONC_WINDOW, 534, 535),
    ],
    ids=["serving", "conc"],
)
def test_two_processes_split_by_sm_samples(
    run: str,
    trace_dir: Path,
    window: tuple[float, float],
    a: int,
    b: int,
    request: pytest.FixtureRequest,
) -> None:
    _, readings = request.getfixturevalue(run)
    window_readings = inside(readings, *window)
    active = {a: 0.0, b: 0.0}
    for r in window_readings:
        parts = attribute_reading(r, {t.pid: t for t in replay_targets(trace_dir)}, baseline(r))
        mine = {s.target[1]: s.energy_j for s in parts if s.bucket is Bucket.ACTIVE and s.target}
        for pid in active:
            active[pid] += mine.get(pid, 0.0)
        if len(mine) == 2:  # within a reading, active energy follows the weights exactly
            assert mine[a] / mine[b] == pytest.approx(r.weights[a] / r.weights[b], rel=1e-9)
    assert active[a] > 100 and active[b] > 100
    assert {r.weight_basis for r in window_readings} == {"sm-util"}
    share = active[a] / (active[a] + active[b])
    assert share == pytest.approx(_sm_share(trace_dir, *window, a, b), abs=0.02)


def test_weights_are_the_smutil_of_the_interval(
    serving_run: tuple[NvmlStandIn, list[Reading]],
) -> None:
    _, readings = serving_run
    rows = [json.loads(x) for x in (SERVING / "nvml_processes.jsonl").read_text().splitlines()]
    checked = 0
    for r in inside(readings, *SERVING_WINDOW):
        sm: dict[int, int] = {}
        for row in rows:
            if r.t0 < row["t"] <= r.t1:
                for s in row.get("samples", []):
                    sm[s[0]] = sm.get(s[0], 0) + s[1]
        total = sum(sm.values())
        if total:
            expected = {pid: v / total for pid, v in sm.items() if v}
            assert dict(r.weights) == pytest.approx(expected)
            checked += 1
    assert checked > 30


# -- (5) nobody on the GPU ---------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "trace_dir", "window"),
    [
        ("encoder_run", ENCODER, (PHASES[0]["t0"], PHASES[0]["t1"])),
        (
            "serving_run",
            SERVING,
            tuple(json.loads((SERVING / "meta.json").read_text())["idle_window"]),
        ),
    ],
    ids=["encoder-idle", "serving-idle"],
)
def test_idle_window_charges_no_target(
    run: str, trace_dir: Path, window: tuple[float, float], request: pytest.FixtureRequest
) -> None:
    _, readings = request.getfixturevalue(run)
    quiet = [r for r in readings if r.t0 >= window[0] - 1.0 and r.t1 <= window[1]]
    assert quiet and all(not r.holders and not r.weights for r in quiet)
    got = shares(quiet, trace_dir)
    assert got and all(s.target is None for s in got)
    assert {s.bucket for s in got} <= {Bucket.IDLE, Bucket.OTHER}
    assert sum(s.energy_j for s in got) == pytest.approx(sum(r.energy_j for r in quiet))


# -- (6) errors degrade, never raise ---------------------------------------------------


def test_no_energy_counter_integrates_instant_power(caplog: pytest.LogCaptureFixture) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.fail("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVMLError_NotSupported)
    with caplog.at_level(logging.INFO, logger="infermeter.plugins.nvml"):
        readings = replay(ReplayNvmlMeter(standin), ticks(standin))
    assert {r.method for r in readings} == {Method.INTEGRATED}
    assert all("NVMLError_NotSupported" in r.note for r in readings)
    total = sum(r.energy_j for r in readings)
    assert total == pytest.approx(
        (counter(standin) - standin.gpus[0].trace.energy_mj[0]) / 1e3, rel=0.01
    )
    # not asked every tick: once at the start, then one probe every COUNTER_PROBE_S
    duration = standin.end_t - standin.start_t
    probes = standin.calls["nvmlDeviceGetTotalEnergyConsumption"] - 1
    assert 1 <= probes <= duration / COUNTER_PROBE_S
    assert sum("energy counter unavailable" in m for m in caplog.messages) == 1


def test_without_instant_power_the_one_second_average_is_integrated() -> None:
    standin = NvmlStandIn.from_trace(SERVING)
    standin.fail("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVMLError_NoPermission)
    standin.fail("NVML_FI_DEV_POWER_INSTANT", pynvml.NVMLError_NotSupported)
    readings = replay(ReplayNvmlMeter(standin), ticks(standin))
    assert {r.method for r in readings} == {Method.INTEGRATED}
    assert all("1 s average" in r.note for r in readings)
    trace = standin.gpus[0].trace
    expected = (trace.energy_mj[-1] - trace.energy_mj[0]) / 1e3
    assert sum(r.energy_j for r in readings) == pytest.approx(expected, rel=0.02)


def test_no_permission_for_process_utilisation_splits_by_gpu_memory() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.fail("nvmlDeviceGetProcessUtilization", pynvml.NVMLError_NoPermission)
    readings = inside(replay(ReplayNvmlMeter(standin), ticks(standin)), *CONC_WINDOW)
    assert readings and {r.weight_basis for r in readings} == {"gpu-memory"}
    rows = [json.loads(x) for x in (ENCODER / "nvml_processes.jsonl").read_text().splitlines()]
    for r in readings:
        last = [row for row in rows if row["t"] <= r.t1][-1]  # the read's own poll
        memory = {pid: float(m) for pid, m in last["procs"]}
        assert dict(r.weights) == pytest.approx(
            {pid: m / sum(memory.values()) for pid, m in memory.items()}
        )
        assert r.holders == {534, 535}


def test_no_process_memory_either_splits_equally(tmp_path: Path) -> None:
    trace = tmp_path / "no-memory"
    shutil.copytree(ENCODER, trace)
    lines = (trace / "nvml_processes.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    for row in rows:
        row["procs"] = [[pid, None] for pid, _ in row["procs"]]  # as on WDDM
    (trace / "nvml_processes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    standin = NvmlStandIn.from_trace(trace)
    standin.fail("nvmlDeviceGetProcessUtilization", pynvml.NVMLError_NotSupported)
    readings = inside(replay(ReplayNvmlMeter(standin), ticks(standin)), *CONC_WINDOW)
    assert readings and {r.weight_basis for r in readings} == {"equal"}
    assert all(dict(r.weights) == {534: 0.5, 535: 0.5} for r in readings)


def test_lost_gpu_gives_no_reading_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    meter = ReplayNvmlMeter(standin)
    times = ticks(standin)
    before = replay(meter, times[:50])
    standin.fail("*", pynvml.NVMLError_GpuIsLost)
    with caplog.at_level(logging.WARNING, logger="infermeter.plugins.nvml"):
        lost = replay(meter, times[50:60])
        logged = len(caplog.records)
        lost += replay(meter, times[60:70])
    assert before and lost == []
    assert logged > 0 and len(caplog.records) == logged  # once per reason, not every tick
    assert all(
        "GpuIsLost" in r.getMessage() or "no energy" in r.getMessage() for r in caplog.records
    )
    standin.heal()
    after = replay(meter, times[70:80])
    assert after[0].method is Method.INTEGRATED and "re-read" in after[0].note
    assert {r.method for r in after[1:]} == {Method.MEASURED}
    assert all(r.energy_j > 0 for r in after)


def test_counter_reset_is_never_negative(tmp_path: Path) -> None:
    trace = tmp_path / "reset"
    shutil.copytree(SERVING, trace)
    lines = (trace / "nvml_device0.csv").read_text().splitlines()
    cut = len(lines) // 2
    out = lines[:cut]
    # the driver reloads: the counter restarts near zero (1 J), never below it
    restart = next(int(c[1]) for c in (x.split(",") for x in lines[cut:]) if c[1]) - 1000
    for line in lines[cut:]:
        cells = line.split(",")
        if cells[1]:
            cells[1] = str(int(cells[1]) - restart)
        out.append(",".join(cells))
    (trace / "nvml_device0.csv").write_text("\n".join(out) + "\n")
    readings = replay(
        ReplayNvmlMeter(NvmlStandIn.from_trace(trace)), ticks(NvmlStandIn.from_trace(trace))
    )
    assert all(r.energy_j >= 0 for r in readings)
    reset = [r for r in readings if r.method is Method.INTEGRATED]
    assert len(reset) == 1 and "went back" in reset[0].note
    assert 50 < reset[0].energy_j / reset[0].duration_s < 400  # power, not a counter jump


def test_no_library_means_no_meters_and_one_line(caplog: pytest.LogCaptureFixture) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.fail("nvmlInit", pynvml.NVMLError_LibraryNotFound)
    with caplog.at_level(logging.DEBUG, logger="infermeter.plugins.nvml"):
        assert plugin.open_meters(standin, config()) == []
    assert len(caplog.records) == 1
    assert "libnvidia-ml.so.1" in caplog.records[0].getMessage()


def test_driver_not_loaded_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.fail("nvmlInit", pynvml.NVMLError_DriverNotLoaded)
    with caplog.at_level(logging.DEBUG, logger="infermeter.plugins.nvml"):
        assert plugin.open_meters(standin, config()) == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def nvml_devices_here() -> int:
    """How many GPUs the real NVML library sees on this host (0 without a driver)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_the_hook_follows_what_pynvml_says_on_this_host() -> None:
    expected = 1 if nvml_devices_here() else 0
    meters = plugin.infermeter_meters(config())
    try:
        assert len(meters) == expected
    finally:
        for m in meters:
            m.close()


def test_disabled_in_config_gives_nothing() -> None:
    assert plugin.open_meters(NvmlStandIn.from_trace(ENCODER), config(enabled=False)) == []
    assert plugin.infermeter_replay_meters(ENCODER, config(enabled=False)) == []


# -- (8) MIG ---------------------------------------------------------------------------


def test_mig_instances_are_devices_sharing_the_gpu_energy() -> None:
    big = MigInstance("MIG-a", "NVIDIA H100 80GB HBM3 MIG 4g.40gb", 40 << 30, frozenset({534}))
    small = MigInstance("MIG-b", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 10 << 30, frozenset({535}))
    standin = NvmlStandIn.from_trace(ENCODER, mig={0: [big, small]})
    meter = ReplayNvmlMeter(standin)
    parent = "GPU-18b326f0-07a3-c660-b0fc-a48acddbdee2"
    assert [(d.uid, d.parent_uid) for d in meter.devices] == [("MIG-a", parent), ("MIG-b", parent)]
    assert meter.devices[0].idle_power_w == pytest.approx(70.0 * 0.8)
    readings = replay(meter, ticks(standin))
    trace = standin.gpus[0].trace
    assert sum(r.energy_j for r in readings) == pytest.approx(
        (trace.energy_mj[-1] - trace.energy_mj[0]) / 1e3, abs=1e-6
    )
    by_tick: dict[float, dict[str, Reading]] = {}
    for r in readings:
        by_tick.setdefault(r.t0, {})[r.device.uid] = r
    assert all(set(pair) == {"MIG-a", "MIG-b"} for pair in by_tick.values())
    for pair in by_tick.values():
        a, b = pair["MIG-a"], pair["MIG-b"]
        assert a.energy_j == pytest.approx(4 * b.energy_j)
        assert "MIG" in a.note and a.busy_fraction is None
    conc = inside(readings, *CONC_WINDOW)
    assert {r.weight_basis for r in conc} == {"gpu-memory"}
    assert all(dict(r.weights) == {534: 1.0} for r in conc if r.device.uid == "MIG-a")
    assert all(r.holders == {535} for r in conc if r.device.uid == "MIG-b")
    got = shares(conc, ENCODER)
    assert sum(s.energy_j for s in got) == pytest.approx(sum(r.energy_j for r in conc))


# -- cost and the live poller ------------------------------------------------------------


def test_read_costs_well_under_a_millisecond() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    meter = NvmlMeter(standin, open_gpus(standin), owns_init=False)
    t = PHASES[2]["t0"]
    standin.clock.now = t
    meter.read(t, {})
    costs = []
    for _ in range(200):
        t += 1.0
        standin.clock.now = t
        start = time.process_time()
        meter.read(t, {})
        costs.append(time.process_time() - start)
    costs.sort()
    assert costs[len(costs) // 2] < 1e-3  # the stand-in's own answers included


def test_live_poller_thread_polls_until_closed() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.nvmlInit()
    meter = NvmlMeter(standin, open_gpus(standin), clock=lambda: standin.clock.now)
    meter.start_polling(0.005)
    eventually(lambda: standin.calls["nvmlDeviceGetFieldValues"] >= 5, poll_s=0.005)
    meter.close()
    polled = standin.calls["nvmlDeviceGetFieldValues"]
    assert polled >= 5
    time.sleep(0.05)
    assert standin.calls["nvmlDeviceGetFieldValues"] == polled  # the thread stopped
    assert standin.shutdown_count == 1
    meter.close()
    assert standin.shutdown_count == 1  # one nvmlShutdown for one nvmlInit


def test_the_recorders_hook_follows_what_pynvml_says(tmp_path: Path) -> None:
    expected = 1 if nvml_devices_here() else 0
    recorders = plugin.infermeter_recorders(tmp_path, config())
    try:
        assert len(recorders) == expected
        assert all(r.period_s == 0.05 for r in recorders)
    finally:
        for r in recorders:
            r.close()


def test_config_options_are_declared_and_read() -> None:
    names = {o.name: o.default for o in plugin.infermeter_config_options()}
    assert names == {"nvml.enabled": True, "nvml.process_poll_s": 0.2}
    assert config(process_poll_s=1)["nvml.process_poll_s"] == 1.0


def test_power_integral_is_trapezoids_with_flat_ends() -> None:
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0)]
    assert integrate(samples, 0.0, 2.0) == pytest.approx(150.0 + 200.0)
    assert integrate(samples, 0.5, 1.0) == pytest.approx(0.5 * (150.0 + 200.0) / 2)
    assert integrate(samples, 1.5, 3.0) == pytest.approx(1.5 * 200.0)  # flat after the last
    assert integrate(samples, 2.0, 3.0) is None  # nothing seen inside (2, 3]
    assert integrate(samples, 1.0, 1.0) is None


def test_power_pieces_are_cut_at_samples_and_add_up_to_the_integral() -> None:
    samples = [(0.05 * k, 100.0 if k < 10 else 400.0) for k in range(41)]  # a step at 0.5 s
    for t0, t1 in ((0.0, 2.0), (0.13, 1.01), (0.47, 0.61), (1.9, 2.5)):
        pieces = power_pieces(samples, t0, t1, 0.1)
        assert pieces is not None
        assert pieces[-1][0] == t1
        assert sum(j for _t, j in pieces) == pytest.approx(integrate(samples, t0, t1))
        ends = [t0, *(t for t, _j in pieces)]
        assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(ends)) or len(pieces) == 1
    assert power_pieces(samples, 2.0, 3.0, 0.1) is None  # nothing seen inside (2, 3]
    assert power_pieces([(0.0, 0.0), (1.0, 0.0)], 0.0, 1.0, 0.1) is None  # nothing to shape by


def test_every_reading_carries_its_energy_spread_as_the_instant_power_was() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    readings = replay(ReplayNvmlMeter(standin), ticks(standin))
    assert all(r.profile is not None for r in readings if r.energy_j > 0)
    for r in readings:
        if r.profile is None:
            continue
        assert sum(j for _t, j in r.profile) == pytest.approx(r.energy_j, abs=1e-9)
        assert r.profile[-1][0] == r.t1
        ends = [r.t0, *(t for t, _j in r.profile)]
        assert all(b - a >= PROFILE_PIECE_S - 1e-9 for a, b in itertools.pairwise(ends))
    # The tick where ResNet-50 fp32 bs1 starts (118 W -> ~180 W at 41.0 s) puts
    # most of its energy after the start, not spread evenly over the second.
    start = PHASES[1]["t0"]
    (edge,) = [r for r in readings if r.t0 < start < r.t1]
    assert edge.profile is not None
    after = sum(j for t, j in edge.profile if t > start + 0.1)
    by_time = edge.energy_j * (edge.t1 - start - 0.1) / edge.duration_s
    assert after > by_time * 1.05
