"""The NVML energy counter is cross-checked against the device's limit and its power.

Each test replays a copy of a real H100 recording (tests/fixtures/h100-*)
whose energy column was edited the way a misbehaving driver would answer, a
forward jump, a frozen counter, a counter that catches up, through the
pynvml stand-in and the same NvmlMeter the agent runs live. The truth is the
unedited recording: its own counter where the counter was left alone, and
its own instant-power column where the meter had to fall back on power.
"""

from __future__ import annotations

import bisect
import csv
import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import pynvml
import pytest
from support import FIXTURES, run_cli

from infermeter.plugins.nvml.meter import COUNTER_PROBE_S, POWER_MARGIN
from infermeter.plugins.nvml.replay import NvmlStandIn, ReplayNvmlMeter
from infermeter.plugins.nvml.samples import integrate
from infermeter.records import Method, Reading

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"
LIMIT_W = 700.0  # the fixtures' card: nvml_devices.json power_limit_mw 700000
# Per 1 s interval, the fixtures' counter and the trapezoid of their instant-power
# column agree within 0.90-1.12 (measured over both recordings at 1 s ticks):
# the counter moves in ~100 ms steps and instant power is a 20-50 Hz sample.
COUNTER_VS_POWER = 0.12


class Recording:
    """A device csv's columns, read with the csv module (not the code under test)."""

    def __init__(self, trace: Path) -> None:
        with (trace / "nvml_device0.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        self.t = [float(r["t"]) for r in rows]
        self.power = [(float(r["t"]), int(r["power_instant_mw"]) / 1000.0) for r in rows]
        filled = [(float(r["t"]), int(r["energy_mj"])) for r in rows if r["energy_mj"]]
        self.energy_t = [t for t, _ in filled]
        self.energy_mj = [e for _, e in filled]

    def counter_j(self, t: float) -> float:
        """What the counter said at t: its last filled value at or before t (the first before)."""
        i = max(bisect.bisect_right(self.energy_t, t) - 1, 0)
        return self.energy_mj[i] / 1000.0

    def power_j(self, t0: float, t1: float) -> float:
        """Trapezoid of the recorded instant power over [t0, t1)."""
        got = integrate(self.power, t0, t1)
        assert got is not None
        return got


def edit_counter(src: Path, dst: Path, change: Callable[[float, int], int | None]) -> Path:
    """Copy a trace, replacing each filled energy cell v at time t by change(t, v)."""
    shutil.copytree(src, dst)
    path = dst / "nvml_device0.csv"
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        if cells[1]:
            new = change(float(cells[0]), int(cells[1]))
            cells[1] = "" if new is None else str(new)
        out.append(",".join(cells))
    path.write_text("\n".join(out) + "\n")
    return dst


def ticks(standin: NvmlStandIn, step: float = 1.0) -> list[float]:
    out, t = [], standin.start_t
    while t < standin.end_t:
        out.append(t)
        t += step
    return [*out, standin.end_t]


def replay(meter: ReplayNvmlMeter, times: Iterable[float]) -> list[Reading]:
    return [r for t in times for r in meter.read(t, {})]


def run(trace: Path) -> tuple[NvmlStandIn, list[Reading]]:
    standin = NvmlStandIn.from_trace(trace)
    return standin, replay(ReplayNvmlMeter(standin), ticks(standin))


def busy_time(rec: Recording, watts: float) -> float:
    """A row time in the middle of the recording where the card draws more than ``watts``."""
    mid = (rec.t[0] + rec.t[-1]) / 2
    return min((t for t, w in rec.power if w > watts), key=lambda t: abs(t - mid))


def check_measured(readings: Iterable[Reading], original: Recording) -> None:
    """Every MEASURED reading is the original counter's delta over its interval."""
    for r in readings:
        if r.method is Method.MEASURED:
            expected = original.counter_j(r.t1) - original.counter_j(r.t0)
            assert r.energy_j == pytest.approx(expected, abs=1e-6), (r.t0, r.note)


def test_a_forward_jump_is_integrated_for_one_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = Recording(SERVING)
    jump_t = busy_time(original, 150.0)
    # From jump_t on, the counter reads 1e12 mJ more: 1e9 J in one interval if believed.
    trace = edit_counter(SERVING, tmp_path / "jump", lambda t, v: v + 10**12 if t >= jump_t else v)
    with caplog.at_level(logging.WARNING, logger="infermeter.plugins.nvml"):
        standin, readings = run(trace)
    integrated = [r for r in readings if r.method is Method.INTEGRATED]
    assert len(integrated) == 1
    (bad,) = integrated
    assert bad.t0 < jump_t <= bad.t1 and "jumped" in bad.note and "1000000" in bad.note
    # its energy is the recording's instant power over the same window (the
    # meter's samples are those rows, plus one at each read repeating the row before)
    assert bad.energy_j == pytest.approx(original.power_j(bad.t0, bad.t1), rel=0.01)
    # and the real energy of that second, the untouched counter, within what the
    # counter and power ever differ by over a second
    truth = original.counter_j(bad.t1) - original.counter_j(bad.t0)
    assert bad.energy_j == pytest.approx(truth, rel=COUNTER_VS_POWER)
    # every other interval is the counter again, re-anchored after the jump
    check_measured(readings, original)
    assert all(r.energy_j <= LIMIT_W * POWER_MARGIN * r.duration_s for r in readings)
    total = original.counter_j(standin.end_t) - original.counter_j(standin.start_t)
    assert sum(r.energy_j for r in readings) == pytest.approx(total, abs=COUNTER_VS_POWER * truth)
    assert sum("jumped" in m for m in caplog.messages) == 1


def test_a_one_sample_spike_is_integrated_there_and_on_the_way_back(tmp_path: Path) -> None:
    original = Recording(SERVING)
    # The filled row a 1 s read sees in the busy part: only that one value is off.
    read_t = next(
        t for t in ticks(NvmlStandIn.from_trace(SERVING)) if t >= busy_time(original, 150.0)
    )
    spike_t = original.energy_t[bisect.bisect_right(original.energy_t, read_t) - 1]
    trace = edit_counter(
        SERVING, tmp_path / "spike", lambda t, v: v + 10**12 if t == spike_t else v
    )
    _standin, readings = run(trace)
    integrated = [r for r in readings if r.method is Method.INTEGRATED]
    # the read that saw the spike, and the next, where the counter is back below it
    assert [("jumped" in r.note, "went back" in r.note) for r in integrated] == [
        (True, False),
        (False, True),
    ]
    assert integrated[0].t1 == read_t == integrated[1].t0
    for r in integrated:
        assert r.energy_j == pytest.approx(original.power_j(r.t0, r.t1), rel=0.01)
    check_measured(readings, original)


def frozen(start: float, end: float, catch_up: bool) -> Callable[[float, int], int | None]:
    """A counter that holds its value in [start, end); then it either catches up
    (the original values: the energy was only held back) or carries on from
    where it stopped (the energy drawn meanwhile is lost to it)."""
    held: list[int] = []
    lost: list[int] = []

    def change(t: float, v: int) -> int:
        if t < start:
            return v
        if not held:
            held.append(v)
        if t < end:
            return held[0]
        if catch_up:
            return v
        if not lost:
            lost.append(v - held[0])
        return v - lost[0]

    return change


@pytest.mark.parametrize(
    ("seconds", "catch_up"),
    # A 10 s freeze that catches up would be refused as a jump above 1050 W;
    # 3 s of the serving load caught up in one second is ~450 J, a plausible
    # second for the card, which only the power samples show to be wrong.
    [(10.0, False), (3.0, True)],
    ids=["stops", "catches-up"],
)
def test_a_frozen_counter_is_integrated_not_zero(
    tmp_path: Path, seconds: float, catch_up: bool, caplog: pytest.LogCaptureFixture
) -> None:
    original = Recording(SERVING)
    start = busy_time(original, 150.0) - seconds / 2
    end = start + seconds
    trace = edit_counter(SERVING, tmp_path / "frozen", frozen(start, end, catch_up))
    with caplog.at_level(logging.WARNING, logger="infermeter.plugins.nvml"):
        standin, readings = run(trace)
    frozen_ones = [r for r in readings if "did not move" in r.note]
    # every read whose whole interval fell inside the freeze (1 s ticks)
    assert len(frozen_ones) >= seconds - 2
    assert all(r.method is Method.INTEGRATED and start <= r.t0 < end for r in frozen_ones)
    for r in frozen_ones:  # the recording's power over the interval, not the counter's 0
        assert r.energy_j == pytest.approx(original.power_j(r.t0, r.t1), rel=0.01)
        assert r.energy_j > 70.0 * r.duration_s  # at least an idle H100's draw
    # one log line for the whole stretch, not one per tick
    assert sum("did not move" in m for m in caplog.messages) == 1
    # The interval the freeze ends in: the counter moved, but for only part of
    # it (stops) or by what it held back (catches up): power again, not the counter.
    (edge,) = [r for r in readings if "after a freeze" in r.note]
    assert edge.method is Method.INTEGRATED and edge.t0 < end <= edge.t1
    # The interval the freeze begins in cannot be told from a slow second: the
    # counter moved, for part of it. It stays measured, short by at most the
    # frozen part of one interval; that is the one loss the check leaves.
    (onset,) = [r for r in readings if r.t0 < start <= r.t1]
    onset_truth = original.counter_j(onset.t1) - original.counter_j(onset.t0)
    assert onset.method is Method.MEASURED and 0 < onset.energy_j < onset_truth
    # everything else the counter measured is the true counter's delta, and
    # after the edge the counter is back
    check_measured([r for r in readings if r is not onset], original)
    after = [r for r in readings if r.t0 >= edge.t1]
    assert after and {r.method for r in after} == {Method.MEASURED}
    # The totals: the frozen seconds are the recording's power, the rest its counter.
    power_part = sum(r.energy_j for r in readings if r.method is Method.INTEGRATED)
    truth_there = sum(
        original.counter_j(r.t1) - original.counter_j(r.t0)
        for r in readings
        if r.method is Method.INTEGRATED
    )
    assert power_part == pytest.approx(truth_there, rel=0.05)
    total = original.counter_j(standin.end_t) - original.counter_j(standin.start_t)
    lost = onset_truth - onset.energy_j
    assert sum(r.energy_j for r in readings) == pytest.approx(total - lost, abs=0.05 * truth_there)


def test_the_counter_comes_back_after_not_supported(caplog: pytest.LogCaptureFixture) -> None:
    original = Recording(SERVING)
    standin = NvmlStandIn.from_trace(SERVING)
    meter = ReplayNvmlMeter(standin)
    times = ticks(standin)
    heal_at = 20  # the counter says NotSupported for the first 20 s, then answers again
    standin.fail("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVMLError_NotSupported)
    with caplog.at_level(logging.INFO, logger="infermeter.plugins.nvml"):
        broken = replay(meter, times[:heal_at])
        standin.heal()
        rest = replay(meter, times[heal_at:])
    assert broken and all(
        r.method is Method.INTEGRATED and "NotSupported" in r.note for r in broken
    )
    # The meter asks again every COUNTER_PROBE_S; the first answer sets the
    # baseline (that interval is still integrated), the next delta is measured.
    back = next(i for i, r in enumerate(rest) if r.method is Method.MEASURED)
    assert rest[back - 1].method is Method.INTEGRATED and "re-read" in rest[back - 1].note
    assert rest[back].t0 - standin.start_t <= COUNTER_PROBE_S + 1.0
    assert {r.method for r in rest[back:]} == {Method.MEASURED}
    measured = sum(r.energy_j for r in rest[back:])
    expected = original.counter_j(standin.end_t) - original.counter_j(rest[back].t0)
    assert measured == pytest.approx(expected, abs=1e-6)
    check_measured(rest, original)
    assert sum("answers again" in m for m in caplog.messages) == 1


def test_implausible_power_samples_are_dropped(tmp_path: Path) -> None:
    """Without a counter, one garbage instant-power row must not become energy."""
    trace = tmp_path / "power-glitch"
    shutil.copytree(SERVING, trace)
    path = trace / "nvml_device0.csv"
    lines = path.read_text().splitlines()
    cells = lines[len(lines) // 2].split(",")
    glitch_t = float(cells[0])
    cells[3] = str(10**12)  # 1e9 W
    lines[len(lines) // 2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    standin = NvmlStandIn.from_trace(trace)
    standin.fail("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVMLError_NotSupported)
    readings = replay(ReplayNvmlMeter(standin), ticks(standin))
    assert {r.method for r in readings} == {Method.INTEGRATED}
    (there,) = [r for r in readings if r.t0 < glitch_t <= r.t1]
    assert there.energy_j < 200.0 * there.duration_s  # the serving card never drew 200 W
    original = Recording(SERVING)
    total = original.counter_j(standin.end_t) - original.counter_j(standin.start_t)
    assert sum(r.energy_j for r in readings) == pytest.approx(total, rel=0.02)


def test_replay_stores_no_spike(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The agent over a jumped trace, through the CLI, into a real SQLite file."""
    original = Recording(SERVING)
    jump_t = busy_time(original, 150.0)
    trace = edit_counter(
        SERVING, tmp_path / "h100-serving", lambda t, v: v + 10**12 if t >= jump_t else v
    )
    db = tmp_path / "spike.db"
    r = run_cli(cli_env, "--db", f"sqlite:///{db}", "replay", "--no-progress", str(trace))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.method, sum(s.energy_j), max(s.energy_j / (s.t1 - s.t0)) "
            "FROM usage_shares s JOIN devices d ON d.id = s.device_id "
            "WHERE d.kind = 'gpu' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    by_method = {m: (e, w) for m, e, w in rows}
    assert set(by_method) == {"integrated", "measured"}
    total = original.counter_j(original.t[-1]) - original.counter_j(original.t[0])
    stored = sum(e for e, _ in by_method.values())
    # one 1 s interval is the power integral, within COUNTER_VS_POWER of its truth
    assert stored == pytest.approx(total, abs=COUNTER_VS_POWER * LIMIT_W)
    assert max(w for _, w in by_method.values()) < LIMIT_W
