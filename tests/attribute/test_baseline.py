from __future__ import annotations

import pytest

from infermeter.attribute.baseline import MIN_SAMPLES, BaselineLearner
from infermeter.records import Device, DeviceKind, Method, Reading

GPU = Device(
    uid="GPU-0", kind=DeviceKind.GPU, name="H100", idle_power_w=60.0, keepwarm_power_w=30.0
)


def quiet(
    power_w: float,
    holders: frozenset[int] = frozenset(),
    busy: float = 0.0,
    method: Method = Method.MEASURED,
) -> Reading:
    return Reading(
        device=GPU,
        t0=0.0,
        t1=2.0,
        energy_j=2 * power_w,
        method=method,
        holders=holders,
        busy_fraction=busy,
    )


def test_defaults_until_enough_quiet_samples() -> None:
    learner = BaselineLearner()
    for _ in range(MIN_SAMPLES - 1):
        learner.observe(quiet(70.0))
    assert learner.baseline(GPU).idle_power_w == 60.0
    learner.observe(quiet(70.0))
    assert learner.baseline(GPU).idle_power_w == pytest.approx(70.0)


def test_keepwarm_is_held_minus_idle() -> None:
    learner = BaselineLearner()
    for _ in range(MIN_SAMPLES):
        learner.observe(quiet(70.2))
        learner.observe(quiet(118.5, holders=frozenset({416})))
    b = learner.baseline(GPU)
    assert b.idle_power_w == pytest.approx(70.2)
    assert b.keepwarm_power_w == pytest.approx(48.3)


def test_busy_or_estimated_readings_teach_nothing() -> None:
    learner = BaselineLearner()
    for _ in range(3 * MIN_SAMPLES):
        learner.observe(quiet(300.0, busy=0.5))
        learner.observe(quiet(10.0, method=Method.ESTIMATED))
        learner.observe(
            Reading(
                device=GPU, t0=0, t1=1, energy_j=400.0, method=Method.MEASURED, weights={1: 1.0}
            )
        )
    assert learner.baseline(GPU).idle_power_w == 60.0
    assert learner.learned(GPU.uid) == (None, None)


def test_seeded_values_from_an_earlier_run_win_over_defaults() -> None:
    learner = BaselineLearner()
    learner.seed(GPU.uid, 71.0, 47.0)
    b = learner.baseline(GPU)
    assert (b.idle_power_w, b.keepwarm_power_w) == (71.0, 47.0)
