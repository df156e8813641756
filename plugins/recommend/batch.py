"""Batch advice: a model served mostly at small batches on a device it under-uses.

Rule. A GPU deployment speaks when, in the window, at least
``min_small_share`` of its calls carried at most ``small_batch`` items and
its device was under-used while it ran: NVML's utilisation at most
``max_busy``, or its mean power at most ``max_power_fraction`` of the power
limit. (NVML counts any running kernel as busy, so a launch-bound batch-1
loop reads ~90 % busy while drawing a quarter of the card's power: either
signal says there is room.)

Estimate. The saving is energy per item: the marginal (active) energy, the
part batching changes; idle and keep-warm draw stay while the model is
served. When the deployment has itself been measured at two or more batch
sizes (``min_point_calls`` calls each), energy per item is fitted as
``a + c / batch`` (a per-call cost amortised over the batch, plus a
per-item cost), weighted by items; the suggestion is the measured batch
size with the lowest fitted energy per item whose p99 latency per call fits
``latency_budget_ms`` (0: any, the latency is stated). Otherwise the
documented curve of its architecture is used (``CURVES``), at batch
``CURVE_BATCH``, with low confidence; an architecture not in the table gets
no advice. Batch advice on a deployment whose measurements say batching does
not lower its energy per item is silent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from infermeter.config import Option
from infermeter.plugins.recommend._rule import Advice, Options, Pass, hooks, models
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import BatchPoint, ModelStats, Stats

OPTIONS: tuple[Option, ...] = (
    Option("recommend_batch", "small_batch", 4, "A call of at most this many items is small."),
    Option(
        "recommend_batch",
        "min_small_share",
        0.5,
        "Share of a deployment's calls that must be small for batch advice.",
    ),
    Option(
        "recommend_batch",
        "max_busy",
        0.6,
        "Device utilisation (NVML, 0-1) at or under which it counts as under-used.",
    ),
    Option(
        "recommend_batch",
        "max_power_fraction",
        0.6,
        "Device power, as a fraction of its limit, at or under which it counts as under-used.",
    ),
    Option("recommend_batch", "min_calls", 100, "Calls in the window below which it says nothing."),
    Option(
        "recommend_batch",
        "min_point_calls",
        20,
        "Calls a batch size needs to count as measured in the deployment's profile.",
    ),
    Option(
        "recommend_batch",
        "latency_budget_ms",
        0.0,
        "Largest p99 latency per call a suggested batch may have; 0: no budget.",
    ),
)

# Energy per item relative to batch 1 follows f + (1 - f) / batch, f being
# the part of batch-1 energy that is per item. Fitted to the shared H100
# recordings (tests/fixtures/h100-resnet-encoder: each phase's energy from
# the counter, less the card's idle and keep-warm draw), batch 1 against 32
# (ResNet-50) and 16 (a 12-layer encoder), synchronous PyTorch calls:
#   ResNet-50 fp32 0.251 -> 0.168 J/item (f = 0.66); bf16 0.052 -> 0.031 (0.59)
#   encoder   fp32 0.486 -> 0.332 J/item (f = 0.66); bf16 0.072 -> 0.030 (0.38)
# One card and one framework: a default for when the deployment has not been
# measured at several batch sizes itself, hence low confidence.
CURVES: dict[tuple[str, str], float] = {
    ("cnn", "fp32"): 0.66,
    ("cnn", "bf16"): 0.59,
    ("cnn", "fp16"): 0.59,
    ("transformer", "fp32"): 0.66,
    ("transformer", "bf16"): 0.38,
    ("transformer", "fp16"): 0.38,
}
CURVE_BATCH = 8  # a moderate batch, where the curves above have most of their gain
_ARCHITECTURES = (
    ("cnn", re.compile(r"resnet|vgg|efficientnet|mobilenet|convnext|densenet|yolo|inception")),
    ("transformer", re.compile(r"bert|encoder|transformer|vit|gpt|llama|t5|roberta|whisper")),
)


def architecture(model: str) -> str | None:
    """A model's architecture family from its name, for the documented curves."""
    name = model.lower()
    return next((arch for arch, pattern in _ARCHITECTURES if pattern.search(name)), None)


def fit(points: Sequence[BatchPoint]) -> tuple[float, float] | None:
    """Weighted least squares of J/item = a + c / batch; None when it cannot be fitted."""
    xs = [1.0 / p.batch for p in points]
    ys = [p.j_per_item for p in points]
    ws = [float(p.items) for p in points]
    total = sum(ws)
    if len({p.batch for p in points}) < 2 or total <= 0:
        return None
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    if sxx <= 0:
        return None
    c = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True)) / sxx
    return my - c * mx, c


def _current(m: ModelStats, small: int) -> tuple[int, float, int]:
    """Items served at small batches in the window, their measured J/item, typical batch."""
    items = energy = 0.0
    calls_by_batch = {b: n for b, n in m.batch_calls.items() if b <= small}
    for batch, calls in calls_by_batch.items():
        point = m.point(batch)
        j = point.j_per_item if point is not None else m.j_per_item
        items += batch * calls
        energy += batch * calls * j
    typical = max(calls_by_batch, key=lambda b: calls_by_batch[b]) if calls_by_batch else 1
    return int(items), (energy / items if items else 0.0), typical


def _latency(point: BatchPoint | None) -> dict[str, float | None]:
    if point is None:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": rounded(point.p50_ms), "p99_ms": rounded(point.p99_ms)}


def recommend_one(m: ModelStats, stats: Stats, opt: Options) -> Advice | None:
    if m.device.kind != "gpu" or m.calls < int(opt["min_calls"]) or m.cost_usd is None:
        return None
    small = int(opt["small_batch"])
    small_calls = sum(n for b, n in m.batch_calls.items() if b <= small)
    if small_calls < float(opt["min_small_share"]) * m.calls:
        return None
    power_fraction = (
        m.device_power_w / m.device.power_limit_w
        if m.device_power_w is not None and m.device.power_limit_w
        else None
    )
    busy_ok = m.busy_fraction is not None and m.busy_fraction <= float(opt["max_busy"])
    power_ok = power_fraction is not None and power_fraction <= float(opt["max_power_fraction"])
    if not (busy_ok or power_ok):
        return None
    items, j_now, typical = _current(m, small)
    if items <= 0 or j_now <= 0:
        return None
    measured = [p for p in m.profile if p.calls >= int(opt["min_point_calls"])]
    budget = float(opt["latency_budget_ms"])
    coefficients = fit(measured)
    evidence: dict[str, Any] = {}
    if coefficients is not None and coefficients[1] > 0:
        a, c = coefficients
        candidates = [
            p
            for p in measured
            if p.batch > typical and (budget <= 0 or (p.p99_ms or 0.0) <= budget)
        ]
        if not candidates:
            return None
        best = min(candidates, key=lambda p: a + c / p.batch)
        target, j_target = best.batch, a + c / best.batch
        shared = any(p.shared for p in measured)
        confidence = "medium" if shared else "high"
        reason = (
            f"fitted to this deployment's own calls at batch sizes "
            f"{', '.join(str(p.batch) for p in measured)}"
            + (
                "; measured on a time-shared device (split by utilisation samples)"
                if shared
                else ""
            )
        )
        evidence["fit"] = {"a_j_per_item": rounded(a), "c_j_per_call": rounded(c)}
        evidence["suggested_latency_ms"] = _latency(best)
    else:
        if coefficients is not None:
            return None  # measured at several batch sizes: batching does not pay here
        arch = architecture(m.model)
        f = CURVES.get((arch or "", m.dtype or ""))
        if f is None:
            return None
        target = CURVE_BATCH
        if target <= typical:
            return None
        j_target = j_now * (f + (1 - f) / target) / (f + (1 - f) / typical)
        confidence = "low"
        reason = (
            f"only batch {typical} measured: documented {arch} {m.dtype} curve "
            f"(per-item share {f}) from the shared H100 recordings"
        )
        evidence["curve"] = {"architecture": arch, "per_item_fraction": f}
        evidence["suggested_latency_ms"] = {
            "p50_ms": None,
            "p99_ms": None,
            "note": "not measured at this batch; expect latency per call to grow with it",
        }
    if j_target >= j_now:
        return None
    saved_j = items * (j_now - j_target)
    current = m.point(typical)
    evidence.update(
        {
            "model": m.model,
            "dtype": m.dtype,
            "device": m.device.short,
            "pids": list(m.pids),
            "calls": m.calls,
            "items": m.items,
            "batch_calls": {str(b): n for b, n in sorted(m.batch_calls.items())},
            "small_batch_share": rounded(small_calls / m.calls),
            "busy_fraction": rounded(m.busy_fraction),
            "power_fraction_of_limit": rounded(power_fraction),
            "current_batch": typical,
            "suggested_batch": target,
            "j_per_item_now": rounded(j_now),
            "j_per_item_suggested": rounded(j_target),
            "items_at_small_batches": items,
            "current_latency_ms": _latency(current),
            "energy_basis": "active energy of the calls (idle and keep-warm draw excluded)",
        }
    )
    latency = evidence["suggested_latency_ms"]
    lat_text = (
        f"; measured latency per call at batch {target}: p50 {latency['p50_ms']} ms, "
        f"p99 {latency['p99_ms']} ms (now p50 {_latency(current)['p50_ms']} ms)"
        if latency.get("p99_ms") is not None
        else "; latency at that batch was not measured"
    )
    how = (
        f"Serve {m.model} with dynamic batching up to {target} items per call (Triton "
        f"dynamic_batching, TorchServe batch_size/max_batch_delay, Ray Serve @serve.batch, or "
        f"queue requests for a few ms before calling the model){lat_text}."
    )
    return Advice(
        "batch",
        Subject("model", m.key, m.device.host, m.cost_usd),
        WindowSaving(energy_j=saved_j),
        confidence,
        reason,
        how,
        evidence,
    )


infermeter_config_options, infermeter_recommend = hooks(OPTIONS, Pass(models, recommend_one))
