"""A completed step span's energy, split over the requests it served.

A step span (continuous batching: one forward pass shared by several
requests) gathers energy like any call (span_split). When it completes it
becomes one call per part, each carrying its request's id and tenant and the
tokens the step did for it (``tokens_in`` the prefill, ``tokens_out`` the
decode tokens of this step), with the step's energy split over the parts
exactly (``split_exactly``: the parts sum to the step's energy).

How much each part weighs is a function of the span, injected into the
ledger (``SpanLedger(part_weights=...)``): by default a part's tokens,
prefill plus decode (``token_weights``), equal weights when the step has no
tokens at all. A learned energy model with separate prefill and decode
coefficients plugs in here.

The calls' keys must stay unique in the store (target, model, t0, seq): the
part ``i`` of a step numbered ``seq`` is numbered ``seq + (i + 1) * PART_SEQ``.
A plain call's ``seq`` (the ledger numbers calls sharing a ``t0``) stays
below ``PART_SEQ`` in any real trace, so neither can take the other's key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from infermeter.attribute.split import split_exactly
from infermeter.records import CallEnergy, Span

log = logging.getLogger(__name__)

PartWeights = Callable[[Span], Sequence[float]]

PART_SEQ = 1 << 16


def token_weights(span: Span) -> list[float]:
    """Each part's prefill + decode tokens; equal weights when they are all 0."""
    weights = [float(p.prefill_tokens + p.decode_tokens) for p in span.parts]
    if sum(weights) <= 0:
        return [1.0] * len(weights)
    return weights


def _usable(weights: Sequence[float], n: int) -> list[float]:
    """Weights a split can take: one per part, finite and >= 0, some positive; else equal."""
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        return [1.0] * n
    if len(w) != n or not all(x >= 0.0 and x != float("inf") for x in w) or not sum(w) > 0:
        return [1.0] * n
    return w


def expand_step(call: CallEnergy, part_weights: PartWeights = token_weights) -> list[CallEnergy]:
    """One call per part of a step span (the call itself when it has no parts)."""
    span = call.span
    if not span.parts:
        return [call]
    try:
        weights = _usable(part_weights(span), len(span.parts))
    except Exception:  # a broken weight model must not lose the step: equal parts
        log.warning("part weights failed on a step of %s: split equally", span.model, exc_info=True)
        weights = [1.0] * len(span.parts)
    energies = split_exactly(call.energy_j, weights)
    out = []
    for i, (part, energy) in enumerate(zip(span.parts, energies, strict=True)):
        one = replace(
            span,
            items=1,
            request_id=part.request_id if part.request_id is not None else span.request_id,
            tenant=part.tenant if part.tenant is not None else span.tenant,
            tokens_in=part.prefill_tokens,
            tokens_out=part.decode_tokens,
            seq=span.seq + (i + 1) * PART_SEQ,
            parts=(),
        )
        out.append(CallEnergy(one, call.target, energy, call.method))
    return out
