"""Each recommender's thresholds, and its silence when the data is thin, on hand-made stats.

The statistics are the same frozen records the stats builder makes from the
store; the plugins are the installed ones, loaded through the entry points.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import infermeter_cmd
from support.recommend_stats import (
    CPU,
    GPU,
    PRICES,
    WINDOW,
    bursty,
    config,
    device,
    model,
    run,
    stats,
    target,
    tiny,
)

from infermeter.errors import ConfigError
from infermeter.plugins.recommend import batch as recommend_batch
from infermeter.plugins.recommend import idle as recommend_idle
from infermeter.plugins.recommend import placement as recommend_placement
from infermeter.plugins.recommend import powercap as recommend_powercap
from infermeter.plugins.recommend import quantize as recommend_quantize
from infermeter.plugins.recommend import rightsize as recommend_rightsize
from infermeter.price.pricing import card_from_config
from infermeter.recommend.stats import (
    BatchPoint,
    DeviceSample,
    DeviceStats,
    Gap,
    IdleStretch,
    Window,
)


def test_batch_speaks_from_its_own_fit() -> None:
    (rec,) = run(recommend_batch, stats([model()]))
    assert rec.kind == "batch" and rec.confidence == "high"
    assert rec.evidence["suggested_batch"] == 32
    assert rec.evidence["j_per_item_suggested"] == pytest.approx(2700 / 16000, rel=1e-3)
    saved_j = 10_000 * (0.25 - 2700 / 16000) * WINDOW.month_factor
    assert rec.savings.kwh == pytest.approx(saved_j / 3.6e6 * 1.58, rel=1e-3)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"batch_calls": {1: 4_000, 32: 6_000}}, "mostly large batches already"),
        ({"busy_fraction": 0.95, "device_power_w": 600.0}, "device busy"),
        ({"calls": 99, "batch_calls": {1: 99}}, "too few calls"),
        ({"energy_cost_usd": None}, "unpriced"),
        ({"device": replace(GPU, kind="cpu")}, "not a GPU"),
        (
            {
                "profile": (
                    BatchPoint(1, 10_000, 10_000, 2500.0),
                    BatchPoint(32, 500, 16_000, 6000.0),
                )
            },
            "batching measured to cost more per item",
        ),
        ({"profile": (), "model": "mlp"}, "no measurement and no curve"),
        (
            {"profile": (BatchPoint(1, 10_000, 10_000, 2500.0), BatchPoint(32, 19, 608, 100.0))},
            "the large batch has too few calls to count, and an mlp has no curve",
        ),
    ],
)
def test_batch_is_silent(changes: dict[str, Any], why: str) -> None:
    if why.startswith("the large batch"):  # an mlp: no curve to fall back on
        changes["model"] = "mlp"
    assert run(recommend_batch, stats([model(**changes)])) == [], why


def test_batch_small_share_threshold_is_the_option() -> None:
    half = model(batch_calls={1: 5_000, 32: 5_000})
    assert len(run(recommend_batch, stats([half]))) == 1  # 50 % small: speaks
    strict = config(recommend_batch={"min_small_share": 0.6})
    assert run(recommend_batch, stats([half]), strict) == []


def test_batch_under_use_reads_power_when_utilisation_is_high() -> None:
    # NVML says 90 % busy, but the card draws a quarter of its limit: room to batch.
    assert len(run(recommend_batch, stats([model(busy_fraction=0.9, device_power_w=175.0)]))) == 1
    assert run(recommend_batch, stats([model(busy_fraction=0.9, device_power_w=500.0)])) == []


def test_batch_latency_budget_rules_out_slow_batches() -> None:
    tight = config(recommend_batch={"latency_budget_ms": 20.0})
    assert run(recommend_batch, stats([model()]), tight) == []


def test_batch_falls_back_to_the_documented_curve() -> None:
    (rec,) = run(recommend_batch, stats([model(profile=(BatchPoint(1, 10_000, 10_000, 2500.0),))]))
    assert rec.confidence == "low" and rec.evidence["suggested_batch"] == 8
    f = recommend_batch.CURVES[("cnn", "fp32")]
    assert rec.evidence["j_per_item_suggested"] == pytest.approx(0.25 * (f + (1 - f) / 8), rel=1e-3)
    assert recommend_batch.architecture("bert-base") == "transformer"
    assert recommend_batch.architecture("mlp") is None


# ----- quantize ----------------------------------------------------------------------


def test_quantize_uses_a_measured_lower_precision_deployment() -> None:
    bf16 = model(
        dtype="bf16",
        calls=0,
        items=0,
        batch_calls={},
        profile=(BatchPoint(1, 1000, 1000, 50.0),),
    )
    (rec,) = run(recommend_quantize, stats([model(), bf16]))
    assert rec.confidence == "high"
    assert rec.evidence["measured_ratio"] == pytest.approx(0.2)
    assert rec.evidence["saving_fraction"] == pytest.approx(0.8)


def test_quantize_is_silent_when_lower_precision_measured_no_better() -> None:
    worse = model(
        dtype="bf16", calls=0, items=0, batch_calls={}, profile=(BatchPoint(1, 1000, 1000, 300.0),)
    )
    assert run(recommend_quantize, stats([model(), worse])) == []


def test_quantize_confidence_follows_the_profile() -> None:
    (compute,) = run(recommend_quantize, stats([model(busy_fraction=0.8, device_power_w=400.0)]))
    assert compute.confidence == "medium"
    assert compute.evidence["saving_fraction"] == recommend_quantize.COMPUTE_BOUND_SAVING
    (small,) = run(recommend_quantize, stats([model(busy_fraction=0.1, device_power_w=130.0)]))
    assert small.confidence == "low" and "caution" in small.evidence
    assert small.savings.usd < compute.savings.usd


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"dtype": "bf16"}, "already 16-bit"),
        ({"device": replace(GPU, compute_capability=(6, 1))}, "no tensor cores"),
        ({"device": replace(GPU, compute_capability=None)}, "capability unknown"),
        ({"calls": 10}, "too few calls"),
        ({"capacity_cost_usd": None}, "unpriced"),
    ],
)
def test_quantize_is_silent(changes: dict[str, Any], why: str) -> None:
    assert run(recommend_quantize, stats([model(**changes)])) == [], why


def test_quantize_suggests_fp16_before_ampere() -> None:
    (rec,) = run(recommend_quantize, stats([model(device=replace(GPU, compute_capability=(7, 5)))]))
    assert rec.evidence["suggested_dtype"] == "fp16"


# ----- placement -------------------------------------------------------------------


def test_placement_moves_a_tiny_model_off_the_gpu() -> None:
    (rec,) = run(recommend_placement, stats([tiny()], window=Window(0, 5)))
    assert rec.kind == "move-to-cpu" and rec.subject_kind == "model"
    e = rec.evidence
    assert e["flops_per_item_upper_bound"] < 1e9
    assert set(e["cost_per_1k_items"]) == {"gpu_measured", "cpu", "NVIDIA Jetson Orin Nano 8GB"}
    assert rec.savings.usd <= e["measured_cost_month"]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"busy_fraction": 0.5}, "the GPU is well used"),
        ({"energy_j": 60.0}, "1 mJ per item bounds the work above 1 GFLOP"),
        ({"parameters": 100_000_000}, "too many parameters"),
        ({"loaded_cost_usd": None}, "unpriced"),
        ({"busy_fraction": None}, "utilisation unknown"),
        ({"calls": 50}, "too few calls"),
        ({"loaded_cost_usd": 0.00001}, "the GPU share is already cheaper"),
    ],
)
def test_placement_is_silent(changes: dict[str, Any], why: str) -> None:
    assert run(recommend_placement, stats([tiny(**changes)], window=Window(0, 5))) == [], why


@pytest.mark.parametrize("active_s", [5e-324, 1e-310])
def test_placement_is_silent_on_a_model_whose_item_rate_overflows(active_s: float) -> None:
    """Calls that covered next to no time make items per second infinite: that model gets
    no advice, and the others on the host still get theirs."""
    other = tiny(model="mlp-2")
    s = stats([tiny(active_s=active_s), other], window=Window(0, 5))
    assert [r.subject for r in run(recommend_placement, s)] == [other.key]


def test_placement_is_silent_when_the_fleet_it_would_size_overflows() -> None:
    """A fleet too large to count (absurdly slow cores and edge devices): no advice."""
    slow = {"cpu_gflops_per_core": 1e-305, "edge_efficiency": 1e-305}
    s = stats([tiny()], window=Window(0, 5))
    assert run(recommend_placement, s, config(recommend_placement=slow)) == []


def test_placement_prefers_a_measured_cpu_deployment_of_similar_size() -> None:
    on_cpu = model(
        model="mlp-cpu",
        device=CPU,
        parameters=1_500_000,
        calls=1000,
        items=10_000,
        energy_j=5.0,
        energy_cost_usd=0.00001,
        capacity_cost_usd=0.0001,
    )
    s = stats([tiny(parameters=1_000_000), on_cpu], window=Window(0, 5))
    (rec,) = run(recommend_placement, s, config(recommend_placement={"edge_efficiency": 0.0001}))
    assert rec.evidence["best"] == "cpu"
    assert "measured" in rec.confidence_reason
    assert rec.evidence["cost_per_1k_items"]["cpu"] == pytest.approx(0.00011 / 10)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cpu_gflops_per_core", 0, "must be > 0, not 0"),
        ("cpu_gflops_per_core", -50.0, "must be > 0, not -50.0"),
        ("edge_efficiency", 0.0, "must be > 0, not 0.0"),
        ("edge_efficiency", 1.5, "must be <= 1, not 1.5"),
    ],
)
def test_placement_divisors_are_bounded_when_the_config_is_read(
    key: str, value: float, message: str
) -> None:
    """0 would divide by zero in the judge; it is one error naming the key instead."""
    with pytest.raises(ConfigError) as e:
        config(recommend_placement={key: value})
    assert f"`recommend_placement.{key}`" in str(e.value) and message in str(e.value)


def test_a_zero_divisor_in_the_file_exits_2_with_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[recommend_placement]\ncpu_gflops_per_core = 0\n")
    r = subprocess.run(
        [*infermeter_cmd(), "--config", str(path), "config", "show"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "recommend_placement.cpu_gflops_per_core" in lines[0], r.stderr
    assert "must be > 0" in lines[0] and "Traceback" not in r.stderr


def test_placement_needs_the_cards_throughput() -> None:
    bare = replace(PRICES, card=None)
    assert run(recommend_placement, stats([tiny()], window=Window(0, 5), prices=bare)) == []


# ----- right-size -------------------------------------------------------------------


def test_rightsize_names_the_cheapest_card_that_fits() -> None:
    (rec,) = run(recommend_rightsize, stats(devices=[device()]))
    e = rec.evidence
    assert e["suggested"] == "NVIDIA L4"
    assert [c["name"] for c in e["cards_that_fit"]] == [
        "NVIDIA L4",
        "NVIDIA A10G",
        "NVIDIA L40S",
    ]
    hours = 2.0 * WINDOW.month_factor
    assert rec.savings.usd >= (3.0 - 0.8048) * hours * 0.999


def test_rightsize_respects_memory_and_throughput() -> None:
    big = replace(
        device(), samples=tuple(replace(s, memory_used_bytes=30 * 2**30) for s in device().samples)
    )
    (rec,) = run(recommend_rightsize, stats(devices=[big]))
    assert rec.evidence["suggested"] == "NVIDIA L40S"  # only the 48 GB card holds 30 GiB
    busy = replace(device(), samples=tuple(replace(s, busy_fraction=0.5) for s in device().samples))
    assert run(recommend_rightsize, stats(devices=[busy])) == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        (
            {
                "samples": tuple(
                    DeviceSample(t, t + 10.0, 1200.0, 0.05, 2**30) for t in range(0, 3000, 10)
                )
            },
            "under an hour",
        ),
        ({"cost_usd": None}, "unpriced"),
        ({"info": replace(GPU, hourly_usd=None)}, "no rate"),
        ({"info": replace(GPU, name="Mystery GPU", hourly_usd=3.0)}, "card not on the price card"),
        (
            {
                "samples": tuple(
                    DeviceSample(t, t + 10.0, 1200.0, 0.05, None) for t in range(0, 7200, 10)
                )
            },
            "memory unknown",
        ),
    ],
)
def test_rightsize_is_silent(changes: dict[str, Any], why: str) -> None:
    assert run(recommend_rightsize, stats(devices=[device(**changes)])) == [], why


# ----- keep-warm ----------------------------------------------------------------------


def test_keep_warm_costs_the_idle_stretches() -> None:
    (rec,) = run(recommend_idle, stats(devices=[device()], targets=[target()]))
    assert rec.kind == "keep-warm" and rec.subject_kind == "target"
    assert rec.savings.usd == pytest.approx(0.3 * WINDOW.month_factor)
    assert rec.evidence["idle_held_s"] == 600.0


def test_keep_warm_ignores_short_stretches() -> None:
    short = target(idle_stretches=(IdleStretch(0.0, 15.0, 36.0, 0.01),))
    assert run(recommend_idle, stats(devices=[device()], targets=[short])) == []
    lenient = config(recommend_idle={"min_stretch_s": 10.0})
    assert len(run(recommend_idle, stats(devices=[device()], targets=[short]), lenient)) == 1
    unpriced = target(idle_stretches=(IdleStretch(0.0, 600.0, 1440.0, None),))
    assert run(recommend_idle, stats(devices=[device()], targets=[unpriced])) == []


def test_released_device_saves_its_idle_and_rate_only_when_rented() -> None:
    gap = Gap(0.0, 600.0, (7, 8), 70_800.0, 42_000.0, 28_800.0, 0.51, 0.3)
    (rented,) = run(recommend_idle, stats(devices=[device(gaps=(gap,))]))
    assert rented.subject_kind == "device" and rented.confidence == "medium"
    assert rented.savings.usd == pytest.approx(0.3 * WINDOW.month_factor)
    owned_card = card_from_config(
        config(prices={"devices": {"H100": {"purchase": 30000, "years": 4}}})
    )
    owned = stats(devices=[device(gaps=(gap,))], prices=replace(PRICES, card=owned_card))
    (rec,) = run(recommend_idle, owned)
    energy_only = 42_000.0 / 3.6e6 * 1.58 * 0.13 * WINDOW.month_factor
    assert rec.confidence == "low" and rec.savings.usd == pytest.approx(energy_only)


# ----- power cap ----------------------------------------------------------------------


def test_power_cap_suggests_a_limit_inside_the_range() -> None:
    (rec,) = run(recommend_powercap, stats(devices=[bursty()]))
    e = rec.evidence
    assert 200.0 <= e["suggested_limit_w"] <= 700.0 * 0.9
    assert e["suggested_limit_w"] % 25 == 0
    assert e["worst_busy_after_cap"] <= 0.9
    assert e["range_source"] == "nvml"
    assert rec.savings.kwh > 0 and rec.confidence == "low"
    assert f"infermeter apply {rec.stable_id} --yes" in rec.how_to_apply


def test_power_cap_range_falls_back_to_the_table() -> None:
    no_nvml = replace(bursty(), info=replace(GPU, min_power_limit_w=None, max_power_limit_w=None))
    (rec,) = run(recommend_powercap, stats(devices=[no_nvml]))
    assert rec.evidence["range_source"] == "table"
    assert rec.evidence["allowed_range_w"] == [200.0, 700.0]


@pytest.mark.parametrize(
    ("dev", "why"),
    [
        (bursty(busy=0.95), "bursts near full: any cap in range slows them past 0.9"),
        (
            device(
                samples=tuple(
                    DeviceSample(t, t + 10.0, 4000.0, 0.7, 2**30) for t in range(0, 1200, 10)
                )
            ),
            "heavily loaded: mean utilisation 0.7",
        ),
        (bursty(power_w=125.0), "the cap would never bind: nothing saved"),
        (bursty(n=50), "observed under 10 minutes"),
        (
            replace(bursty(), info=replace(GPU, name="Mystery", min_power_limit_w=None)),
            "no range known",
        ),
        (replace(bursty(), cost_usd=None), "unpriced"),
    ],
)
def test_power_cap_is_silent(dev: DeviceStats, why: str) -> None:
    assert run(recommend_powercap, stats(devices=[dev])) == [], why


def test_power_cap_model_stretches_busy_time_by_the_cube_root() -> None:
    s = (DeviceSample(0.0, 10.0, 5000.0, 1.0, None),)  # 500 W while busy all the time
    worst, saved = recommend_powercap.effect(s, 300.0, 70.0, 118.0, 700.0)
    assert worst == pytest.approx((430 / 230) ** (1 / 3))
    assert saved == pytest.approx(10 * 430 * (1 - (230 / 430) ** (2 / 3)))
