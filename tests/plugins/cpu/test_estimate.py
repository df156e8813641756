"""The CPU estimate: its power table, live CPU-seconds weights, replay and recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FIXTURES

from infermeter.attribute.split import Baseline, attribute_reading
from infermeter.config import CORE_OPTIONS, Config, build_config
from infermeter.discover.processes import start_time
from infermeter.discover.targets import Discovery
from infermeter.hookspecs import Meter, Recorder
from infermeter.plugins import procfs
from infermeter.plugins.cpu import estimate as cpu_estimate
from infermeter.plugins.cpu import rapl
from infermeter.plugins.cpu.estimate import CpuEstimateMeter
from infermeter.plugins.cpu.power import (
    GENERIC_PER_THREAD_W,
    PER_THREAD_W,
    cpu_model_name,
    micro_architecture,
    power_model,
)
from infermeter.plugins.cpu.trace import RecordedTimes, read_rows
from infermeter.plugins.cpu.weights import OTHER_PID, PsutilTimes
from infermeter.records import Bucket, DeviceKind, Framework, Method, Reading, Target

FIXTURE = FIXTURES / "h100-serving"

BURN_THEN_SLEEP = """
import time
print("go", flush=True)
end = time.process_time() + {seconds}
while time.process_time() < end:
    pass
print("done", flush=True)
time.sleep(60)
"""


def options() -> list[Any]:
    return [
        *CORE_OPTIONS,
        *cpu_estimate.infermeter_config_options(),
        *rapl.infermeter_config_options(),
        *procfs.infermeter_config_options(),
    ]


def config(**sections: dict[str, Any]) -> Config:
    values: dict[str, dict[str, Any]] = {"rapl": {"root": "/nonexistent-powercap"}}
    values.update(sections)
    return build_config(options(), values)


def cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat, independent of psutil."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """user + nice + system + irq + softirq from /proc/stat, independent of psutil."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)


def wait_line(proc: subprocess.Popen[bytes], expected: bytes) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == expected


def target_of(proc: subprocess.Popen[bytes]) -> Target:
    st = start_time(proc.pid)
    assert st is not None
    return Target("h", proc.pid, st)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


def assert_conserves(reading: Reading, targets: dict[int, Target], idle_w: float) -> list[Any]:
    shares = attribute_reading(reading, targets, Baseline(idle_power_w=idle_w))
    assert sum(s.energy_j for s in shares) == pytest.approx(reading.energy_j, abs=1e-6)
    assert all(s.method is Method.ESTIMATED for s in shares)
    return shares


# --- the power table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "arch"),
    [
        ("Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", "Skylake"),
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Cascade Lake"),
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Ice Lake"),
        ("Intel(R) Xeon(R) Platinum 8480+", "Sapphire Rapids"),
        ("Intel(R) Xeon(R) Platinum 8480C", "Sapphire Rapids"),
        ("Intel(R) Xeon(R) Platinum 8592+", "Emerald Rapids"),
        ("Intel(R) Xeon(R) 6980P", "Granite Rapids"),
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Broadwell"),
        ("Intel(R) Xeon(R) CPU E5-2676 v3 @ 2.40GHz", "Haswell"),
        ("AMD EPYC 7551 32-Core Processor", "EPYC 1st Gen"),
        ("AMD EPYC 7742 64-Core Processor", "EPYC 2nd Gen"),
        ("AMD EPYC 7R32", "EPYC 2nd Gen"),
        ("AMD EPYC 7763 64-Core Processor", "EPYC 3rd Gen"),
        ("AMD EPYC 7R13 Processor", "EPYC 3rd Gen"),
        ("AMD EPYC 9654 96-Core Processor", "EPYC 4th Gen"),
        ("AMD EPYC 9755 128-Core Processor", None),  # 5th gen: left out on purpose
        ("AMD EPYC", None),
        ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", None),
        ("", None),
    ],
)
def test_micro_architecture_from_model_name(model_name: str, arch: str | None) -> None:
    assert micro_architecture(model_name) == arch


def test_power_model_scales_per_thread_and_config_wins(tmp_path: Path) -> None:
    generic = power_model("AMD EPYC", 2)
    assert (generic.idle_w, generic.max_w) == pytest.approx((1.48, 7.0))
    assert generic.source.startswith("generic")
    milan = power_model("AMD EPYC 7763 64-Core Processor", 128)
    assert milan.idle_w == pytest.approx(PER_THREAD_W["EPYC 3rd Gen"][0] * 128)
    assert milan.max_w == pytest.approx(PER_THREAD_W["EPYC 3rd Gen"][1] * 128)
    assert milan.power_w(0.5) == pytest.approx((milan.idle_w + milan.max_w) / 2)
    assert milan.power_w(1.7) == milan.max_w and milan.power_w(-1) == milan.idle_w
    forced = power_model("AMD EPYC", 4, tdp_w=200.0, idle_w=50.0)
    assert (forced.idle_w, forced.max_w) == (50.0, 200.0) and forced.source.startswith("config")
    half = power_model("AMD EPYC", 4, tdp_w=100.0)
    assert (half.idle_w, half.max_w) == (GENERIC_PER_THREAD_W[0] * 4, 100.0)
    clamped = power_model("AMD EPYC", 4, tdp_w=10.0, idle_w=20.0)
    assert clamped.idle_w == clamped.max_w == 10.0
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7R13 "
        "Processor\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7R13 Processor\n"
    )
    assert cpu_model_name(str(cpuinfo)) == "AMD EPYC 7R13 Processor"
    assert cpu_model_name(str(tmp_path / "missing")) == ""


# --- live: real processes, real CPU time -----------------------------------------------


@pytest.mark.slow
def test_busy_target_gets_energy_in_proportion_to_its_cpu_time(
    children: list[subprocess.Popen[bytes]],
) -> None:
    busy = spawn(BURN_THEN_SLEEP.format(seconds=4.0))
    idle = spawn(BURN_THEN_SLEEP.format(seconds=0.0))
    children += [busy, idle]
    wait_line(busy, b"go\n")
    wait_line(idle, b"go\n")
    wait_line(idle, b"done\n")
    targets = {p.pid: target_of(p) for p in (busy, idle)}
    [meter] = cpu_estimate.infermeter_meters(config())
    assert isinstance(meter, CpuEstimateMeter) and isinstance(meter, Meter)
    power = meter.power

    t0 = time.time()
    cpu0, host0 = cpu_seconds(busy.pid), host_busy_seconds()
    assert meter.read(t0, targets) == []
    time.sleep(2.0)
    t1 = time.time()
    [reading] = meter.read(t1, targets)
    cpu1, host1 = cpu_seconds(busy.pid), host_busy_seconds()
    assert busy.poll() is None  # still burning through the whole interval

    assert reading.method is Method.ESTIMATED
    assert reading.device.uid == "cpu" and reading.device.kind is DeviceKind.CPU
    assert reading.device.idle_power_w == power.idle_w
    assert reading.device.keepwarm_power_w == 0.0
    assert reading.weight_basis == "cpu-seconds"
    assert (reading.t0, reading.t1) == (t0, t1)
    used, host = cpu1 - cpu0, host1 - host0
    assert used > 0.5  # it had a core for much of the 2 s
    assert reading.weights[busy.pid] == pytest.approx(used, abs=0.03)
    assert reading.weights.get(idle.pid, 0.0) < 0.02
    capacity = (t1 - t0) * power.ncpu
    assert reading.busy_fraction == pytest.approx(host / capacity, abs=0.05)
    assert reading.energy_j == pytest.approx(power.power_w(reading.busy_fraction) * (t1 - t0))

    shares = assert_conserves(reading, targets, power.idle_w)
    by_bucket: dict[Bucket, float] = {}
    for s in shares:
        by_bucket[s.bucket] = by_bucket.get(s.bucket, 0.0) + s.energy_j
    assert by_bucket[Bucket.IDLE] == pytest.approx(power.idle_w * (t1 - t0))
    busy_active = sum(s.energy_j for s in shares if s.target == targets[busy.pid].key)
    assert all(s.target != targets[idle.pid].key for s in shares if s.energy_j > 1e-3)
    non_idle = reading.energy_j - by_bucket[Bucket.IDLE]
    # its share of the utilisation-driven energy is its share of the host's busy time
    assert busy_active / non_idle == pytest.approx(used / host, abs=0.05)


@pytest.mark.slow
def test_target_born_inside_the_interval_is_charged_from_its_start(
    children: list[subprocess.Popen[bytes]],
) -> None:
    meter = CpuEstimateMeter(PsutilTimes(), power_model("", os.cpu_count() or 1))
    assert meter.read(time.time(), {}) == []
    child = spawn(BURN_THEN_SLEEP.format(seconds=0.5))
    children.append(child)
    wait_line(child, b"go\n")
    wait_line(child, b"done\n")
    targets = {child.pid: target_of(child)}
    [reading] = meter.read(time.time(), targets)
    total = cpu_seconds(child.pid)  # all of its life, interpreter start-up included
    # /proc counts whole clock ticks: 0.5 s of process_time can read as 0.49.
    assert total >= 0.45
    assert reading.weights[child.pid] == pytest.approx(total, abs=0.03)


@pytest.mark.slow
def test_target_that_exits_between_ticks_does_not_break_the_meter(
    children: list[subprocess.Popen[bytes]],
) -> None:
    child = spawn(BURN_THEN_SLEEP.format(seconds=0.3))
    children.append(child)
    wait_line(child, b"go\n")
    targets = {child.pid: target_of(child)}
    meter = CpuEstimateMeter(PsutilTimes(), power_model("", os.cpu_count() or 1))
    meter.read(time.time(), targets)
    wait_line(child, b"done\n")
    child.kill()
    child.wait()
    time.sleep(0.1)
    [reading] = meter.read(time.time(), targets)
    assert child.pid not in reading.weights
    assert reading.weights[OTHER_PID] > 0.2  # its last CPU time is still the host's
    [again] = meter.read(time.time() + 0.5, targets)
    assert child.pid not in again.weights
    assert_conserves(reading, {}, meter.power.idle_w)


# --- replay of the recorded H100 serving trace -----------------------------------------


def test_replay_of_the_h100_serving_trace() -> None:
    cfg = config()
    rows = read_rows(FIXTURE / "cpu_times.jsonl")
    assert cpu_estimate.infermeter_replay_window(FIXTURE) == (rows[0]["t"], rows[-1]["t"])
    targets = {t.pid: t for t in cpu_estimate.infermeter_replay_targets(FIXTURE, cfg)}
    assert set(targets) == {416, 417, 418, 556}
    assert targets[416].framework is Framework.TORCH and targets[416].model == "resnet50"
    assert targets[417].framework is Framework.TORCH and targets[417].model == "encoder"
    assert targets[418].framework is Framework.ONNXRUNTIME and targets[418].model == "mlp"
    assert targets[556].framework is Framework.UNKNOWN and targets[556].model is None
    assert targets[416].start_time == next(r["t"] for r in rows if "416" in r["procs"])

    [meter] = cpu_estimate.infermeter_replay_meters(FIXTURE, cfg)
    assert isinstance(meter, CpuEstimateMeter)
    assert meter.power.ncpu == 16 and meter.power.idle_w == pytest.approx(0.74 * 16)

    ticks = rows[::4]  # 1 s ticks that fall exactly on recorded rows
    totals: dict[int, float] = {}
    first_tick_with_418 = None
    for k, row in enumerate(ticks):
        readings = meter.read(row["t"], targets)
        if k == 0:
            assert readings == []
            continue
        [reading] = readings
        prev = ticks[k - 1]
        dt = row["t"] - prev["t"]
        busy = sum(row["system"][f] - prev["system"][f] for f in ("user", "system"))
        assert reading.busy_fraction == pytest.approx(busy / (dt * 16), abs=1e-9)
        assert reading.energy_j == pytest.approx(meter.power.power_w(busy / (dt * 16)) * dt)
        assert reading.weights.get(OTHER_PID, 0.0) >= 0
        assert_conserves(reading, targets, meter.power.idle_w)
        for pid, w in reading.weights.items():
            totals[pid] = totals.get(pid, 0.0) + w
        if first_tick_with_418 is None and "418" in row["procs"]:
            first_tick_with_418 = row

    assert first_tick_with_418 is not None

    def cpu(row: dict[str, Any], pid: str) -> float:
        return float(row["procs"][pid]["user"] + row["procs"][pid]["system"])

    last = [row for row in ticks if "418" in row["procs"]][-1]
    assert last is not ticks[-1]  # the servers stopped before the recording did
    assert totals[418] == pytest.approx(cpu(last, "418") - cpu(first_tick_with_418, "418"))
    assert totals[418] > totals[416] > totals[417] > 0  # the CPU-bound ONNX server leads


def test_replay_interpolates_between_rows() -> None:
    source = RecordedTimes.load(FIXTURE / "cpu_times.jsonl")
    rows = read_rows(FIXTURE / "cpu_times.jsonl")
    a, b = rows[200], rows[201]
    mid = (a["t"] + b["t"]) / 2
    sys_a, sys_b = source.system(a["t"]), source.system(b["t"])
    sys_mid = source.system(mid)
    assert sys_a is not None and sys_b is not None and sys_mid is not None
    assert sys_mid.busy_s == pytest.approx((sys_a.busy_s + sys_b.busy_s) / 2)
    va = source.process(418, 0.0, a["t"])
    vb = source.process(418, 0.0, b["t"])
    assert va is not None and vb is not None
    assert source.process(418, 0.0, mid) == pytest.approx((va + vb) / 2)
    assert source.system(rows[0]["t"] - 1) is None
    assert source.process(418, 0.0, rows[0]["t"]) is None  # not recorded yet
    assert source.process(556, 0.0, rows[-1]["t"] + 10) is not None  # held after the end


def test_replay_hooks_ignore_folders_without_the_file(tmp_path: Path) -> None:
    cfg = config()
    assert cpu_estimate.infermeter_replay_meters(tmp_path, cfg) == []
    assert cpu_estimate.infermeter_replay_window(tmp_path) is None
    assert cpu_estimate.infermeter_replay_targets(tmp_path, cfg) == []
    (tmp_path / "cpu_times.jsonl").write_text("not json\n")
    assert cpu_estimate.infermeter_replay_meters(tmp_path, cfg) == []
    never = config(cpu={"estimate": "never"})
    assert cpu_estimate.infermeter_replay_meters(FIXTURE, never) == []


# --- recording, then replaying what was recorded ---------------------------------------


LATE_ORT = (
    "import time; time.sleep(1.2); import onnxruntime; print('go', flush=True); time.sleep(60)"
)


@pytest.mark.slow
def test_recorder_writes_the_fixture_format_and_replays(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    cfg = config(discovery={"rules": [{"cmdline": "serve-by-rule", "labels": {"model": "m"}}]})
    late = spawn(LATE_ORT)
    ruled = spawn("import time; time.sleep(60)", "serve-by-rule")
    plain = spawn("import time; time.sleep(60)")
    children += [late, ruled, plain]
    [recorder] = cpu_estimate.infermeter_recorders(tmp_path, cfg)
    assert recorder.period_s == 0.25 and isinstance(recorder, Recorder)
    # The core's discovery, with the procfs plugin deciding, names the targets
    # as `infermeter record` does; a young process is asked again later.
    discovery = Discovery(cfg.host, lambda p: procfs.infermeter_discover(p, cfg))
    # Sample until the late process has mapped its runtime, then long enough for a rescan.
    samples, extra, deadline = 0, None, time.monotonic() + 60
    t = time.time()
    while extra is None or extra > 0:
        assert time.monotonic() < deadline, "onnxruntime never appeared in the late child's maps"
        recorder.sample(time.time(), discovery.scan())
        samples += 1
        if extra is not None:
            extra -= 1
        elif samples >= 4 and b"onnxruntime" in Path(f"/proc/{late.pid}/maps").read_bytes():
            extra = 8  # two seconds: at least one rescan after it mapped
        t += recorder.period_s
        time.sleep(max(t - time.time(), 0))
    recorder.close()
    wait_line(late, b"go\n")

    rows = [json.loads(line) for line in (tmp_path / "cpu_times.jsonl").read_text().splitlines()]
    assert len(rows) == samples
    fixture_row = json.loads((FIXTURE / "cpu_times.jsonl").read_text().splitlines()[-1])
    for row in rows:
        assert set(row) == set(fixture_row)
        assert set(fixture_row["system"]) <= set(row["system"])
        for entry in row["procs"].values():
            assert set(entry) == set(next(iter(fixture_row["procs"].values())))
    first, last = rows[0]["procs"], rows[-1]["procs"]
    assert str(ruled.pid) in first and str(ruled.pid) in last
    # a young process that maps its runtime after the first look is found on a later one
    # (discovery re-asks every scan, the recorder samples four times a second)
    assert str(late.pid) not in first and str(late.pid) in last
    assert all(str(p.pid) not in r["procs"] for r in rows for p in (plain,))
    assert all(str(os.getpid()) not in r["procs"] for r in rows)
    info = json.loads((tmp_path / "cpu_info.json").read_text())
    assert info == {"model_name": cpu_model_name(), "ncpu": os.cpu_count()}
    # what the recorder writes, the replay's check reads whole
    assert cpu_estimate.infermeter_replay_check(tmp_path) == []

    [meter] = cpu_estimate.infermeter_replay_meters(tmp_path, cfg)
    targets = {t.pid: t for t in cpu_estimate.infermeter_replay_targets(tmp_path, cfg)}
    assert {late.pid, ruled.pid} <= set(targets)
    window = cpu_estimate.infermeter_replay_window(tmp_path)
    assert window == (rows[0]["t"], rows[-1]["t"])
    readings = [
        r
        for now in (window[0], window[0] + 1.0, window[0] + 2.0, window[1])
        for r in meter.read(now, targets)
    ]
    assert len(readings) == 3
    for r in readings:
        assert r.energy_j > 0 and r.method is Method.ESTIMATED
        assert_conserves(r, targets, meter.power.idle_w)
