"""device_windows.profile: compact JSON that reads back to the profile, or to None."""

from __future__ import annotations

import pytest

from infermeter.store.window_profile import decode, encode

T0 = 1_795_758_938.774686


def test_a_profile_round_trips_to_the_millisecond_and_millijoule() -> None:
    profile = ((T0 + 0.1004, 18.2346), (T0 + 0.2, 0.0), (T0 + 10.0, 1234.5))
    text = encode(profile, T0)
    assert text == "[[100,18235],[200,0],[10000,1234500]]"
    back = decode(text, T0)
    assert back is not None and len(back) == 3
    for (t, j), (bt, bj) in zip(profile, back, strict=True):
        assert bt == pytest.approx(t, abs=5e-4) and bj == pytest.approx(j, abs=5e-4)


@pytest.mark.parametrize(
    "text", [None, "", "not json", "[]", "[[1]]", '[["a", 1]]', "[[10, -1]]", "[[20, 1], [10, 1]]"]
)
def test_nothing_readable_is_none_so_the_report_goes_by_time(text: str | None) -> None:
    assert decode(text, T0) is None


def test_no_profile_is_null() -> None:
    assert encode(None, T0) is None and encode((), T0) is None
