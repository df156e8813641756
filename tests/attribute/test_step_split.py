"""A step span (continuous batching) becomes one call per request it served.

The truth in each test is the rule of step_split: part i of a step of energy
E gets E * w_i / sum(w), with w the injected weights (by default prefill +
decode tokens of the part), and the parts add up to E exactly.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.attribute.ledger import SpanLedger
from infermeter.attribute.step_split import PART_SEQ, expand_step, token_weights
from infermeter.records import Bucket, CallEnergy, Method, Share, Span, SpanPart, Target

TARGET = Target(host="h", pid=7, start_time=1.0)


def step(*parts: SpanPart, seq: int = 0) -> Span:
    return Span(pid=7, model="llm", t0=10.0, t1=11.0, items=len(parts), parts=parts, seq=seq)


def test_a_step_is_split_over_its_parts_by_tokens_and_sums_exactly() -> None:
    s = step(
        SpanPart("a", "acme", prefill_tokens=30, decode_tokens=0),
        SpanPart("b", "globex", decode_tokens=1),
        SpanPart("c", None, prefill_tokens=8, decode_tokens=1),
    )
    calls = expand_step(CallEnergy(s, TARGET.key, 40.0, Method.INTEGRATED))
    # Weights 30, 1, 9 of 40 tokens: 30 J, 1 J, 9 J.
    assert [c.energy_j for c in calls] == pytest.approx([30.0, 1.0, 9.0], rel=1e-12)
    assert math.fsum(c.energy_j for c in calls) == 40.0
    assert [(c.span.request_id, c.span.tenant) for c in calls] == [
        ("a", "acme"), ("b", "globex"), ("c", None),
    ]  # fmt: skip
    assert [(c.span.tokens_in, c.span.tokens_out, c.span.items) for c in calls] == [
        (30, 0, 1), (0, 1, 1), (8, 1, 1),
    ]  # fmt: skip
    assert all(c.span.parts == () and c.method is Method.INTEGRATED for c in calls)
    assert len({c.span.seq for c in calls}) == 3


def test_parts_are_numbered_apart_from_plain_calls_and_from_other_steps() -> None:
    parts = (SpanPart("a"), SpanPart("b"))
    first = expand_step(CallEnergy(step(*parts, seq=0), TARGET.key, 1.0, Method.MEASURED))
    second = expand_step(CallEnergy(step(*parts, seq=1), TARGET.key, 1.0, Method.MEASURED))
    seqs = [c.span.seq for c in first + second]
    assert seqs == [PART_SEQ, 2 * PART_SEQ, 1 + PART_SEQ, 1 + 2 * PART_SEQ]
    assert all(q >= PART_SEQ for q in seqs)  # never a plain call's (below PART_SEQ)


def test_a_step_without_tokens_is_split_equally_and_a_part_inherits_the_steps_tenant() -> None:
    s = Span(pid=7, model="llm", t0=0.0, t1=1.0, tenant="t", parts=(SpanPart("a"), SpanPart()))
    assert token_weights(s) == [1.0, 1.0]
    calls = expand_step(CallEnergy(s, TARGET.key, 3.0, Method.MEASURED))
    assert [c.energy_j for c in calls] == [1.5, 1.5]
    assert [(c.span.request_id, c.span.tenant) for c in calls] == [("a", "t"), (None, "t")]


def test_injected_weights_are_used_and_bad_ones_fall_back_to_equal() -> None:
    s = step(SpanPart("a", prefill_tokens=10), SpanPart("b", decode_tokens=1))
    # A model where a decode token costs 9 prefill tokens: weights 10 and 9.
    model = lambda sp: [p.prefill_tokens + 9 * p.decode_tokens for p in sp.parts]  # noqa: E731
    calls = expand_step(CallEnergy(s, TARGET.key, 19.0, Method.MEASURED), model)
    assert [c.energy_j for c in calls] == pytest.approx([10.0, 9.0])
    for bad in (lambda sp: [1.0], lambda sp: [-1.0, 2.0], lambda sp: [math.nan, 1.0]):
        calls = expand_step(CallEnergy(s, TARGET.key, 2.0, Method.MEASURED), bad)
        assert [c.energy_j for c in calls] == [1.0, 1.0]

    def broken(sp: Span) -> list[float]:
        raise RuntimeError("the energy model is broken")

    calls = expand_step(CallEnergy(s, TARGET.key, 2.0, Method.MEASURED), broken)
    assert [c.energy_j for c in calls] == [1.0, 1.0]


def test_a_plain_call_passes_unchanged() -> None:
    call = CallEnergy(Span(pid=7, model="m", t0=0.0, t1=1.0), TARGET.key, 5.0, Method.MEASURED)
    assert expand_step(call) == [call]


@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 1)), min_size=1, max_size=256),
    st.floats(0.0, 1e6, allow_nan=False),
)
def test_the_parts_always_add_up_to_the_step(tokens: list[tuple[int, int]], energy: float) -> None:
    s = step(*(SpanPart(f"r{i}", None, p, d) for i, (p, d) in enumerate(tokens)))
    calls = expand_step(CallEnergy(s, TARGET.key, energy, Method.MEASURED))
    assert len(calls) == len(tokens)
    assert sum(c.energy_j for c in calls) == pytest.approx(energy, rel=1e-12, abs=1e-9)
    assert all(c.energy_j >= 0 for c in calls)


def test_the_ledger_credits_a_step_like_a_call_then_expands_it_with_its_weights() -> None:
    seen: list[Span] = []

    def weights(sp: Span) -> list[float]:
        seen.append(sp)
        return [2.0, 1.0]

    ledger = SpanLedger(part_weights=weights)
    s = Span(pid=7, model="llm", t0=10.0, t1=12.0, items=2, parts=(SpanPart("a"), SpanPart("b")))
    ledger.add([s], now=13.0)
    share = Share(10.0, 14.0, "GPU-0", Bucket.ACTIVE, Method.MEASURED, 8.0, target=TARGET.key)
    out = ledger.split([share], {TARGET.key: TARGET})
    assert math.fsum(x.energy_j for x in out) == 8.0  # the share conserves
    calls = ledger.complete(20.0, {7: TARGET})
    # The only call in flight takes the share's 8 J, then 2:1 over its parts.
    assert [c.span.request_id for c in calls] == ["a", "b"]
    assert [c.energy_j for c in calls] == pytest.approx([16 / 3, 8 / 3], rel=1e-12)
    assert math.fsum(c.energy_j for c in calls) == pytest.approx(8.0, rel=1e-15)
    assert len(seen) == 1 and seen[0].parts == s.parts
    assert ledger.stats()["completed"] == 1  # one span arrived, one completed
