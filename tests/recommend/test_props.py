"""Property tests: whatever the measurements, no recommender promises a negative saving
or a saving above what its subject measurably costs (both scaled to a month alike).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.recommend_stats import (
    GPU,
    PM,
    PRICES,
    config,
    model,
    stats,
    target,
)

from infermeter.recommend.calls import _mean_over, extend, overlap
from infermeter.recommend.money import CONFIDENCES, WindowSaving, monthly_savings
from infermeter.recommend.run import collect
from infermeter.recommend.stats import (
    BatchPoint,
    DeviceSample,
    DeviceStats,
    Gap,
    IdleStretch,
    ModelStats,
    Stats,
    TargetStats,
    Window,
)
from infermeter.records import Recommendation

# Thresholds lowered so that every recommender speaks on some examples.
CONFIG = config(
    recommend_rightsize={"min_observed_s": 60.0},
    recommend_powercap={"min_observed_s": 60.0},
    recommend_placement={"max_busy": 0.8, "max_gflops_per_item": 1e6},
    recommend={"min_savings_usd_month": 0.0},
)
money = st.floats(min_value=0.0, max_value=1e3, allow_nan=False)
joules = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)
fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
batches = st.sampled_from([1, 2, 4, 8, 16, 32])


@st.composite
def points(draw: st.DrawFn) -> tuple[BatchPoint, ...]:
    sizes = draw(st.sets(batches, min_size=1, max_size=4))
    out = []
    for b in sorted(sizes):
        calls = draw(st.integers(0, 5000))
        out.append(
            BatchPoint(
                b,
                calls,
                calls * b,
                draw(joules),
                draw(st.none() | st.floats(0.01, 100.0)),
                draw(st.none() | st.floats(0.01, 200.0)),
                shared=draw(st.booleans()),
            )
        )
    return tuple(out)


@st.composite
def deployments(draw: st.DrawFn) -> ModelStats:
    profile = draw(points())
    batch_calls = {p.batch: draw(st.integers(0, 20_000)) for p in profile}
    calls = sum(batch_calls.values())
    return model(
        model=draw(st.sampled_from(["resnet50", "encoder", "mlp", "bert"])),
        dtype=draw(st.sampled_from(["fp32", "bf16", "fp16", None])),
        parameters=draw(st.none() | st.integers(1000, 10**9)),
        device=replace(
            GPU, compute_capability=draw(st.sampled_from([(9, 0), (7, 5), (6, 1), None]))
        ),
        calls=calls,
        items=sum(b * n for b, n in batch_calls.items()),
        batch_calls=batch_calls,
        energy_j=draw(joules),
        energy_cost_usd=draw(money),
        capacity_cost_usd=draw(money),
        loaded_cost_usd=draw(st.none() | money),
        loaded_energy_j=draw(joules),
        busy_fraction=draw(st.none() | fraction),
        device_power_w=draw(st.none() | st.floats(0.0, 700.0)),
        active_s=draw(st.floats(0.0, 3600.0)),
        profile=profile,
    )


samples = st.lists(
    st.tuples(
        st.floats(0.0, 7000.0),
        st.none() | fraction,
        st.none() | st.integers(0, 85 * 2**30),
    ),
    max_size=90,
)


@st.composite
def devices(draw: st.DrawFn) -> DeviceStats:
    quiet = draw(st.sampled_from([1.0, 0.05]))  # a card that idles: right-size territory
    windows = tuple(
        DeviceSample(10.0 * i, 10.0 * i + 10.0, e, None if busy is None else busy * quiet, memory)
        for i, (e, busy, memory) in enumerate(draw(samples))
    )
    gaps = tuple(
        Gap(
            0.0,
            draw(st.floats(0.0, 600.0)),
            (1,),
            draw(joules),
            draw(joules),
            draw(joules),
            draw(money),
            draw(money),
        )
        for _ in range(draw(st.integers(0, 2)))
    )
    return DeviceStats(
        info=GPU,
        samples=windows,
        energy_j=draw(joules),
        cost_usd=draw(money),
        energy_cost_usd=draw(money),
        idle_j=draw(joules),
        keepwarm_j=draw(joules),
        active_j=draw(joules),
        gaps=gaps,
    )


@st.composite
def targets(draw: st.DrawFn, pid: int) -> TargetStats:
    stretches = tuple(
        IdleStretch(0.0, draw(st.floats(0.0, 3600.0)), draw(joules), draw(money))
        for _ in range(draw(st.integers(0, 3)))
    )
    return target(pid=pid, cost_usd=draw(money), idle_stretches=stretches, keepwarm_j=draw(joules))


def measured_cost(rec: Recommendation, s: Stats) -> float:
    """The window cost of the recommendation's subject, from the statistics themselves."""
    for m in s.models:
        if m.key == rec.subject:
            cost = m.loaded_cost_usd if rec.kind == "move-to-cpu" else m.cost_usd
            assert cost is not None
            return cost
    for t in s.targets:
        if t.key == rec.subject:
            assert t.cost_usd is not None
            return t.cost_usd
    for d in s.devices:
        if rec.subject.startswith(f"{d.info.name} {d.info.uid[:12]}@"):
            assert d.cost_usd is not None
            return d.cost_usd
    raise AssertionError(f"subject {rec.subject} is not in the statistics")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=st.lists(deployments(), max_size=3, unique_by=lambda m: (m.model, m.dtype)),
    devs=st.lists(devices(), max_size=1),
    tgts=st.tuples(targets(7), targets(8)),
    seconds=st.floats(1.0, 30 * 86400.0),
)
def test_savings_never_negative_nor_above_the_subjects_cost(
    models: list[ModelStats],
    devs: list[DeviceStats],
    tgts: tuple[TargetStats, ...],
    seconds: float,
) -> None:
    s = Stats("h", Window(0.0, seconds), PRICES, tuple(models), tuple(devs), tuple(tgts))
    raw: list[Any] = PM.collect("infermeter_recommend", stats=s, config=CONFIG)
    for rec in [*raw, *collect(PM, s, CONFIG)]:
        sv = rec.savings
        cap = measured_cost(rec, s) * s.window.month_factor
        assert 0.0 <= sv.usd_low <= sv.usd <= sv.usd_high, rec
        assert sv.usd_high <= cap * (1 + 1e-9) + 1e-9, (rec.kind, sv, cap)
        assert sv.kwh >= 0 and sv.kgco2e >= 0
        assert rec.confidence in CONFIDENCES


@given(
    energy=st.floats(-1e7, 1e9),
    other=st.floats(-1e3, 1e6),
    cap=st.floats(-1.0, 1e4),
    seconds=st.floats(0.001, 1e7),
    confidence=st.sampled_from(["high", "medium", "low", "unknown"]),
)
def test_monthly_savings_are_clamped(
    energy: float, other: float, cap: float, seconds: float, confidence: str
) -> None:
    window = Window(0.0, seconds)
    s = monthly_savings(WindowSaving(energy, other), cap, window, PRICES, confidence)
    top = max(cap, 0.0) * window.month_factor
    assert 0.0 <= s.usd_low <= s.usd <= s.usd_high <= top * (1 + 1e-12)
    assert s.kwh >= 0 and s.kgco2e >= 0
    if energy <= 0 and other <= 0:
        assert s.usd == 0.0


def test_a_recommender_without_data_says_nothing() -> None:
    empty = stats()
    assert PM.collect("infermeter_recommend", stats=empty, config=CONFIG) == []


@st.composite
def calls_and_windows(draw: Any) -> tuple[list[tuple[float, float]], list[DeviceSample]]:
    """Calls in start order (some overlapping) and 10 s device windows over them."""
    starts = sorted(draw(st.lists(st.floats(0, 300, allow_nan=False), max_size=60)))
    lengths = draw(st.lists(st.floats(0, 20), min_size=len(starts), max_size=len(starts)))
    union: list[tuple[float, float]] = []
    for t0, length in zip(starts, lengths, strict=True):
        extend(union, t0, t0 + length)
    busy = draw(st.lists(st.floats(0, 1), min_size=33, max_size=33))
    samples = [
        DeviceSample(10.0 * k, 10.0 * (k + 1), 700.0 * b, None if k % 7 == 3 else b, None)
        for k, b in enumerate(busy)
    ]
    return union, samples


@given(calls_and_windows())
def test_mean_over_the_calls_is_the_brute_force_mean(
    case: tuple[list[tuple[float, float]], list[DeviceSample]],
) -> None:
    """The bisecting sweep gives what summing every window against every call gives."""
    union, samples = case
    for busy in (True, False):
        weight = total = 0.0
        for s in samples:
            value = s.busy_fraction if busy else s.power_w
            if value is None:
                continue
            o = sum(overlap(s.t0, s.t1, a, b) for a, b in union)
            weight += o
            total += value * o
        expected = total / weight if weight > 0 else None
        got = _mean_over(samples, union, busy)
        if expected is None:
            assert got is None
        else:
            assert got is not None and abs(got - expected) <= 1e-9 * max(1.0, abs(expected))
