"""The last guard on a meter's reading before it is attributed.

Meters check their own counters (the NVML meter falls back to integrated
power when its counter jumps or freezes), but a meter is a plugin, and a
third-party one may hand over anything. A reading the device could not have
drawn (negative, not finite, or above its power limit for that long) would
be stored as fact and priced: one such reading of 1e9 J outweighs a year
of real ones. The agent refuses it here, counts it and says why once.
"""

from __future__ import annotations

import math

from infermeter.records import Reading

# A card may briefly draw above its limit (power excursions are averaged by
# the firmware over about a second); twice the limit is never a real draw.
LIMIT_MARGIN = 2.0
# Slack in joules for rounding in counters read a few milliseconds apart.
SLACK_J = 1.0


def implausible(reading: Reading) -> str | None:
    """Why ``reading`` cannot be true, or None when it can."""
    dt = reading.t1 - reading.t0
    if not (math.isfinite(reading.t0) and math.isfinite(reading.t1)) or dt < 0:
        return f"interval [{reading.t0!r}, {reading.t1!r}) is not an interval"
    energy = reading.energy_j
    if not math.isfinite(energy) or energy < 0:
        return f"energy {energy!r} J is not a non-negative number"
    device = reading.device
    limit_w = device.max_power_limit_w or device.power_limit_w
    if limit_w and energy > limit_w * LIMIT_MARGIN * dt + SLACK_J:
        return (
            f"{energy:.6g} J in {dt:.3g} s is {energy / max(dt, 1e-9):.6g} W, "
            f"above {LIMIT_MARGIN:g} x the {limit_w:g} W limit"
        )
    return None
