"""Lower-precision advice: an fp32 model on a GPU whose tensor cores do better.

Rule. A GPU deployment at fp32 speaks when its card's compute capability
has 16-bit tensor cores: bf16 from 8.0 (Ampere), fp16 from 7.0 (Volta).

Estimate, best evidence first:

- measured: the same model at lower precision on a card of the same name,
  in this host's history; the energy-per-item ratio is taken at each batch
  size the fp32 deployment served (confidence high, medium when measured on
  a time-shared card). A measured ratio of 1 or more means lower precision
  did not help here: silent.
- documented: lower precision pays when the work is compute-bound, which
  the profile shows as a busy card drawing a good part of its power
  (utilisation at least ``compute_busy`` and power at least
  ``compute_power_fraction`` of the limit): ``COMPUTE_BOUND_SAVING``,
  medium confidence. A small or memory/launch-bound model (the rest) may
  save nothing or even cost more (casts, unfused kernels, the same memory
  traffic): ``BOUND_ELSEWHERE_SAVING`` with a range from zero, low confidence,
  and the evidence says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infermeter.config import Option
from infermeter.plugins.recommend._rule import Advice, Options, Pass, hooks, models
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import ModelStats, Stats

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend_quantize", "min_calls", 100, "Calls in the window below which it says nothing."
    ),
    Option(
        "recommend_quantize",
        "compute_busy",
        0.5,
        "Device utilisation (0-1) at or above which the work may be compute-bound.",
    ),
    Option(
        "recommend_quantize",
        "compute_power_fraction",
        0.35,
        "Device power, as a fraction of its limit, at or above which the work may be "
        "compute-bound (with compute_busy).",
    ),
)

# The shared H100 recordings (tests/fixtures/h100-resnet-encoder, energy per
# item from the counter less idle and keep-warm draw) saved 79 % (ResNet-50,
# batch 1) to 82 % (batch 32), and 85-91 % (12-layer encoder, batch 1 and 16)
# going from fp32 to bf16. Half of the lowest is the default for a
# compute-bound deployment that has no measurement of its own.
COMPUTE_BOUND_SAVING = 0.4
# Launch- or memory-bound work: little to gain, possibly a loss.
BOUND_ELSEWHERE_SAVING = 0.1
LOWER = ("bf16", "fp16")


def target_precision(capability: tuple[int, int] | None) -> str | None:
    if capability is None:
        return None
    if capability >= (8, 0):
        return "bf16"
    if capability >= (7, 0):
        return "fp16"
    return None


def measured_ratio(
    m: ModelStats, others: Sequence[ModelStats]
) -> tuple[float, ModelStats, bool] | None:
    """J/item at lower precision over J/item at fp32, at the batch sizes m serves."""
    for other in others:
        if (
            other is m
            or other.model != m.model
            or other.dtype not in LOWER
            or other.device.name != m.device.name
        ):
            continue
        num = den = 0.0
        shared = False
        for batch, calls in m.batch_calls.items():
            mine, theirs = m.point(batch), other.point(batch)
            if mine is None or theirs is None or theirs.items == 0 or mine.items == 0:
                continue
            weight = batch * calls
            den += weight * mine.j_per_item
            num += weight * theirs.j_per_item
            shared = shared or mine.shared or theirs.shared
        if den > 0:
            return num / den, other, shared
    return None


def recommend_one(m: ModelStats, stats: Stats, opt: Options) -> Advice | None:
    if m.device.kind != "gpu" or m.dtype != "fp32" or m.cost_usd is None:
        return None
    if m.calls < int(opt["min_calls"]):
        return None
    target = target_precision(m.device.compute_capability)
    if target is None:
        return None
    power_fraction = (
        m.device_power_w / m.device.power_limit_w
        if m.device_power_w is not None and m.device.power_limit_w
        else None
    )
    compute_bound = (
        m.busy_fraction is not None
        and m.busy_fraction >= float(opt["compute_busy"])
        and power_fraction is not None
        and power_fraction >= float(opt["compute_power_fraction"])
    )
    evidence: dict[str, Any] = {
        "model": m.model,
        "dtype": m.dtype,
        "suggested_dtype": target,
        "device": m.device.short,
        "compute_capability": ".".join(map(str, m.device.compute_capability or ())),
        "calls": m.calls,
        "items": m.items,
        "j_per_item_now": rounded(m.j_per_item),
        "busy_fraction": rounded(m.busy_fraction),
        "power_fraction_of_limit": rounded(power_fraction),
        "profile": "compute-bound" if compute_bound else "launch- or memory-bound",
    }
    found = measured_ratio(m, stats.models)
    if found is not None:
        ratio, other, shared = found
        if ratio >= 1.0:
            return None
        fraction = 1.0 - ratio
        confidence = "medium" if shared else "high"
        reason = (
            f"measured: {other.model} at {other.dtype} on the same card used "
            f"{ratio:.2f}x the energy per item at the same batch sizes"
        )
        target = other.dtype or target
        evidence.update({"measured_against": other.key, "measured_ratio": rounded(ratio)})
    elif compute_bound:
        fraction = COMPUTE_BOUND_SAVING
        confidence = "medium"
        reason = (
            "not measured here; compute-bound profile, where 16-bit tensor cores save most "
            "(the shared H100 recordings saved 79-91 %; 40 % assumed)"
        )
    else:
        fraction = BOUND_ELSEWHERE_SAVING
        confidence = "low"
        reason = (
            "launch- or memory-bound (low utilisation or power): lower precision may save "
            "nothing or cost more (casts, same memory traffic); measure before adopting"
        )
        evidence["caution"] = "small or memory-bound model: savings may be zero or negative"
    evidence.update({"saving_fraction": rounded(fraction), "suggested_dtype": target})
    saving = WindowSaving(energy_j=m.energy_j * fraction)
    if m.framework == "onnxruntime":
        how = (
            f"Convert {m.model} to {target} (onnxconverter_common.float16."
            "convert_float_to_float16, or the TensorRT execution provider with "
            "trt_fp16_enable) and check accuracy on a validation set before switching."
        )
    else:
        torch_dtype = "torch.bfloat16" if target == "bf16" else "torch.float16"
        how = (
            f"Run {m.model} in {target}: torch.autocast('cuda', dtype={torch_dtype}) around "
            f"the call, or model.to({torch_dtype}); check accuracy on a validation set before "
            "switching."
        )
    return Advice(
        "quantize",
        Subject("model", m.key, m.device.host, m.cost_usd),
        saving,
        confidence,
        reason,
        how,
        evidence,
    )


infermeter_config_options, infermeter_recommend = hooks(OPTIONS, Pass(models, recommend_one))
