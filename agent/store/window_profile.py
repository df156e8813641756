"""A device window's profile as the store keeps it: compact JSON text.

``[[end_ms, mJ], ...]``: each piece's end as whole milliseconds after the
window's ``t0`` and its energy in whole millijoules, in time order, the
first piece starting at ``t0``. Integers keep a 10 s window of 0.1 s pieces
near a kilobyte; ends are offsets, not durations, so rounding never drifts.
The report only takes ratios of a profile's energies (report/edges.py), so
a millijoule of rounding is far below what it resolves.
"""

from __future__ import annotations

import itertools
import json
import math

from infermeter.records import Profile


def encode(profile: Profile | None, t0: float) -> str | None:
    """The column's text for a window starting at ``t0``; None stays NULL."""
    if not profile:
        return None
    pieces = [[round((t - t0) * 1000.0), round(j * 1000.0)] for t, j in profile]
    return json.dumps(pieces, separators=(",", ":"))


def decode(text: str | None, t0: float) -> Profile | None:
    """The profile back from the column; None for NULL or anything unreadable.

    Unreadable text is not an error here: the report then spreads the
    window by time, as it does a window written before profiles existed.
    """
    if not text:
        return None
    try:
        pieces = json.loads(text)
        out = tuple((t0 + float(ms) / 1000.0, float(mj) / 1000.0) for ms, mj in pieces)
    except (ValueError, TypeError):
        return None
    if not out or not all(math.isfinite(t) and math.isfinite(j) and j >= 0 for t, j in out):
        return None
    if any(b[0] < a[0] for a, b in itertools.pairwise(out)):
        return None
    return out
