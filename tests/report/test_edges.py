"""The part of a cut share row inside a report's range (report/edges.py), on made-up windows.

A 10 s window [0, 10) on a GPU that idles at 70 W and draws 48 W more while
a context is held: held but idle (118 W) until 3 s, then busy at 400 W. The
rows are what attribution (attribute.split) gives for it: idle 70 W x 10 s,
keep-warm 48 W x 10 s, active (400 - 118) W x 7 s drawn over [3, 10).
"""

from __future__ import annotations

import pytest

from infermeter.report.edges import CutRow, Shape, part_inside

PROFILE = tuple((0.1 * (k + 1), 11.8 if k < 30 else 40.0) for k in range(100))


def row(bucket: str, energy_j: float, lo: float = 0.0, hi: float = 10.0) -> CutRow:
    return CutRow(None, 0.0, 10.0, bucket, energy_j, lo, hi)


ROWS = [row("idle", 700.0), row("keepwarm", 480.0), row("active", 282.0 * 7, 3.0, 10.0)]


def test_idle_and_keep_warm_go_by_time_active_by_the_power_above_them() -> None:
    shape = Shape(PROFILE, 0.0, 70.0, ROWS)
    assert shape.keepwarm_w == pytest.approx(48.0, rel=1e-6)
    idle, keepwarm, active = ROWS
    assert part_inside(idle, 0.0, 5.0, shape) == pytest.approx(0.5)
    assert part_inside(keepwarm, 0.0, 5.0, shape) == pytest.approx(0.5, rel=1e-6)
    # 2 of its 7 busy seconds, not half of the window
    assert part_inside(active, 0.0, 5.0, shape) == pytest.approx(2 / 7, rel=1e-6)
    assert part_inside(active, 0.0, 3.0, shape) == pytest.approx(0.0, abs=1e-9)
    assert part_inside(active, 2.0, 10.0, shape) == pytest.approx(1.0)


def test_two_processes_each_take_the_excess_of_the_time_they_were_drawn() -> None:
    # One process busy over [3, 6) only, the other over [3, 10): the excess of
    # [6, 10) is all the second's; [3, 6) is shared so that each gets its energy.
    first = row("active", 282.0 * 1.5, 3.0, 6.0)
    second = row("active", 282.0 * 5.5, 3.0, 10.0)
    shape = Shape(PROFILE, 0.0, 70.0, [*ROWS[:2], first, second])
    assert part_inside(first, 0.0, 6.0, shape) == pytest.approx(1.0)
    assert part_inside(second, 0.0, 6.0, shape) == pytest.approx(1.5 / 5.5, rel=1e-4)
    assert part_inside(second, 6.0, 10.0, shape) == pytest.approx(4 / 5.5, rel=1e-4)


def test_without_a_profile_every_row_goes_by_time_over_where_it_was_drawn() -> None:
    _idle, keepwarm, active = ROWS
    assert part_inside(active, 0.0, 5.0, None) == pytest.approx(2 / 7)
    assert part_inside(keepwarm, 0.0, 5.0, None) == pytest.approx(0.5)
