"""``report --from/--to`` is exact to the second: the rows a bound cuts count the part inside.

The H100 ResNet/encoder recording is replayed through the real agent at the
default tick (1 s) and flush (10 s) into a real SQLite store, so each 7 s
phase lies inside one or two 10 s windows; before, the report took those
rows whole or not at all by their start (0 J for the 1,424 calls of the
ResNet fp32 batch-1 phase). Each phase is then reported over the whole
seconds inside it, through ``build_report`` (what the CLI calls) and once
through the CLI itself.

The truth for a range [a, b): the recorded energy counter (nvml_device0.csv,
50 rows a second), linearly interpolated between its rows at a and at b,
less the bare idle that the same report attributes as ``idle`` over [a, b).
What remains is what the processes on the GPU drew: the serving process's
active and keep-warm energy (both conc processes together for the conc
window). Only one process holds the GPU in a single-process phase, and only
the two conc processes in the conc window (checked below), so the report's
``(keep-warm)`` row is theirs.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from support import FIXTURES, run_cli

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.report.build import Report, build_report
from infermeter.sidecar.replay import replay
from infermeter.store import migrate, schema
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

ENCODER = FIXTURES / "h100-resnet-encoder"
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    """The encoder recording replayed with the default config (tick 1 s, flush 10 s)."""
    db = tmp_path_factory.mktemp("exact") / "e.db"
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), {}, environ={})
    assert (config["agent.tick_s"], config["agent.flush_s"]) == (1.0, 10.0)
    url = f"sqlite:///{db}"
    engine = open_engine(url)
    migrate.upgrade(engine)
    writer = Store(engine, ENCODER.name)
    replay(ENCODER, config, pm, writer)
    writer.close()
    engine = open_engine(url)
    yield url, engine
    engine.dispose()


def counter_j() -> tuple[list[float], list[float]]:
    with (ENCODER / "nvml_device0.csv").open() as f:
        rows = [(float(r["t"]), float(r["energy_mj"]) / 1000) for r in csv.DictReader(f)]
    return [t for t, _ in rows], [j for _, j in rows]


def counter_at(t: float) -> float:
    """The counter linearly interpolated between the two recorded rows around ``t``."""
    ts, js = COUNTER
    i = bisect.bisect_right(ts, t) - 1
    assert 0 <= i < len(ts) - 1, f"{t} outside the recording"
    return js[i] + (js[i + 1] - js[i]) * (t - ts[i]) / (ts[i + 1] - ts[i])


COUNTER = counter_j()


def phases() -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, serving pids, a, b): each phase's whole seconds, and the conc window's."""
    work = json.loads((ENCODER / "workload.json").read_text())
    out = []
    for p in work:
        if p["pid"] is not None and not p["name"].startswith("conc-"):
            out.append((p["name"], (p["pid"],), math.ceil(p["t0"]), math.floor(p["t1"])))
    conc = [p for p in work if p["name"].startswith("conc-")]
    assert len(conc) == 2
    t0, t1 = max(p["t0"] for p in conc), min(p["t1"] for p in conc)
    out.append(("conc", tuple(p["pid"] for p in conc), math.ceil(t0), math.floor(t1)))
    return out


PHASES = phases()


def energy_j(report: Report, kinds: tuple[str, ...], pids: tuple[int, ...] = ()) -> float:
    """Joules of the report's rows of ``kinds`` (by target: groups of ``pids`` only)."""
    total = 0.0
    for g in report.groups:
        if g.kind not in kinds:
            continue
        if g.kind == "group" and not any(g.label.endswith(f" pid {p}") for p in pids):
            continue
        total += g.costs.energy_kwh * 3.6e6
    return total


def serving_and_truth(
    report: Report, pids: tuple[int, ...], a: float, b: float
) -> tuple[float, float]:
    """(the serving processes' active + keep-warm, the counter less the reported idle)."""
    serving = energy_j(report, ("group", "keepwarm"), pids)
    truth = counter_at(b) - counter_at(a) - energy_j(report, ("idle",))
    return serving, truth


def test_the_store_holds_one_gpu_and_flush_windows_longer_than_the_gaps(
    store: tuple[str, Engine],
) -> None:
    _url, engine = store
    w = schema.device_windows.c
    with engine.connect() as conn:
        kinds = conn.execute(select(schema.devices.c.kind)).scalars().all()
        lengths = conn.execute(select(w.t1 - w.t0)).scalars().all()
        profiled = conn.execute(select(func.count()).where(w.profile.is_not(None))).scalar_one()
        holders = conn.execute(
            select(schema.targets.c.pid)
            .join(schema.usage_shares, schema.usage_shares.c.target_id == schema.targets.c.id)
            .where(schema.usage_shares.c.bucket == "keepwarm")
            .distinct()
        ).scalars()
    assert kinds == ["gpu"]  # every report figure below is the GPU's
    assert max(lengths) == pytest.approx(10.0) and profiled == len(lengths)
    # Keep-warm is only ever the serving processes' (the phases' pids).
    assert set(holders) <= {pid for _n, pids, _a, _b in PHASES for pid in pids}


@pytest.mark.parametrize(("name", "pids", "a", "b"), PHASES, ids=[p[0] for p in PHASES])
def test_each_phase_reports_the_counters_energy_within_one_percent(
    store: tuple[str, Engine], name: str, pids: tuple[int, ...], a: int, b: int
) -> None:
    _url, engine = store
    report = build_report(engine, float(a), float(b), "target")
    serving, truth = serving_and_truth(report, pids, a, b)
    assert truth > 100.0  # a real phase, several hundred joules above idle
    assert serving == pytest.approx(truth, rel=TOLERANCE), name
    # Nothing of it went elsewhere: no other process, no unexplained draw.
    assert energy_j(report, ("other", "unlabelled")) < 0.002 * truth
    # The whole report over the range is the counter's, idle included.
    total = report.totals.energy_kwh * 3.6e6
    assert total == pytest.approx(counter_at(b) - counter_at(a), rel=TOLERANCE)


def test_the_report_of_a_phase_and_the_rest_of_its_windows_add_up_to_the_windows(
    store: tuple[str, Engine],
) -> None:
    """Cutting a window in three parts loses nothing: the parts add up to the whole rows."""
    _url, engine = store
    _name, pids, a, b = PHASES[0]
    w = schema.device_windows.c
    with engine.connect() as conn:
        lo = conn.execute(select(func.max(w.t0)).where(w.t0 <= a)).scalar_one()
        hi = conn.execute(select(func.min(w.t1)).where(w.t1 >= b)).scalar_one()
    parts = [build_report(engine, x, y, "target") for x, y in ((lo, a), (a, b), (b, hi))]
    whole = build_report(engine, lo, hi, "target")
    for kinds in (("group",), ("keepwarm",), ("idle",)):
        got = sum(energy_j(r, kinds, pids) for r in parts)
        assert got == pytest.approx(energy_j(whole, kinds, pids), rel=1e-9)
    assert sum(energy_j(r, ("group",), pids) for r in parts) > 0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_cli_reports_the_resnet_fp32_batch_1_phase_and_counts_calls_by_their_start(
    store: tuple[str, Engine], cli_env: dict[str, str]
) -> None:
    """The issue's case: --from 05:55:41 --to 05:55:48 reported 0.0 J for 1,424 items.

    Calls keep their own times: the phase's calls (one span from 05:55:41.004)
    start inside this range and count here whole, with their items; a range
    from 05:55:42 starts after them and counts none, though its energy is the
    phase's. Energy and money are cut at the bounds; calls are not.
    """
    url, _engine = store
    phase = next(
        p for p in json.loads((ENCODER / "workload.json").read_text())
        if p["name"] == "resnet50-fp32-bs1"
    )  # fmt: skip
    a, b = math.floor(phase["t0"]), math.floor(phase["t1"])
    assert (iso(a), iso(b)) == ("2026-11-27T05:55:41", "2026-11-27T05:55:48")
    out: dict[str, Any] = {}
    for start in (a, a + 1):
        done = run_cli(
            cli_env, "--db", url, "report", "--from", iso(start), "--to", iso(b),
            "--by", "target", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out[iso(start)] = json.loads(done.stdout)
    for start in (a, a + 1):
        doc = out[iso(start)]
        groups = {g["kind"]: g for g in doc["groups"] if g["kind"] != "group"}
        (serving,) = [g for g in doc["groups"] if g["label"].endswith(f" pid {phase['pid']}")]
        got = (serving["costs"]["energy_kwh"] + groups["keepwarm"]["costs"]["energy_kwh"]) * 3.6e6
        truth = counter_at(b) - counter_at(start) - groups["idle"]["costs"]["energy_kwh"] * 3.6e6
        assert got == pytest.approx(truth, rel=TOLERANCE)
        assert serving["costs"]["cost"]["value"] > 0
    first = out[iso(a)]["groups"]
    (serving,) = [g for g in first if g["label"].endswith(f" pid {phase['pid']}")]
    assert serving["requests"]["items"] == phase["items"] == 1424
    later = out[iso(a + 1)]
    assert later["totals"]["requests"]["items"] == 0
