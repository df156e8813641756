"""One log line per burst of losses, for the agent's bounded structures.

A flood of refused spans or an hour-long store outage must not write one
line per span or per flush, yet the operator must hear of it at once and
learn the final count. ``ShedLog`` says the first loss at once, then at most
one line every ``every_s`` while the losses go on, and a closing line with
the remainder once a quiet period (one ``quiet()`` call with no loss since
the previous one) shows the burst is over. Every line carries the totals
since start, so the last line alone tells the whole story.

Its clock is the monotonic one: how often to write lines is a question of
the operator's time, not of the data's (a replay runs hours in seconds).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

EVERY_S = 60.0


class ShedLog:
    """Counts losses by reason and logs them once per burst (see the module)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        phrases: Mapping[str, str],
        detail: Callable[[], str] | None = None,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.what = what
        self.phrases = dict(phrases)  # reason -> words after its count
        self._detail = detail
        self.every_s = every_s
        self._clock = clock
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._in_burst = False
        self._noted = False  # a loss since the last quiet()
        self._last_line = 0.0

    def note(self, counts: Mapping[str, int]) -> None:
        """Count losses by reason; the first of a burst is logged at once."""
        counts = {r: n for r, n in counts.items() if n > 0}
        if not counts:
            return
        self.totals.update(counts)
        self._pending.update(counts)
        self._noted = True
        now = self._clock()
        if not self._in_burst or now - self._last_line >= self.every_s:
            self._in_burst = True
            self._emit(now)

    def quiet(self) -> None:
        """A periodic point: if nothing was lost since the last one, the burst is over."""
        if self._in_burst and not self._noted:
            self._in_burst = False
            if self._pending:
                self._emit(self._clock())
        self._noted = False

    def flush(self) -> None:
        """Say what is pending now (the agent is stopping)."""
        if self._pending:
            self._emit(self._clock())
        self._in_burst = False
        self._noted = False

    def _emit(self, now: float) -> None:
        parts = [f"{n} {self.phrases.get(r, r)}" for r, n in sorted(self._pending.items())]
        totals = ", ".join(f"{r} {n}" for r, n in sorted(self.totals.items()))
        detail = f"; {self._detail()}" if self._detail is not None else ""
        self._log.warning("%s: %s%s (since start: %s)", self.what, "; ".join(parts), detail, totals)
        self._pending.clear()
        self._last_line = now
