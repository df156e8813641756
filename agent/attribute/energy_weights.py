"""The state behind power-aware splits: the energy model and the power levels, fed per flush.

A flush hands over the intervals it attributes for good, with the spans the
ledger holds. Each interval first teaches (the energy model where every
active target had calls in flight, a target's power level where it was
alone), the model is solved once, and then each interval's active energy is
split between its targets (target_split.py) and, later, each target's over
its calls (span_split.py) with the same fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from infermeter.attribute.energy_model import (
    MIN_WINDOWS,
    EnergyFit,
    EnergyModelLearner,
    call_class,
    overlap_fraction,
    span_features,
)
from infermeter.attribute.step_split import token_weights
from infermeter.attribute.target_split import (
    SPLIT_WINDOW_S,
    PowerLevels,
    active_targets,
    by_interval,
    spread_over_intervals,
    target_weights,
    time_shared,
)
from infermeter.records import Share, Span, TargetKey

SpansOf = Callable[[int, float, float], Sequence[Span]]  # pid, t0, t1 -> spans in flight


def _working(spans: Sequence[Span]) -> list[Span]:
    """The spans that did work: one of no length (a request's closing marker) did none."""
    return [s for s in spans if s.t1 > s.t0]


class EnergyWeights:
    def __init__(self, kind_of: Callable[[str], str]) -> None:
        self.kind_of = kind_of  # device uid -> device kind ("gpu", "cpu-package", ...)
        self.learner = EnergyModelLearner()
        self.levels = PowerLevels()
        self.fit: EnergyFit = self.learner.fit()

    def seed(self, fit: EnergyFit) -> None:
        self.learner.seed(fit)
        self.fit = self.learner.fit()

    def resplit(self, shares: Sequence[Share], spans_of: SpansOf) -> list[Share]:
        """Learn from these intervals, then split each window's active energy among its targets."""
        windows: dict[tuple[str, int], list[list[Share]]] = {}
        for (uid, t0, _t1), group in by_interval(shares).items():
            windows.setdefault((uid, math.floor(t0 / SPLIT_WINDOW_S)), []).append(group)
        seen = []
        for (uid, _), intervals in windows.items():
            t0 = min(g[0].t0 for g in intervals)
            t1 = max(g[0].t1 for g in intervals)
            totals: dict[TargetKey, float] = {}
            for group in intervals:
                for s in active_targets(group):
                    if s.target is not None:
                        totals[s.target] = totals.get(s.target, 0.0) + s.energy_j
            in_flight = {key: _working(spans_of(key[1], t0, t1)) for key in totals}
            self._learn(uid, t0, t1, totals, in_flight)
            seen.append((uid, t0, t1, intervals, totals, in_flight))
        self.fit = self.learner.fit()
        out: list[Share] = []
        for uid, t0, t1, intervals, totals, in_flight in seen:
            active = [s for g in intervals for s in active_targets(g)]
            decided = None
            if len(totals) >= 2 and time_shared(active):
                predicted = {k: self._predicted(v, uid, t0, t1) for k, v in in_flight.items()}
                levels = {k: self.levels.level(uid, k) for k in totals}
                decided = target_weights(totals, predicted, levels)
            if decided is None:
                out.extend(s for g in intervals for s in g)
            else:
                out.extend(spread_over_intervals(intervals, *decided))
        return out

    def _learn(
        self,
        uid: str,
        t0: float,
        t1: float,
        totals: Mapping[TargetKey, float],
        in_flight: Mapping[TargetKey, Sequence[Span]],
    ) -> None:
        if not totals:
            return
        if len(totals) == 1 and t1 > t0:
            ((target, energy),) = totals.items()
            self.levels.observe(uid, target, energy / (t1 - t0))
        if not all(in_flight.values()):
            return  # energy no call explains must not be fitted onto calls
        kind = self.kind_of(uid)
        features = [
            (call_class(span, kind), span_features(span, overlap_fraction(span, t0, t1)))
            for spans in in_flight.values()
            for span in spans
        ]
        self.learner.observe(sum(totals.values()), features)

    def _predicted(self, spans: Sequence[Span], uid: str, t0: float, t1: float) -> float | None:
        """The predicted energy of a target's calls in [t0, t1); None if any is unknown."""
        if not spans:
            return None
        kind = self.kind_of(uid)
        total = 0.0
        for span in spans:
            p = self.fit.predict(
                call_class(span, kind), span_features(span, overlap_fraction(span, t0, t1))
            )
            if p is None:
                return None
            total += p
        return total

    def part_weights(self, span: Span) -> list[float]:
        """Each part of a step span weighed by the learned prefill and decode joules.

        The per-token coefficients of the step's class, summed over the device
        kinds it was learned on (a step draws on the GPU and the CPU); where
        neither has a positive per-token coefficient yet, its tokens
        (step_split.token_weights).
        """
        per_prefill = per_decode = 0.0
        for cls, c in self.fit.coefficients.items():
            same = cls.model == span.model and cls.dtype == (span.dtype or "")
            if same and c.windows >= MIN_WINDOWS:
                per_prefill += c.j_per_prefill_token
                per_decode += c.j_per_decode_token
        if per_prefill <= 0 and per_decode <= 0:
            return token_weights(span)
        weights = [
            per_prefill * p.prefill_tokens + per_decode * p.decode_tokens for p in span.parts
        ]
        return weights if sum(weights) > 0 else token_weights(span)

    def predict(self, span: Span, fraction: float, share: Share) -> float | None:
        """A span's predicted energy in a share's interval (span_split.Predict)."""
        return self.fit.predict(
            call_class(span, self.kind_of(share.device_uid)), span_features(span, fraction)
        )
