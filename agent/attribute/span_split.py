"""Attribution step 4 inside a target: its active energy, split over its model calls.

The calls in flight in an interval take all of the target's active energy
in it: nothing else is known to have run, and a request that ran
synchronously caused the device's draw between its kernels too (the power
of an H100 does not drop to the held-context level between two 5 ms
calls). They share it by their predicted energy (energy_model.py: a batch
of 8 costs more than a batch of 1 beside it, prefill tokens and decode
tokens differently), each prorated by how much of the call lies in the
interval; until the model knows a call's class, by items x time in the
interval. An interval in which the target drew active energy (the meter saw
its SM time or CPU time) with no call in flight is the target's overhead,
and stays with the target's model(s): that is the evidence of work outside
calls. The call energies plus the overhead add up to the share exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from infermeter.attribute.energy_model import overlap_fraction
from infermeter.attribute.split import split_exactly
from infermeter.records import Share, Span

# Joules predicted for a fraction of a span in a share's interval, or None
# when the energy model does not know its class yet.
Predict = Callable[[Span, float, Share], float | None]


@dataclass(frozen=True, slots=True)
class SpanSplit:
    shares: list[Share]  # per (model, tenant): call energy plus its part of the overhead
    call_energy_j: list[tuple[Span, float]]  # energy of each call in this interval
    overhead_j: float
    by_model: bool = False  # the calls were weighed by the energy model


def split_over_spans(
    share: Share,
    spans: Sequence[Span],
    target_labels: Mapping[str, str] | None = None,
    predict: Predict | None = None,
) -> SpanSplit:
    """Split one target's active share over the spans that overlap it."""
    a, b = share.t0, share.t1
    labels = target_labels or {}
    # A span of no length did no work (a request's closing marker carries only
    # its final token counts): it takes nothing.
    inside = [s for s in spans if s.t1 > a and s.t0 < b and s.t1 > s.t0]
    if b - a <= 0 or not inside:
        return SpanSplit([share], [], share.energy_j)
    fractions = [overlap_fraction(s, a, b) for s in inside]
    predicted = (
        [predict(s, f, share) for s, f in zip(inside, fractions, strict=True)]
        if predict is not None
        else []
    )
    by_model = bool(predicted) and all(p is not None and p > 0 for p in predicted)
    if by_model:
        weights = [float(p or 0.0) for p in predicted]
    else:
        weights = [max(1, s.items) * (min(s.t1, b) - max(s.t0, a)) for s in inside]
    energy = split_exactly(share.energy_j, weights)

    by_group: dict[tuple[str, str | None], float] = {}
    for s, e in zip(inside, energy, strict=True):
        key = (s.model, s.tenant or labels.get("tenant"))
        by_group[key] = by_group.get(key, 0.0) + e
    shares = _overhead_onto_models(share, by_group, 0.0, labels)
    return SpanSplit(shares, list(zip(inside, energy, strict=True)), 0.0, by_model)


def _overhead_onto_models(
    share: Share,
    by_group: dict[tuple[str, str | None], float],
    overhead: float,
    labels: Mapping[str, str],
) -> list[Share]:
    """The target's overhead goes to its labelled model, else to the models it ran."""
    groups = dict(by_group)
    label_model = labels.get("model")
    if label_model is not None:
        key = (label_model, labels.get("tenant"))
        groups[key] = groups.get(key, 0.0) + overhead
    elif overhead and groups:
        keys = list(groups)
        weights = [max(groups[k], 0.0) for k in keys]
        if sum(weights) <= 0:
            weights = [1.0] * len(keys)
        for k, part in zip(keys, split_exactly(overhead, weights), strict=True):
            groups[k] += part
    elif overhead:
        groups[(share.model or "", share.tenant)] = overhead
    # The groups' sum must be the share's energy exactly: put any drift on the largest.
    drift = share.energy_j - sum(groups.values())
    if drift:
        biggest = max(groups, key=lambda k: groups[k])
        groups[biggest] += drift
    return [
        replace(share, model=model or None, tenant=tenant, energy_j=e)
        for (model, tenant), e in groups.items()
    ]
