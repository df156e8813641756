"""The spans received, and the energy each model call has gathered so far.

A call can span several ticks and several flushes, so its energy builds up
interval by interval and is written once, when every interval it overlaps
has been attributed (its end is before the flush's cutoff). Spans arrive a
little after they end (the sender batches them, accelerator work is polled),
which is why a flush only attributes intervals older than a short lag.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from infermeter.records import Bucket, Method, Share, Span, Target, TargetKey
from infermeter.span_split import split_over_spans

_WEAKNESS = {Method.MEASURED: 0, Method.INTEGRATED: 1, Method.ESTIMATED: 2}


@dataclass(frozen=True, slots=True)
class CallEnergy:
    """One model call with all the energy attributed to it, on every device."""

    span: Span
    target: TargetKey
    energy_j: float
    method: Method  # the weakest provenance among its contributions


@dataclass
class _Open:
    span: Span
    target: TargetKey | None = None
    energy_j: float = 0.0
    method: Method = Method.MEASURED


class SpanLedger:
    def __init__(self) -> None:
        self._by_pid: dict[int, list[Span]] = {}
        self._open: dict[tuple[int, str, float], _Open] = {}
        self._cutoff = float("-inf")
        self.late_spans = 0  # arrived after their intervals were attributed
        self.unattributed_calls = 0  # from a pid that was never a target
        # Active energy of each target that no call covered, since start.
        self.overhead_j: dict[TargetKey, float] = {}

    def add(self, spans: Iterable[Span]) -> None:
        for span in spans:
            if span.t0 < self._cutoff:
                self.late_spans += 1
            key = (span.pid, span.model, span.t0)
            if key in self._open:
                continue  # a datagram delivered twice
            self._open[key] = _Open(span)
            bisect.insort(self._by_pid.setdefault(span.pid, []), span, key=lambda s: s.t0)

    def pids(self) -> set[int]:
        return set(self._by_pid)

    def split(self, shares: Sequence[Share], targets: Mapping[TargetKey, Target]) -> list[Share]:
        """Replace each target's active share by its per-model parts; credit the calls."""
        out: list[Share] = []
        for share in shares:
            if share.bucket is not Bucket.ACTIVE or share.target is None:
                out.append(share)
                continue
            spans = self._overlapping(share.target[1], share.t0, share.t1)
            target = targets.get(share.target)
            result = split_over_spans(share, spans, target.labels if target else None)
            out.extend(result.shares)
            self.overhead_j[share.target] = (
                self.overhead_j.get(share.target, 0.0) + result.overhead_j
            )
            for span, energy in result.call_energy_j:
                call = self._open[(span.pid, span.model, span.t0)]
                call.target = share.target
                call.energy_j += energy
                if _WEAKNESS[share.method] > _WEAKNESS[call.method]:
                    call.method = share.method
        return out

    def complete(self, cutoff: float, targets: Mapping[int, Target]) -> list[CallEnergy]:
        """Calls that ended before ``cutoff``: all their intervals are attributed."""
        self._cutoff = max(self._cutoff, cutoff)
        done: list[CallEnergy] = []
        for pid in list(self._by_pid):
            spans = self._by_pid[pid]
            keep = []
            for span in spans:
                if span.t1 > cutoff:
                    keep.append(span)
                    continue
                call = self._open.pop((span.pid, span.model, span.t0))
                target_key = call.target
                if target_key is None and pid in targets:
                    target_key = targets[pid].key  # a call that drew nothing measurable
                if target_key is None:
                    self.unattributed_calls += 1
                    continue
                done.append(CallEnergy(span, target_key, call.energy_j, call.method))
            if keep:
                self._by_pid[pid] = keep
            else:
                del self._by_pid[pid]
        return done

    def _overlapping(self, pid: int, t0: float, t1: float) -> list[Span]:
        spans = self._by_pid.get(pid)
        if not spans:
            return []
        # Spans are sorted by start; those starting at or after t1 cannot overlap.
        end = bisect.bisect_left(spans, t1, key=lambda s: s.t0)
        return [s for s in spans[:end] if s.t1 > t0]
