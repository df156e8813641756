"""Small pieces of the statistics builder: one call as read, and its latency bins.

A stored call is one model call, or, when its tags say ``calls`` and
``batch``, the aggregate record a workload kept of many identical calls (see
``infermeter.sidecar.replay.workload_spans``); ``CallRow`` hides the difference so
the builder counts calls and batch sizes the same way for both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

# Names precision goes by in frameworks and tags, to one spelling each.
_DTYPES = {
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
    "tf32": "fp32",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "int8": "int8",
    "qint8": "int8",
    "uint8": "int8",
    "float8_e4m3fn": "fp8",
    "fp8": "fp8",
}

_BIN = math.log(1.05)  # latency bins 5 % wide: p50/p99 within 2.5 %


def dtype_name(dtype: str | None) -> str | None:
    """One name per precision: "float32" and "fp32" are the same deployment."""
    if not dtype:
        return None
    return _DTYPES.get(dtype.lower().removeprefix("torch."), dtype.lower())


def _int_tag(tags: dict[str, Any], key: str) -> int | None:
    try:
        value = int(str(tags[key]))
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


def _float_tag(tags: dict[str, Any], key: str) -> float | None:
    try:
        value = float(str(tags[key]))
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class CallRow:
    target_id: int
    model_id: int
    pid: int
    model: str
    dtype: str | None
    framework: str | None
    parameters: int | None
    t0: float
    t1: float
    items: int
    calls: int
    batch: int
    p50_ms: float | None  # recorded percentiles of an aggregate record
    p99_ms: float | None
    energy_j: float
    energy_cost: float | None
    capacity_cost: float | None
    carbon_g: float | None

    @classmethod
    def from_row(cls, r: Any) -> CallRow:
        tags = dict(r.tags or {})
        calls = _int_tag(tags, "calls") or 1
        items = max(int(r.items or 1), 1)
        batch = _int_tag(tags, "batch") or max(round(items / calls), 1)
        framework = r.framework or r.target_framework
        return cls(
            target_id=int(r.target_id),
            model_id=int(r.model_id),
            pid=int(r.pid),
            model=str(r.name),
            dtype=str(tags.get("dtype") or r.dtype or "") or None,
            framework=None if framework in (None, "unknown") else str(framework),
            parameters=int(r.parameters) if r.parameters else None,
            t0=float(r.t0),
            t1=float(r.t1),
            items=items,
            calls=calls,
            batch=batch,
            p50_ms=_float_tag(tags, "p50_ms") if calls > 1 else None,
            p99_ms=_float_tag(tags, "p99_ms") if calls > 1 else None,
            energy_j=float(r.energy_j),
            energy_cost=r.energy_cost,
            capacity_cost=r.capacity_cost,
            carbon_g=r.carbon_g,
        )


@dataclass
class LatencyBins:
    """Latency per call of one batch size: log bins for single calls, plus aggregates."""

    bins: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    n: int = 0
    agg_calls: int = 0
    agg_p50_sum: float = 0.0  # calls-weighted sum of the aggregates' medians
    agg_p99: float | None = None

    def add(self, call: CallRow) -> None:
        if call.calls > 1 and call.p50_ms is not None:
            self.agg_calls += call.calls
            self.agg_p50_sum += call.p50_ms * call.calls
            if call.p99_ms is not None:
                self.agg_p99 = max(self.agg_p99 or 0.0, call.p99_ms)
            return
        ms = (call.t1 - call.t0) * 1000.0
        if ms > 0:
            self.bins[round(math.log(ms) / _BIN)] += 1
            self.n += 1

    def _quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        acc = 0
        for index in sorted(self.bins):
            acc += self.bins[index]
            if acc >= q * self.n:
                return math.exp(index * _BIN)
        return math.exp(max(self.bins) * _BIN)

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p99) in ms; aggregates merge by a weighted median and the worst p99."""
        p50, p99 = self._quantile(0.5), self._quantile(0.99)
        if self.agg_calls == 0:
            return p50, p99
        agg_p50 = self.agg_p50_sum / self.agg_calls
        if p50 is None:
            return agg_p50, self.agg_p99
        merged = (p50 * self.n + self.agg_p50_sum) / (self.n + self.agg_calls)
        worst = (
            max(x for x in (p99, self.agg_p99) if x is not None) if (p99 or self.agg_p99) else None
        )
        return merged, worst
