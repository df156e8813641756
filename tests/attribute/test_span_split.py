from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.attribute.ledger import SpanLedger
from infermeter.attribute.span_split import split_over_spans
from infermeter.records import Bucket, Method, Share, Span, Target

KEY = ("h", 7, 1.0)


def active(t0: float, t1: float, energy: float) -> Share:
    return Share(
        t0,
        t1,
        "GPU-0",
        Bucket.ACTIVE,
        Method.MEASURED,
        energy,
        target=KEY,
        model=None,
        weight_basis="sm-util",
    )


def span(t0: float, t1: float, items: int = 1, model: str = "m", tenant: str | None = None) -> Span:
    return Span(pid=7, model=model, t0=t0, t1=t1, items=items, tenant=tenant)


def test_the_call_in_flight_takes_the_whole_interval() -> None:
    # Nothing else is known to have run: the draw between its kernels is its own.
    r = split_over_spans(active(0.0, 1.0, 100.0), [span(0.25, 0.75)])
    assert r.call_energy_j[0][1] == 100.0
    assert r.overhead_j == 0.0
    assert [(s.model, s.energy_j) for s in r.shares] == [("m", 100.0)]


def test_an_interval_with_no_call_in_flight_is_overhead_of_the_labelled_model() -> None:
    r = split_over_spans(active(0.0, 1.0, 40.0), [span(1.0, 2.0)], {"model": "a", "tenant": "t0"})
    assert r.call_energy_j == [] and r.overhead_j == 40.0
    assert [(s.model, s.energy_j) for s in r.shares] == [(None, 40.0)]


def test_calls_are_weighed_by_their_predicted_energy() -> None:
    # Two calls of the same length: the model says the second costs 4x the first.
    def predict(s: Span, fraction: float, _share: Share) -> float:
        assert fraction == pytest.approx(0.5 if s.t0 < 0 else 1.0)
        return (1.0 if s.items == 1 else 4.0) * fraction

    r = split_over_spans(
        active(0.0, 1.0, 100.0), [span(-0.5, 0.5, items=1), span(0.2, 0.7, items=8)], None, predict
    )
    assert r.by_model
    assert [e for _, e in r.call_energy_j] == [pytest.approx(100 / 9), pytest.approx(800 / 9)]


def test_an_unknown_class_falls_back_to_items_times_time() -> None:
    def predict(s: Span, _fraction: float, _share: Share) -> float | None:
        return None if s.model == "new" else 1.0

    r = split_over_spans(
        active(0.0, 1.0, 90.0),
        [span(0.0, 0.5, items=2), span(0.0, 1.0, items=1, model="new")],
        None,
        predict,
    )
    assert not r.by_model
    # items x seconds in the interval: 2 x 0.5 and 1 x 1.0
    assert [e for _, e in r.call_energy_j] == [pytest.approx(45.0), pytest.approx(45.0)]


def test_overlapping_calls_share_by_items() -> None:
    r = split_over_spans(
        active(0.0, 1.0, 100.0), [span(0.0, 1.0, items=1), span(0.0, 1.0, items=3)]
    )
    energies = sorted(e for _, e in r.call_energy_j)
    assert energies == [pytest.approx(25.0), pytest.approx(75.0)]
    assert r.overhead_j == pytest.approx(0.0, abs=1e-9)


def test_calls_keep_their_own_tenant() -> None:
    r = split_over_spans(
        active(0.0, 2.0, 100.0),
        [span(0.0, 0.5, model="a", tenant="t1"), span(0.5, 1.0, model="a")],
        {"model": "a", "tenant": "t0"},
    )
    got = {(s.model, s.tenant): s.energy_j for s in r.shares}
    assert got == {("a", "t1"): pytest.approx(50.0), ("a", "t0"): pytest.approx(50.0)}


def test_calls_outside_the_interval_take_nothing() -> None:
    r = split_over_spans(active(10.0, 11.0, 5.0), [span(0.0, 10.0), span(11.0, 12.0)])
    assert r.call_energy_j == [] and r.overhead_j == 5.0


calls = st.lists(
    st.tuples(
        st.floats(-1, 3), st.floats(0.0001, 2), st.integers(1, 64), st.sampled_from(["a", "b", "c"])
    ),
    max_size=30,
)


@given(calls=calls, energy=st.floats(0, 1e6, allow_nan=False))
def test_calls_plus_overhead_equal_the_share(calls: list, energy: float) -> None:
    spans = [span(t0, t0 + d, items, model) for t0, d, items, model in calls]
    r = split_over_spans(active(0.0, 1.0, energy), spans)
    total = sum(e for _, e in r.call_energy_j) + r.overhead_j
    assert math.isclose(total, energy, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(sum(s.energy_j for s in r.shares), energy, rel_tol=1e-12, abs_tol=1e-6)
    assert all(e >= 0 for _, e in r.call_energy_j)


def test_ledger_credits_a_call_across_flushes_and_writes_it_once() -> None:
    ledger = SpanLedger()
    target = Target(host="h", pid=7, start_time=1.0)
    ledger.add([span(0.5, 1.5, items=2)], now=1.5)
    first = ledger.split([active(0.0, 1.0, 10.0)], {KEY: target})
    assert ledger.complete(1.0, {7: target}) == []  # still running at the cutoff
    second = ledger.split([active(1.0, 2.0, 10.0)], {KEY: target})
    done = ledger.complete(2.0, {7: target})
    assert len(done) == 1 and done[0].target == KEY
    # The call was in flight in both intervals: both are its energy.
    assert done[0].energy_j == pytest.approx(20.0)
    assert sum(s.energy_j for s in first + second) == pytest.approx(20.0)
    ledger.add([span(0.1, 0.2)], now=2.0)  # arrives after its interval was attributed
    assert ledger.late_spans == 1


def test_ledger_reports_weakest_method() -> None:
    ledger = SpanLedger()
    target = Target(host="h", pid=7, start_time=1.0)
    ledger.add([span(0.0, 1.0)], now=1.0)
    cpu = Share(0.0, 1.0, "cpu", Bucket.ACTIVE, Method.ESTIMATED, 3.0, target=KEY)
    ledger.split([active(0.0, 1.0, 10.0), cpu], {KEY: target})
    (done,) = ledger.complete(1.0, {7: target})
    assert done.energy_j == pytest.approx(13.0)
    assert done.method is Method.ESTIMATED
