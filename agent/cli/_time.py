"""One grammar for every time option of the CLI: durations and points in time.

``report --since/--from/--to``, ``reprice --since/--until`` and
``recommend --window`` all read their values through the click types here,
so each accepts the same forms and a bad value is click's usual usage error
(exit 2) naming the option and the forms it takes:

* a duration: ``90m``, ``24h``, ``7d``, ``2w``, ``30s`` or plain seconds;
* a point in time: ISO 8601 (``2026-11-27``, ``2026-11-27T06:00``; UTC when
  it carries no zone, ``Z`` and offsets accepted) or seconds since the epoch;
* "when": either of them, a duration meaning that long ago. A bare number
  is a point here (epoch seconds): a duration ago needs its unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar, cast

import click

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

AGO_FORMS = "90m, 24h, 7d, 2w"
DURATION_FORMS = f"{AGO_FORMS} or seconds"
POINT_FORMS = "ISO 8601 (2026-11-27T06:00, UTC unless it has an offset) or epoch seconds"


@dataclass(frozen=True)
class Duration:
    """A length of time as the user wrote it: the unit decides the rounding of a start."""

    seconds: float
    unit: str  # "s", "m", "h", "d", "w" ("s" for plain seconds)

    @property
    def on_the_hour(self) -> bool:
        """Hours, days and weeks are coarse: a range of them starts on the hour."""
        return self.unit in ("h", "d", "w")

    def start_before(self, end: float) -> float:
        """Where a range this long, ending at ``end``, starts (``report --since``).

        A range of hours or more is read from the hourly rollups; starting it
        on the hour spares a partial first hour read call by call (a third of
        a second per hour of a busy host). Minutes and seconds ask for more
        precision than that, and get it.
        """
        start = end - self.seconds
        if self.on_the_hour:
            start = math.floor(start / 3600) * 3600
        return start


def parse_duration(text: str) -> Duration | None:
    """``'90m'`` -> Duration(5400, 'm'); None when it is not a positive duration."""
    m = _DURATION.match(text)
    if not m:
        return None
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        return None
    return Duration(seconds, m.group(2) or "s")


def parse_point(text: str) -> float | None:
    """ISO 8601 (UTC unless it carries a zone) or epoch seconds -> epoch s; None if neither."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) else None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_when(text: str) -> Duration | float | None:
    """A duration ago (it keeps its unit, see ``resolve``) or a point; a bare number is a point."""
    if not text.strip().replace(".", "", 1).isdigit():
        ago = parse_duration(text)
        if ago is not None:
            return ago
    return parse_point(text)


class TimeType(click.ParamType[T]):
    """A click type for one of the forms above: the parse, and the forms a refusal names."""

    def __init__(self, name: str, parse: Callable[[str], T | None], forms: str) -> None:
        self.name = name
        self._parse = parse
        self._forms = forms

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if not isinstance(value, str):  # a default or a value already converted
            return cast(T, value)
        parsed = self._parse(value)
        if parsed is None:
            self.fail(f"{value!r} is not {self._forms}", param, ctx)
        return parsed


def resolve(when: Duration | float, now: float) -> float:
    """A ``WHEN`` value as epoch seconds: a duration counts back from ``now``, exactly."""
    return now - when.seconds if isinstance(when, Duration) else when


DURATION = TimeType("duration", parse_duration, f"a duration: give {DURATION_FORMS}")
"""``--since 24h``, ``--window 90m``: a positive duration."""
POINT = TimeType("time", parse_point, f"a time: give {POINT_FORMS}")
"""``--from``, ``--to``: a point in time, as epoch seconds."""
WHEN = TimeType("when", parse_when, f"a time: give a duration ago ({AGO_FORMS}) or {POINT_FORMS}")
"""``reprice --since/--until``: a duration ago or a point in time."""
