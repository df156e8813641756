"""The recommenders on the two H100 recordings, replayed into real SQLite stores.

Each expectation is checked against the recording itself: energy per item
from the GPU's energy counter over each phase's window (less the card's
idle and keep-warm floor the replay learned, which batching and precision
do not change), the workload's own latency figures, and the keep-warm cost
of the stored shares.

The resnet-encoder replay uses 0.2 s ticks and 1 s flushes (its phases last
5-12 s, shorter than the default 10 s flush window) and a 15 s span lag: a
phase is recorded as one span covering it (``replay.workload_spans``), which
reaches the agent when the phase ends, and the agent must not attribute the
phase's intervals before it arrives.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from support import FIXTURES

from infermeter.config import Config, build_config
from infermeter.plugin_manager import PluginManager, make_plugin_manager
from infermeter.price.pricing import J_PER_KWH, card_from_config
from infermeter.recommend.build import build_stats
from infermeter.recommend.run import collect
from infermeter.recommend.stats import Stats
from infermeter.records import Recommendation
from infermeter.sidecar.agent import Agent
from infermeter.sidecar.replay import recorded_spans, replay
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"
PHASES = {p["name"]: p for p in json.loads((ENCODER / "workload.json").read_text())}
# How far a recommender's figure may be from the same figure worked out from
# the counter: the replay's attribution (learned floor, instant-power shape
# inside each counter second) against a straight counter difference.
TOLERANCE = 0.10


class Replayed:
    """A trace replayed into a fresh SQLite store, with the agent kept."""

    def __init__(self, trace: Path, db: Path, agent_options: dict[str, Any]) -> None:
        self.pm: PluginManager = make_plugin_manager()
        self.config: Config = build_config(
            self.pm.config_options(), {"agent": agent_options}, environ={}
        )
        self.card = card_from_config(self.config)
        self.engine = open_engine(f"sqlite:///{db}")
        migrate.upgrade(self.engine)
        self.store = Store(self.engine, trace.name)
        self.readings: list[Any] = []
        self.agent: Agent | None = None

        def observe(agent: Agent, _shares: list[Any]) -> None:
            self.agent = agent
            self.readings.extend(agent.last_readings)

        self.result = replay(trace, self.config, self.pm, self.store, observe=observe)
        self.db = db

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(query, args).fetchall()

    def stats(self, t0: float, t1: float) -> Stats:
        return build_stats(self.engine, self.store.host, t0, t1, self.card, profile_t0=0.0)

    def recommend(self, t0: float, t1: float) -> list[Recommendation]:
        return collect(self.pm, self.stats(t0, t1), self.config)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    run = Replayed(
        ENCODER,
        tmp_path_factory.mktemp("enc") / "e.db",
        {"tick_s": 0.2, "flush_s": 1.0, "span_lag_s": 15.0},
    )
    yield run
    run.store.close()


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    run = Replayed(SERVING, tmp_path_factory.mktemp("srv") / "s.db", {})
    yield run
    run.store.close()


def counter(trace: Path) -> list[tuple[float, float]]:
    with (trace / "nvml_device0.csv").open() as f:
        return [
            (float(r["t"]), float(r["energy_mj"]) / 1000)
            for r in csv.DictReader(f)
            if r["energy_mj"]
        ]


def counter_j(rows: list[tuple[float, float]], t0: float, t1: float) -> float:
    def at(t: float) -> float:
        for (ta, ea), (tb, eb) in pairwise(rows):
            if ta <= t <= tb:
                return ea + (eb - ea) * (t - ta) / (tb - ta)
        raise AssertionError(f"{t} outside the recording")

    return at(t1) - at(t0)


def phase_j_per_item(run: Replayed, name: str) -> float:
    """Active energy per item of a phase: counter less the learned idle and keep-warm floor."""
    ((idle_w, keepwarm_w),) = run.sql(
        "SELECT idle_power_w, keepwarm_power_w FROM devices WHERE kind = 'gpu'"
    )
    p = PHASES[name]
    energy = counter_j(counter(ENCODER), p["t0"], p["t1"])
    return (energy - (idle_w + keepwarm_w) * (p["t1"] - p["t0"])) / p["items"]


def by_kind(recs: list[Recommendation]) -> dict[str, list[Recommendation]]:
    out: dict[str, list[Recommendation]] = {}
    for r in recs:
        out.setdefault(r.kind, []).append(r)
    return out


def window(name: str) -> tuple[float, float]:
    return PHASES[name]["t0"], PHASES[name]["t1"]


# ----- the workload's spans ------------------------------------------------------


def test_workload_phases_become_spans_with_their_calls() -> None:
    spans = recorded_spans(ENCODER)
    named = [p for p in PHASES.values() if p["pid"] is not None]
    assert len(spans) == len(named) == 11
    by_t0 = {s.t0: s for s in spans}
    for p in named:
        s = by_t0[p["t0"]]
        assert (s.pid, s.model, s.t1, s.items, s.dtype) == (
            p["pid"],
            p["model"],
            p["t1"],
            p["items"],
            p["dtype"],
        )
        assert s.tags["calls"] == str(p["calls"]) and s.tags["batch"] == str(p["bs"])
        assert float(s.tags["p99_ms"]) == p["lat_p99_ms"]
    assert recorded_spans(SERVING)[0].tags == {}  # per-request spans carry no aggregate tags


def test_each_phase_call_carries_its_active_energy(encoder: Replayed) -> None:
    for name in ("resnet50-fp32-bs1", "resnet50-fp32-bs32", "encoder-fp32-bs16"):
        p = PHASES[name]
        ((energy, items),) = encoder.sql(
            "SELECT energy_j, items FROM requests WHERE t0 = ?", p["t0"]
        )
        assert items == p["items"]
        assert energy / items == pytest.approx(phase_j_per_item(encoder, name), rel=0.03), name


# ----- ResNet-50 fp32 at batch 1 ---------------------------------------------------


def test_resnet_fp32_batch1_yields_batch_and_quantize(encoder: Replayed) -> None:
    recs = encoder.recommend(*window("resnet50-fp32-bs1"))
    kinds = by_kind(recs)
    assert set(kinds) == {"batch", "quantize"}
    for r in recs:
        assert r.subject.startswith("resnet50:fp32@h100-resnet-encoder/")
        assert r.savings.usd > 0


def test_batch_saving_matches_the_batch32_phase(encoder: Replayed) -> None:
    t0, t1 = window("resnet50-fp32-bs1")
    stats = encoder.stats(t0, t1)
    (rec,) = by_kind(collect(encoder.pm, stats, encoder.config))["batch"]
    e = rec.evidence
    j1 = phase_j_per_item(encoder, "resnet50-fp32-bs1")
    j32 = phase_j_per_item(encoder, "resnet50-fp32-bs32")
    assert (e["current_batch"], e["suggested_batch"]) == (1, 32)
    assert e["j_per_item_now"] == pytest.approx(j1, rel=TOLERANCE)
    assert e["j_per_item_suggested"] == pytest.approx(j32, rel=TOLERANCE)
    assert rec.confidence == "high"  # fitted to its own solo calls at 1 and 32
    # The monthly energy: this phase's items at the counter's difference, for 30 days.
    items = PHASES["resnet50-fp32-bs1"]["items"]
    expected_kwh = items * (j1 - j32) * stats.window.month_factor / J_PER_KWH * encoder.card.pue
    assert rec.savings.kwh == pytest.approx(expected_kwh, rel=TOLERANCE)
    per_kwh = encoder.card.electricity_per_kwh
    assert per_kwh is not None
    assert rec.savings.usd == pytest.approx(rec.savings.kwh * per_kwh, rel=1e-6)  # energy only
    # The latency cost, from the batch-32 phase's own record of its calls.
    bs32 = PHASES["resnet50-fp32-bs32"]
    latency = e["suggested_latency_ms"]
    assert latency["p50_ms"] == pytest.approx(bs32["lat_p50_ms"], rel=1e-3)
    assert latency["p99_ms"] == pytest.approx(bs32["lat_p99_ms"], rel=1e-3)
    assert "p99 24.02 ms" in rec.how_to_apply


def test_quantize_saving_matches_the_bf16_phase(encoder: Replayed) -> None:
    t0, t1 = window("resnet50-fp32-bs1")
    stats = encoder.stats(t0, t1)
    (rec,) = by_kind(collect(encoder.pm, stats, encoder.config))["quantize"]
    ratio = phase_j_per_item(encoder, "resnet50-bf16-bs1") / phase_j_per_item(
        encoder, "resnet50-fp32-bs1"
    )
    assert rec.evidence["suggested_dtype"] == "bf16"
    assert rec.evidence["measured_ratio"] == pytest.approx(ratio, abs=0.04)
    assert rec.confidence == "high"
    (deployment,) = [m for m in stats.models if m.key == rec.subject]
    expected_kwh = (
        deployment.energy_j * (1 - ratio) * stats.window.month_factor / J_PER_KWH * encoder.card.pue
    )
    assert rec.savings.kwh == pytest.approx(expected_kwh, rel=TOLERANCE)


# ----- the tiny MLP ----------------------------------------------------------------


def test_tiny_mlp_yields_move_to_cpu_or_edge(encoder: Replayed) -> None:
    t0, t1 = window("mlp-fp32-bs1")
    stats = encoder.stats(t0, t1)
    recs = by_kind(collect(encoder.pm, stats, encoder.config))
    (rec,) = recs["move-to-cpu"]
    assert rec.subject.startswith("mlp:fp32@")
    e = rec.evidence
    assert e["busy_fraction"] == pytest.approx(0.12, abs=0.02)
    costs = e["cost_per_1k_items"]
    assert costs[e["best"]] < 0.8 * costs["gpu_measured"]
    assert 0 < rec.savings.usd <= e["measured_cost_month"]
    # The GPU side is what the card cost while the MLP held it: its rate for the
    # phase, and then some energy; the card's hourly rate alone is 3 USD.
    hours = stats.window.seconds * stats.window.month_factor / 3600
    assert e["measured_cost_month"] == pytest.approx(3.0 * hours, rel=0.05)
    assert "batch" not in recs  # no curve for an "mlp", and it was only measured at batch 1


# ----- the efficient phase -----------------------------------------------------------


def test_encoder_bf16_batch16_is_left_alone(encoder: Replayed) -> None:
    recs = encoder.recommend(*window("encoder-bf16-bs16"))
    assert not [r for r in recs if r.kind in ("batch", "quantize")]
    # ...while its batch-1 phase, on the same deployment, is told to batch.
    batch1 = by_kind(encoder.recommend(*window("encoder-bf16-bs1")))
    assert [r.evidence["suggested_batch"] for r in batch1["batch"]] == [16]


# ----- keep-warm on the serving trace ---------------------------------------------------


def test_serving_processes_idle_before_serving_yield_keep_warm(serving: Replayed) -> None:
    stats = serving.stats(0.0, 1e12)
    recs = collect(serving.pm, stats, serving.config)
    targets = {r.evidence["pid"]: r for r in recs if r.kind == "keep-warm" and "pid" in r.evidence}
    assert set(targets) == {416, 417}
    for pid, rec in targets.items():
        first_call = serving.sql(
            "SELECT min(r.t0) FROM requests r JOIN targets t ON t.id = r.target_id WHERE t.pid = ?",
            pid,
        )[0][0]
        # The keep-warm shares it drew in flush windows that ended before its first call.
        ((kw_j, kw_cost),) = serving.sql(
            "SELECT sum(s.energy_j), sum(s.energy_cost + s.capacity_cost) FROM usage_shares s "
            "JOIN targets t ON t.id = s.target_id WHERE t.pid = ? AND s.bucket = 'keepwarm' "
            "AND s.t1 <= ?",
            pid,
            first_call,
        )
        assert 25 <= rec.evidence["idle_held_s"] <= 40  # ~30 s held before serving
        assert rec.evidence["keepwarm_j"] == pytest.approx(kw_j, rel=1e-3)
        assert rec.savings.usd == pytest.approx(kw_cost * stats.window.month_factor, rel=1e-3)
        assert rec.subject_kind == "target"
    (device,) = [r for r in recs if r.kind == "keep-warm" and r.subject_kind == "device"]
    assert device.evidence["gaps"][0]["held_by"] == [416, 417]


def test_every_saving_is_capped_and_ranked(serving: Replayed, encoder: Replayed) -> None:
    for run in (serving, encoder):
        recs = run.recommend(0.0, 1e12)
        assert recs
        assert [r.savings.usd for r in recs] == sorted((r.savings.usd for r in recs), reverse=True)
        assert len({r.stable_id for r in recs}) == len(recs)
        for r in recs:
            s = r.savings
            assert 0 <= s.usd_low <= s.usd <= s.usd_high <= r.evidence["measured_cost_month"] + 1e-4
            assert r.confidence in ("high", "medium", "low") and r.confidence_reason
            assert r.how_to_apply and "extrapolate" in r.evidence["extrapolation"]


# ----- what NVML adds for the recommenders ------------------------------------------


def test_readings_carry_memory_and_devices_their_capability(serving: Replayed) -> None:
    gpu = [r for r in serving.readings if r.device.kind == "gpu"]
    peak = max(r.memory_used_bytes or 0 for r in gpu)
    assert peak == 1159725056 + 1015021568  # the two servers' usedGpuMemory, summed
    assert any(r.memory_used_bytes == 0 for r in gpu)  # before anyone held the card
    device = gpu[0].device
    assert device.compute_capability == (9, 0)
    assert (device.min_power_limit_w, device.max_power_limit_w) == (200.0, 700.0)
    assert serving.sql("SELECT compute_capability FROM devices WHERE kind = 'gpu'") == [("9.0",)]
    assert serving.sql("SELECT max(memory_used_bytes) FROM device_windows") == [(peak,)]


def test_agent_recommend_stores_advice_with_nvml_range(serving: Replayed) -> None:
    agent = serving.agent
    assert agent is not None
    count = agent.recommend(now=serving.result.t_end)
    assert count > 0
    rows = serving.sql("SELECT kind, status FROM recommendations")
    assert len(rows) == count and {s for _, s in rows} == {"open"}
    assert "keep-warm" in {k for k, _ in rows}
    stats = build_stats(
        serving.engine,
        serving.store.host,
        0.0,
        1e12,
        serving.card,
        live_devices=agent.devices,
    )
    (gpu,) = [d for d in stats.devices if d.info.kind == "gpu"]
    assert gpu.info.min_power_limit_w == 200.0
