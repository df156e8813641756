from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.attribute.split import Baseline, attribute_reading, merge_shares, split_exactly
from infermeter.records import Bucket, Device, DeviceKind, Framework, Method, Reading, Target

GPU = Device(uid="GPU-0", kind=DeviceKind.GPU, name="NVIDIA H100 80GB HBM3")


def target(pid: int, **labels: str) -> Target:
    return Target(
        host="h", pid=pid, start_time=float(pid), framework=Framework.TORCH, labels=labels
    )


def reading(
    energy: float,
    weights: dict[int, float],
    holders: set[int],
    dt: float = 1.0,
    method: Method = Method.MEASURED,
) -> Reading:
    return Reading(
        device=GPU,
        t0=100.0,
        t1=100.0 + dt,
        energy_j=energy,
        method=method,
        weights=weights,
        weight_basis="sm-util",
        holders=frozenset(holders),
    )


def by_bucket(shares: list) -> dict:
    out: dict = {}
    for s in shares:
        key = (s.bucket, s.target[1] if s.target else None)
        out[key] = out.get(key, 0.0) + s.energy_j
    return out


def test_buckets_on_an_h100_second() -> None:
    targets = {416: target(416, model="resnet50", tenant="acme"), 417: target(417)}
    r = reading(300.0, {416: 3.0, 417: 1.0, 999: 0.0}, {416, 417})
    shares = attribute_reading(r, targets, Baseline(idle_power_w=70.0, keepwarm_power_w=48.0))
    got = by_bucket(shares)
    assert got[(Bucket.IDLE, None)] == pytest.approx(70.0)
    assert got[(Bucket.KEEPWARM, 416)] == pytest.approx(24.0)
    assert got[(Bucket.KEEPWARM, 417)] == pytest.approx(24.0)
    assert got[(Bucket.ACTIVE, 416)] == pytest.approx(182.0 * 0.75)
    assert got[(Bucket.ACTIVE, 417)] == pytest.approx(182.0 * 0.25)
    assert sum(s.energy_j for s in shares) == 300.0
    s416 = next(s for s in shares if s.bucket is Bucket.ACTIVE and s.target[1] == 416)
    assert (s416.model, s416.tenant, s416.method) == ("resnet50", "acme", Method.MEASURED)


def test_unknown_pids_go_to_other_never_to_a_target() -> None:
    targets = {416: target(416)}
    r = reading(200.0, {416: 1.0, 555: 1.0}, {416, 555})
    shares = attribute_reading(r, targets, Baseline(70.0, 40.0))
    got = by_bucket(shares)
    assert got[(Bucket.KEEPWARM, 416)] == pytest.approx(20.0)
    # 200 - 70 idle - 40 keep-warm leaves 90 active, half of it unexplained.
    assert got[(Bucket.OTHER, None)] == pytest.approx(20.0 + 45.0)
    assert got[(Bucket.ACTIVE, 416)] == pytest.approx(45.0)


def test_no_weights_means_other() -> None:
    shares = attribute_reading(reading(150.0, {}, set()), {}, Baseline(70.0, 48.0))
    assert by_bucket(shares) == {(Bucket.IDLE, None): 70.0, (Bucket.OTHER, None): 80.0}


def test_idle_is_capped_at_the_energy() -> None:
    shares = attribute_reading(reading(50.0, {1: 1.0}, {1}), {1: target(1)}, Baseline(70.0, 48.0))
    assert by_bucket(shares) == {(Bucket.IDLE, None): 50.0}


def test_nothing_to_split_gives_no_share() -> None:
    assert attribute_reading(reading(0.0, {1: 1.0}, {1}), {1: target(1)}, Baseline()) == []


def test_split_exactly_rejects_zero_weights() -> None:
    with pytest.raises(ValueError):
        split_exactly(1.0, [0.0, 0.0])


finite = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


@given(
    energy=st.floats(min_value=1e-9, max_value=1e7, allow_nan=False),
    weights=st.dictionaries(st.integers(1, 40), finite, max_size=12),
    holders=st.sets(st.integers(1, 40), max_size=12),
    known=st.sets(st.integers(1, 40), max_size=12),
    idle=st.floats(0, 2000),
    keepwarm=st.floats(0, 2000),
    dt=st.floats(min_value=0.001, max_value=100),
)
def test_shares_always_conserve_energy(
    energy: float,
    weights: dict[int, float],
    holders: set[int],
    known: set[int],
    idle: float,
    keepwarm: float,
    dt: float,
) -> None:
    targets = {pid: target(pid) for pid in known}
    r = reading(energy, weights, holders, dt)
    shares = attribute_reading(r, targets, Baseline(idle, keepwarm))
    assert math.isclose(sum(s.energy_j for s in shares), energy, rel_tol=1e-12, abs_tol=1e-6)
    assert all(s.energy_j >= -1e-9 for s in shares)
    for s in shares:
        assert s.method is Method.MEASURED
        if s.bucket in (Bucket.ACTIVE, Bucket.KEEPWARM):
            assert s.target is not None and s.target[1] in known
        else:
            assert s.target is None


def test_merge_sums_per_bucket_over_a_flush() -> None:
    targets = {416: target(416)}
    shares = []
    for k in range(10):
        r = Reading(
            device=GPU,
            t0=100.0 + k,
            t1=101.0 + k,
            energy_j=200.0,
            method=Method.MEASURED,
            weights={416: 1.0},
            weight_basis="sm-util",
            holders=frozenset({416}),
        )
        shares.extend(attribute_reading(r, targets, Baseline(70.0, 48.0)))
    merged = merge_shares(shares, 100.0, 110.0)
    assert {(s.bucket, s.t0, s.t1) for s in merged} == {
        (Bucket.IDLE, 100.0, 110.0),
        (Bucket.KEEPWARM, 100.0, 110.0),
        (Bucket.ACTIVE, 100.0, 110.0),
    }
    assert sum(s.energy_j for s in merged) == pytest.approx(2000.0)


def test_a_merged_share_says_where_in_the_window_its_energy_was_drawn() -> None:
    """A process that stops at 104 s draws nothing after: its merged row is drawn [100, 104)."""
    targets = {416: target(416)}
    shares = []
    for k in range(10):
        busy = k < 4
        r = Reading(
            device=GPU,
            t0=100.0 + k,
            t1=101.0 + k,
            energy_j=400.0 if busy else 70.0,
            method=Method.MEASURED,
            weights={416: 1.0} if busy else {},
            weight_basis="sm-util",
            holders=frozenset({416}) if busy else frozenset(),
        )
        shares.extend(attribute_reading(r, targets, Baseline(70.0, 48.0)))
    merged = {s.bucket: s for s in merge_shares(shares, 100.0, 110.0)}
    assert (merged[Bucket.ACTIVE].drawn_t0, merged[Bucket.ACTIVE].drawn_t1) == (100.0, 104.0)
    assert (merged[Bucket.KEEPWARM].drawn_t0, merged[Bucket.KEEPWARM].drawn_t1) == (100.0, 104.0)
    assert (merged[Bucket.IDLE].drawn_t0, merged[Bucket.IDLE].drawn_t1) == (100.0, 110.0)
