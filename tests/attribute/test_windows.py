"""Device windows: their profile is the readings' profiles end to end, flat runs merged."""

from __future__ import annotations

import pytest

from infermeter.attribute.windows import merge_flat, summarise
from infermeter.records import Device, DeviceKind, Method, Reading

GPU = Device(uid="GPU-0", kind=DeviceKind.GPU, name="NVIDIA H100 80GB HBM3")


def flat(profile: tuple | None) -> list[float]:
    """A profile as one list of numbers, for pytest.approx."""
    return [x for piece in profile or () for x in piece]


def reading(t0: float, t1: float, energy: float, profile: tuple | None) -> Reading:
    return Reading(GPU, t0, t1, energy, Method.MEASURED, profile=profile)


def test_the_window_profile_joins_the_readings_and_keeps_the_step() -> None:
    # 1 s at 118 W then a step to 400 W at 100.5 s, in 0.1 s pieces; then a
    # reading without a profile (one piece: spread by time) after a gap.
    steady = tuple((100.0 + 0.1 * (k + 1), 11.8 if k < 5 else 40.0) for k in range(10))
    first = reading(100.0, 101.0, sum(j for _t, j in steady), steady)
    second = reading(101.5, 102.0, 200.0, None)
    (window,) = summarise([second, first])
    assert (window.t0, window.t1) == (100.0, 102.0)
    assert window.profile is not None
    assert flat(window.profile) == pytest.approx(
        [100.5, 59.0, 101.0, 200.0, 101.5, 0.0, 102.0, 200.0]
    )
    assert sum(j for _t, j in window.profile) == pytest.approx(window.energy_j)


def test_readings_without_profiles_give_a_window_without_one() -> None:
    (window,) = summarise([reading(0.0, 1.0, 5.0, None), reading(1.0, 2.0, 5.0, None)])
    assert window.profile is None


def test_merging_flat_runs_keeps_the_energy_and_the_power_changes() -> None:
    # Within 1 W (or 1 %) is the same power: 100, 100.5, 99.6 W merge; 130 W does not.
    pieces = [(0.1, 10.0), (0.2, 10.05), (0.3, 9.96), (0.4, 13.0), (0.5, 13.0)]
    merged = merge_flat(pieces, 0.0)
    assert flat(merged) == pytest.approx([0.3, 30.01, 0.5, 26.0])
    assert sum(j for _t, j in merged) == pytest.approx(sum(j for _t, j in pieces))
