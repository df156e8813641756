"""Placement advice: a small model occupying a large GPU, better served on a CPU or edge device.

Rule. A GPU deployment speaks when its card was lightly used while it ran
(utilisation at most ``max_busy``), the model is small (its work per item,
bounded from above as below, at most ``max_gflops_per_item``, and its
parameter count, when known, at most ``max_parameters``), and serving the
same items elsewhere, hardware included, would cost at most ``margin`` of
what it costs on the GPU. The GPU
side is measured: the deployment's calls plus its part of the card's idle
and keep-warm draw and hourly rate while it ran (``loaded_cost_usd``): a
small model alone on a GPU pays for the whole GPU.

The other side is estimated, pessimistically for the move:

- work per item: an upper bound from the measured energy per item on the
  GPU. The card cannot do a FLOP for less than its dynamic power at full
  dense 16-bit tensor throughput (board power less idle, over the price
  card's ``tflops``), so FLOPs/item <= J/item / (J per FLOP at best). The
  parameter count, when known, only decides whether the model is small (a
  convolution reuses weights, so 2 x parameters would understate its work);
- the framework's per-call time on the host (the measured p50 latency per
  call less the GPU's kernel time per call) is paid on a CPU too;
- a CPU: ``cpu_gflops_per_core`` per core (a third of an AVX-512 core's
  fp32 peak of ~160 GFLOP/s at 2.5 GHz), cores billed at the card's
  ``cpu_core_hour`` while the model runs, drawing the host's measured CPU
  power per core (else 3.5 W, Cloud Carbon Footprint's full-load average per
  vCPU); a measured CPU deployment of this host with a parameter count within
  2x replaces the estimate with its own cost per item;
- an edge device: each price-card entry marked ``edge``, at ``edge_efficiency``
  of its dense tensor throughput, with the host part ``EDGE_HOST_SLOWDOWN``
  times slower (small ARM cores), as many devices as the rate needs, billed
  at the card's rate and their board power.

Both are sized for the measured item rate at ``HEADROOM`` utilisation; a
deployment whose rate sizes no fleet (its calls covered next to no time, so
the rate overflows) gets no advice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from infermeter.config import Option, above
from infermeter.plugins.recommend._rule import Advice, Options, Pass, hooks, models
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import DeviceStats, ModelStats, Prices, Stats

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend_placement",
        "max_busy",
        0.3,
        "GPU utilisation (0-1) while the model ran at or under which the GPU is under-used.",
    ),
    Option(
        "recommend_placement",
        "max_parameters",
        50_000_000,
        "Models with more parameters (when known) are not small.",
    ),
    Option(
        "recommend_placement",
        "max_gflops_per_item",
        1.0,
        "Largest work per item (GFLOP, bounded from the measured energy) of a small model.",
    ),
    Option(
        "recommend_placement", "min_calls", 100, "Calls in the window below which it says nothing."
    ),
    Option(
        "recommend_placement",
        "margin",
        0.8,
        "Move only when the other place costs at most this fraction of the GPU's cost.",
    ),
    Option(
        "recommend_placement",
        "cpu_gflops_per_core",
        50.0,
        "Sustained inference GFLOP/s of one CPU core (fp32); > 0.",
        check=above(0),
    ),
    Option(
        "recommend_placement",
        "edge_efficiency",
        0.3,
        "Fraction (> 0, <= 1) of an edge device's dense tensor TFLOPS a small model reaches.",
        check=above(0, 1),
    ),
)

HEADROOM = 0.7  # size the CPU or edge fleet to run at most 70 % busy
EDGE_HOST_SLOWDOWN = 3.0  # an edge device's ARM cores against a server core
GENERIC_CPU_W_PER_CORE = 3.5


@dataclass(frozen=True, slots=True)
class Place:
    """One place the model could run: what it would cost over the window."""

    place: str  # "cpu" or the edge device's name
    cost_usd: float
    energy_j: float
    units: int  # cores or devices
    seconds_per_item: float
    measured: bool = False

    def per_1k(self, items: int) -> float:
        return self.cost_usd / items * 1000 if items else 0.0


def _j_per_flop(m: ModelStats, prices: Prices) -> float | None:
    card = prices.card
    rate = card.device_rate(m.device.name) if card is not None else None
    if rate is None or not rate.tflops or not m.device.power_limit_w:
        return None
    dynamic_w = m.device.power_limit_w - (m.device.idle_power_w or 0.0)
    return dynamic_w / (rate.tflops * 1e12) if dynamic_w > 0 else None


def _host_s_per_call(m: ModelStats) -> float:
    """Framework time per call on the host: p50 latency less the GPU's kernel time."""
    calls = sum(m.batch_calls.values())
    if calls <= 0:
        return 0.0
    total_ms = 0.0
    for batch, n in m.batch_calls.items():
        point = m.point(batch)
        total_ms += (point.p50_ms or 0.0) * n if point is not None else 0.0
    p50 = total_ms / calls
    kernel_s = (m.busy_fraction or 0.0) * m.active_s / m.calls if m.calls else 0.0
    return max(p50 / 1000.0 - kernel_s, 0.0)


class Unsized(ArithmeticError):
    """The measured item rate sizes no fleet: calls that covered next to no time
    (``active_s`` near zero) make it, or the cores and devices it needs, overflow."""


def _units(m: ModelStats, s_per_item: float) -> int:
    """Cores or devices that serve the measured item rate at ``HEADROOM``."""
    need = m.items / m.active_s * s_per_item / HEADROOM
    if not math.isfinite(need):
        raise Unsized(f"{m.key}: {need} units to serve {m.items} items in {m.active_s} s")
    return max(1, math.ceil(need))


def _cpu(
    m: ModelStats,
    flops: float,
    host_s: float,
    devices: Sequence[DeviceStats],
    models: Sequence[ModelStats],
    prices: Prices,
    gflops: float,
) -> Place | None:
    for other in models:
        if (
            other.device.kind in ("cpu", "cpu-package")
            and other.items > 0
            and other.cost_usd is not None
            and m.parameters
            and other.parameters
            and 0.5 <= other.parameters / m.parameters <= 2.0
        ):
            per_item = other.cost_usd / other.items
            return Place(
                "cpu",
                per_item * m.items,
                other.energy_j / other.items * m.items,
                0,
                0.0,
                measured=True,
            )
    if prices.cpu_core_hour is None or m.active_s <= 0:
        return None
    batch = m.items / m.calls if m.calls else 1.0
    s_per_item = flops / (gflops * 1e9) + host_s / batch
    cores = _units(m, s_per_item)
    cpu = next((d for d in devices if d.info.kind in ("cpu", "cpu-package") and d.info.cores), None)
    watts = GENERIC_CPU_W_PER_CORE
    if cpu is not None and cpu.info.power_limit_w and cpu.info.cores:
        watts = cpu.info.power_limit_w / cpu.info.cores
    energy = cores * watts * m.active_s
    cost = cores * prices.cpu_core_hour * m.active_s / 3600 + (prices.energy_usd(energy) or 0.0)
    return Place("cpu", cost, energy, cores, s_per_item)


def _edges(
    m: ModelStats, flops: float, host_s: float, prices: Prices, efficiency: float
) -> list[Place]:
    card = prices.card
    if card is None or m.active_s <= 0:
        return []
    out = []
    batch = m.items / m.calls if m.calls else 1.0
    for rate in card.device_rates:
        if not rate.edge or not rate.tflops or not rate.tdp_w:
            continue
        if m.parameters and rate.memory_gb and m.parameters * 4 > rate.memory_gb * 2**30 / 2:
            continue  # fp32 weights must fit in half the device's memory
        s_per_item = flops / (rate.tflops * 1e12 * efficiency) + host_s * EDGE_HOST_SLOWDOWN / batch
        units = _units(m, s_per_item)
        energy = units * rate.tdp_w * m.active_s
        cost = units * rate.hourly * m.active_s / 3600 + (prices.energy_usd(energy) or 0.0)
        out.append(Place(rate.label, cost, energy, units, s_per_item))
    return out


def recommend_one(m: ModelStats, stats: Stats, opt: Options) -> Advice | None:
    prices = stats.prices
    if m.device.kind != "gpu" or m.calls < int(opt["min_calls"]) or m.items <= 0:
        return None
    if m.loaded_cost_usd is None or m.loaded_cost_usd <= 0 or m.busy_fraction is None:
        return None
    if m.busy_fraction > float(opt["max_busy"]):
        return None
    if m.parameters is not None and m.parameters > int(opt["max_parameters"]):
        return None
    j_per_flop = _j_per_flop(m, prices)
    if j_per_flop is None:
        return None
    flops = m.j_per_item / j_per_flop  # an upper bound on the work per item
    if flops > float(opt["max_gflops_per_item"]) * 1e9:
        return None
    host_s = _host_s_per_call(m)
    gflops, efficiency = float(opt["cpu_gflops_per_core"]), float(opt["edge_efficiency"])
    try:
        cpu = _cpu(m, flops, host_s, stats.devices, stats.models, prices, gflops)
        edges = _edges(m, flops, host_s, prices, efficiency)
    except Unsized:
        return None  # no fleet to compare the GPU with
    places = [p for p in (cpu, *edges) if p]
    if not places:
        return None
    best = min(places, key=lambda p: p.cost_usd)
    gpu_cost = m.loaded_cost_usd
    if best.cost_usd > float(opt["margin"]) * gpu_cost:
        return None
    energy_saved = max(m.loaded_energy_j - best.energy_j, 0.0)
    other = max(gpu_cost - best.cost_usd - (prices.energy_usd(energy_saved) or 0.0), 0.0)
    ratio = best.cost_usd / gpu_cost
    if best.measured:
        confidence, reason = (
            "medium",
            "CPU cost measured on this host's CPU deployment of a similar size",
        )
    elif ratio <= 0.5:
        confidence = "medium"
        reason = "cheaper by half or more even with the work per item bounded from above"
    else:
        confidence = "low"
        reason = "CPU/edge cost estimated from an upper bound on the work per item"
    where = "the CPU" if best.place == "cpu" else f"an edge device ({best.place})"
    evidence = {
        "model": m.model,
        "dtype": m.dtype,
        "parameters": m.parameters,
        "device": m.device.short,
        "busy_fraction": rounded(m.busy_fraction),
        "j_per_item": rounded(m.j_per_item),
        "items": m.items,
        "items_per_s_while_running": rounded(m.items / m.active_s) if m.active_s else None,
        "flops_per_item_upper_bound": rounded(flops),
        "host_ms_per_call": rounded(host_s * 1000),
        "cost_per_1k_items": {
            "gpu_measured": rounded(gpu_cost / m.items * 1000),
            **{p.place: rounded(p.per_1k(m.items)) for p in places},
        },
        "units_needed": {p.place: p.units for p in places},
        "best": best.place,
        "assumptions": (
            f"CPU {opt['cpu_gflops_per_core']} GFLOP/s per core; edge at "
            f"{opt['edge_efficiency']} of its tensor TFLOPS; sized for {HEADROOM:.0%} busy"
        ),
    }
    how = (
        f"Serve {m.model} on {where}: export it (ONNX Runtime on CPU, or TensorRT/LiteRT on the "
        f"edge device), size for {best.units} {'cores' if best.place == 'cpu' else 'devices'} at "
        f"the measured {evidence['items_per_s_while_running']} items/s, then release the GPU "
        f"(or give it to a model that needs it)."
    )
    return Advice(
        "move-to-cpu",
        Subject("model", m.key, m.device.host, gpu_cost),
        WindowSaving(energy_j=energy_saved, other_usd=other),
        confidence,
        reason,
        how,
        evidence,
    )


infermeter_config_options, infermeter_recommend = hooks(OPTIONS, Pass(models, recommend_one))
