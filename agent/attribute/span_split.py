"""Attribution step 4: a target's active energy, split over its model calls.

Inside one interval, time is cut at every span boundary. Each slice carries
its part of the interval's energy (power is taken as even within a tick);
the spans running in a slice share it by items (a batch of 8 draws more than
a batch of 1 running beside it); a slice with no span is the target's
overhead and stays with the target's model(s). The call energies plus the
overhead add up to the share exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from infermeter.attribute.split import split_exactly
from infermeter.records import Share, Span


@dataclass(frozen=True, slots=True)
class SpanSplit:
    shares: list[Share]  # per (model, tenant): call energy plus its part of the overhead
    call_energy_j: list[tuple[Span, float]]  # energy of each call in this interval
    overhead_j: float


def split_over_spans(
    share: Share, spans: Sequence[Span], target_labels: Mapping[str, str] | None = None
) -> SpanSplit:
    """Split one target's active share over the spans that overlap it."""
    a, b = share.t0, share.t1
    length = b - a
    labels = target_labels or {}
    inside = [s for s in spans if s.t1 > a and s.t0 < b and s.t1 > s.t0]
    if length <= 0 or not inside:
        return SpanSplit([share], [], share.energy_j)

    # Sweep over the slice boundaries, keeping the running items.
    events: list[tuple[float, int, int]] = []  # (time, +1 start / -1 end, span index)
    for i, s in enumerate(inside):
        events.append((max(s.t0, a), 1, i))
        events.append((min(s.t1, b), -1, i))
    events.sort(key=lambda e: (e[0], e[1]))
    energy = [0.0] * len(inside)
    running: dict[int, int] = {}
    items_running = 0
    cursor = a
    per_second = share.energy_j / length
    for time, kind, i in events:
        if time > cursor:
            slice_j = per_second * (time - cursor)
            for j, items in running.items():  # none running: the slice is overhead
                energy[j] += slice_j * items / items_running
            cursor = time
        if kind == 1:
            items = max(1, inside[i].items)
            running[i] = items
            items_running += items
        else:
            items_running -= running.pop(i)
    # What no span covered is overhead; as a difference it also absorbs the
    # floating-point remainder, so the parts add up to the share exactly.
    overhead = share.energy_j - sum(energy)

    by_group: dict[tuple[str, str | None], float] = {}
    for s, e in zip(inside, energy, strict=True):
        key = (s.model, s.tenant or labels.get("tenant"))
        by_group[key] = by_group.get(key, 0.0) + e
    shares = _overhead_onto_models(share, by_group, overhead, labels)
    return SpanSplit(shares, list(zip(inside, energy, strict=True)), overhead)


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
