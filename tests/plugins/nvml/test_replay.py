"""The NVML stand-in, the recorder and the replay hooks, on the H100 recordings."""

from __future__ import annotations

import csv
import json
from importlib.metadata import entry_points
from pathlib import Path

import pynvml
import pytest
from support import FIXTURES

from infermeter.config import CORE_OPTIONS, Config, build_config
from infermeter.hookspecs import Meter, Recorder
from infermeter.plugin_manager import PluginManager
from infermeter.plugins import nvml as plugin
from infermeter.plugins.nvml.devices import baseline_for, open_gpus
from infermeter.plugins.nvml.record import NvmlRecorder
from infermeter.plugins.nvml.replay import NvmlStandIn, ReplayNvmlMeter
from infermeter.plugins.nvml.trace import DEVICE_COLUMNS
from infermeter.records import Framework, Reading

ENCODER = FIXTURES / "h100-resnet-encoder"
SERVING = FIXTURES / "h100-serving"


def config() -> Config:
    return build_config([*CORE_OPTIONS, *plugin.OPTIONS])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- the stand-in answers like pynvml -------------------------------------------------


def test_counter_is_the_last_filled_value_at_or_before_now() -> None:
    standin = NvmlStandIn.from_trace(SERVING)
    h = standin.nvmlDeviceGetHandleByIndex(0)
    rows = csv_rows(SERVING / "nvml_device0.csv")
    assert rows[0]["energy_mj"] and not rows[1]["energy_mj"]  # every second row is empty
    standin.clock.now = float(rows[1]["t"])
    assert standin.nvmlDeviceGetTotalEnergyConsumption(h) == int(rows[0]["energy_mj"])
    standin.clock.now = float(rows[2]["t"])
    assert standin.nvmlDeviceGetTotalEnergyConsumption(h) == int(rows[2]["energy_mj"])
    standin.clock.now = float(rows[2]["t"]) - 1e-6
    assert standin.nvmlDeviceGetTotalEnergyConsumption(h) == int(rows[0]["energy_mj"])


def test_power_and_utilisation_are_pynvml_structures() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    h = standin.nvmlDeviceGetHandleByIndex(0)
    row = csv_rows(ENCODER / "nvml_device0.csv")[3000]
    standin.clock.now = float(row["t"])
    fv = standin.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
    assert isinstance(fv, pynvml.c_nvmlFieldValue_t)
    assert fv.nvmlReturn == pynvml.NVML_SUCCESS and fv.value.uiVal == int(row["power_instant_mw"])
    other = standin.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])
    assert other[0].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert standin.nvmlDeviceGetPowerUsage(h) == int(row["power_mw"])
    util = standin.nvmlDeviceGetUtilizationRates(h)
    assert isinstance(util, pynvml.c_nvmlUtilization_t)
    assert (util.gpu, util.memory) == (int(row["util_gpu"]), int(row["util_mem"]))
    assert standin.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == int(row["sm_mhz"])
    assert standin.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert standin.nvmlDeviceGetPowerManagementLimit(h) == 700_000
    assert standin.nvmlDeviceGetMigMode(h) == [0, 0]
    assert standin.NVML_FI_DEV_POWER_INSTANT == pynvml.NVML_FI_DEV_POWER_INSTANT
    with pytest.raises(AttributeError):
        standin.nvmlDeviceSetPowerManagementLimit  # noqa: B018 - not faked, not real either


def test_process_samples_follow_last_seen_and_say_not_found_when_idle() -> None:
    standin = NvmlStandIn.from_trace(SERVING)
    h = standin.nvmlDeviceGetHandleByIndex(0)
    rows = [json.loads(x) for x in (SERVING / "nvml_processes.jsonl").read_text().splitlines()]
    standin.clock.now = rows[0]["t"]
    with pytest.raises(pynvml.NVMLError_NotFound):
        standin.nvmlDeviceGetProcessUtilization(h, 0)
    busy = [r for r in rows if r.get("samples")]
    a, b = busy[100], busy[101]
    standin.clock.now = b["t"]
    got = standin.nvmlDeviceGetProcessUtilization(h, a["samples"][-1][5])
    assert all(isinstance(s, pynvml.c_nvmlProcessUtilizationSample_t) for s in got)
    assert [[s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil, s.timeStamp] for s in got] == b[
        "samples"
    ]
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than what was seen
        standin.nvmlDeviceGetProcessUtilization(h, got[-1].timeStamp)
    procs = standin.nvmlDeviceGetComputeRunningProcesses(h)
    assert [[p.pid, p.usedGpuMemory] for p in procs] == b["procs"]


def test_injected_errors_are_pynvml_classes() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    h = standin.nvmlDeviceGetHandleByIndex(0)
    standin.fail("nvmlDeviceGetPowerUsage", pynvml.NVMLError_NoPermission)
    with pytest.raises(pynvml.NVMLError) as caught:
        standin.nvmlDeviceGetPowerUsage(h)
    assert type(caught.value) is pynvml.NVMLError_NoPermission
    assert caught.value.value == pynvml.NVML_ERROR_NO_PERMISSION
    standin.fail("*", pynvml.NVMLError_GpuIsLost, index=0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        standin.nvmlDeviceGetUUID(h)
    assert standin.nvmlDeviceGetCount() == 1  # a library call, not a device one
    standin.heal()
    assert standin.nvmlDeviceGetUUID(h) == "GPU-18b326f0-07a3-c660-b0fc-a48acddbdee2"


def test_baseline_table_and_generic_fallback() -> None:
    assert baseline_for("NVIDIA H100 80GB HBM3", 700.0) == (70.0, 48.0)
    idle, keepwarm = baseline_for("NVIDIA L4", 72.0)
    assert idle == pytest.approx(7.2) and keepwarm == pytest.approx(72.0 * 0.07)
    assert baseline_for("unknown GPU (replay)", None) == (None, None)


# -- (7) the recorder writes what the replay reads back ---------------------------------

_ROWS = csv_rows(ENCODER / "nvml_device0.csv")
_START = float(_ROWS[0]["t"]) + 60.0  # ResNet-50 bf16 bs32, then the encoder
_TIMES = [float(r["t"]) for r in _ROWS if _START <= float(r["t"]) <= _START + 8.0]


def _record(out: Path, counter_s: float = 0.1, process_s: float = 0.2) -> None:
    """Record 8 s of the encoder trace from the stand-in, at its own 50 Hz row times."""
    source = NvmlStandIn.from_trace(ENCODER)
    source.nvmlInit()
    recorder = NvmlRecorder(
        source, open_gpus(source), out, counter_s=counter_s, process_s=process_s, owns_init=False
    )
    for t in _TIMES:
        source.clock.now = t
        recorder.sample(t)
    assert isinstance(recorder, Recorder)
    recorder.close()


def _replay(trace: Path) -> list[Reading]:
    meter = ReplayNvmlMeter(NvmlStandIn.from_trace(trace))
    return [r for k in range(9) for r in meter.read(_TIMES[0] + k, {})]


def test_recorder_writes_the_fixture_format(tmp_path: Path) -> None:
    _record(tmp_path)
    written = (tmp_path / "nvml_device0.csv").read_text().splitlines()
    header = (ENCODER / "nvml_device0.csv").read_text().splitlines()[0]
    assert written[0] == header == ",".join(DEVICE_COLUMNS)
    assert len(written) - 1 == len(_TIMES)
    # the counter (3 ms a read) fills a cell about every 0.1 s, power every row
    energy = [line.split(",")[1] for line in written[1:]]
    assert 70 <= sum(1 for e in energy if e) <= 90
    original = {r["t"]: r for r in _ROWS}
    for line in written[1:]:
        cells = dict(zip(DEVICE_COLUMNS, line.split(","), strict=True))
        assert cells["power_instant_mw"] == original[cells["t"]]["power_instant_mw"]
        assert cells["sm_mhz"] == original[cells["t"]]["sm_mhz"]
    lines = [json.loads(x) for x in (tmp_path / "nvml_processes.jsonl").read_text().splitlines()]
    assert all(list(x) in (["t", "samples", "procs"], ["t", "error", "procs"]) for x in lines)
    assert any(x.get("samples") for x in lines) and 36 <= len(lines) <= 44  # 5 Hz over 8 s
    assert all(x["procs"] == [[439, x["procs"][0][1]]] for x in lines)
    # what the recorder writes, the replay's check reads whole
    assert plugin.infermeter_replay_check(tmp_path) == []


def test_recorded_trace_replays_like_the_original(tmp_path: Path) -> None:
    # every value at every row, as the fixture was recorded: the replay must be the same
    _record(tmp_path, counter_s=0.0, process_s=0.0)
    original, again = _replay(ENCODER), _replay(tmp_path)
    assert len(again) == len(original) == 8
    assert again[0].device == original[0].device  # identity kept in nvml_devices.json
    for a, b in zip(again, original, strict=True):
        assert (a.t0, a.t1, a.method) == (b.t0, b.t1, b.method)
        assert a.energy_j == pytest.approx(b.energy_j, abs=1e-9)
        assert a.holders == b.holders and dict(a.weights) == pytest.approx(dict(b.weights))
        assert a.busy_fraction == pytest.approx(b.busy_fraction)


def test_a_counter_recorded_at_10hz_lags_by_at_most_its_period(tmp_path: Path) -> None:
    _record(tmp_path)
    original, again = _replay(ENCODER), _replay(tmp_path)
    assert [(r.t0, r.t1) for r in again] == [(r.t0, r.t1) for r in original]
    assert [r.holders for r in again] == [r.holders for r in original]
    # each bound's counter value is at most 0.1 s old: at 700 W, 70 J
    for a, b in zip(again, original, strict=True):
        assert abs(a.energy_j - b.energy_j) <= 2 * 70.0
    lag = sum(r.energy_j for r in original) - sum(r.energy_j for r in again)
    assert 0.0 <= lag <= 70.0


# -- the replay hooks ----------------------------------------------------------------------


def test_replay_targets_from_spans_headers() -> None:
    targets = {t.pid: t for t in plugin.infermeter_replay_targets(SERVING, config())}
    assert set(targets) == {416, 417}  # C ran on the CPU: it never held the GPU
    a = targets[416]
    assert (a.host, a.framework, a.model) == ("h100-serving", Framework.TORCH, "resnet50")
    assert targets[417].model == "encoder"
    first = next(
        json.loads(x)["t"]
        for x in (SERVING / "nvml_processes.jsonl").read_text().splitlines()
        if any(p[0] == 416 for p in json.loads(x)["procs"])
    )
    assert a.start_time == first


def test_replay_targets_from_workload_phases() -> None:
    targets = {t.pid: t for t in plugin.infermeter_replay_targets(ENCODER, config())}
    assert set(targets) == {439, 534, 535}
    assert targets[439].model is None  # ran resnet50, encoder and mlp
    assert (targets[534].model, targets[535].model) == ("resnet50", "encoder")
    assert {t.framework for t in targets.values()} == {Framework.UNKNOWN}
    assert {t.host for t in targets.values()} == {"h100-resnet-encoder"}


def test_replay_window_is_the_device_files_span() -> None:
    rows = csv_rows(SERVING / "nvml_device0.csv")
    assert plugin.infermeter_replay_window(SERVING) == (float(rows[0]["t"]), float(rows[-1]["t"]))
    assert plugin.infermeter_replay_window(FIXTURES) is None


def test_hooks_load_through_the_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="infermeter") if e.name == "core.nvml"]
    module = ep.load()
    assert module is plugin
    pm = PluginManager()
    pm.register(module, name="core.nvml")
    options = pm.config_options()
    assert {o.name for o in options} >= {"nvml.enabled", "nvml.process_poll_s"}
    meters = pm.collect("infermeter_replay_meters", trace_dir=ENCODER, config=config())
    assert len(meters) == 1 and meters[0].name == "nvml" and isinstance(meters[0], Meter)
    assert pm.collect("infermeter_replay_meters", trace_dir=FIXTURES, config=config()) == []
    first = meters[0].read(1795758941.0, {})
    second = meters[0].read(1795758942.0, {})
    assert first == [] and len(second) == 1 and second[0].energy_j > 0
