"""The spans received, and the energy each model call has gathered so far.

A call can span several ticks and several flushes, so its energy builds up
interval by interval and is written once, when every interval it overlaps
has been attributed (its end is before the flush's cutoff). Spans arrive a
little after they end (the sender batches them, accelerator work is polled),
which is why a flush only attributes intervals older than a short lag.

Bounded, and it says when it sheds (issue 10, case 3). A span is refused at
the door, counted by reason, when

* its times are not finite or it ends before it starts (``malformed``);
* it ends more than ``horizon_s`` after now (``future``): a far-future end
  would hold the span, and its memory, until that time;
* it started more than ``horizon_s`` before the oldest interval still held,
  the last cutoff (``too_old``): nothing it overlaps is held any more, and
  no sequence number could be given to it safely (below).

At most ``max_spans`` spans are held. Beyond, the spans that end LATEST are
shed first (counted as ``shed``): they are the ones that would hold memory
longest, and a sender whose clock runs ahead, or that sends spans ending
near the horizon on purpose, can then only displace its own spans, not
every well-formed span that arrives after it. The energy already credited
to a shed call is not lost from the shares (they are split as they come);
only the call's row is. Refusals and sheds are logged once per burst
(``ShedLog``); ``stats()`` has every count, and they add up:
``received = refused (all reasons) + held + completed + unattributed + shed``.

Sequence numbers (issue 10, case 7). Two calls of one process and model
that start at the same ``t0`` (a coarse clock; a batching server that stamps
every request of a batch with the batch's start) are two calls, not one:
each arrival is numbered ``seq`` 0, 1, ... within its ``(pid, model, t0)``,
and the store's natural key includes ``seq``. A datagram is never delivered
twice: a Unix datagram socket (AF_UNIX, SOCK_DGRAM) is reliable and keeps
order, and the SDK sends every span once, so every arrival is a call. The
number is given once, on arrival, and travels in the span, so a flush that
is retried after the store was away writes the same keys again.

A second call can arrive long after the first was written (its call was
longer), so the keys of written calls are remembered too, for as long as
a span with that ``t0`` could still pass the door (``horizon_s`` behind the
cutoff), and at most ``max_spans`` of them besides the keys of held spans:
when there are more, the oldest written are forgotten first and the door's
floor rises to their ``t0``, so a key that was forgotten is refused as
``too_old`` rather than numbered again from 0 (which would overwrite the
stored call). At most ``2 * max_spans`` keys are thus in memory (about 150
bytes each), next to at most ``max_spans`` held spans. The remembered keys
are grouped by the flush that completed them; a completed call ends before
its cutoff, so the floor never rises past a cutoff already passed.
"""

from __future__ import annotations

import bisect
import logging
import math
import sys
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from infermeter.attribute.span_split import Predict, split_over_spans
from infermeter.attribute.step_split import PartWeights, expand_step, token_weights
from infermeter.records import Bucket, CallEnergy, Method, Share, Span, Target, TargetKey
from infermeter.shedding import ShedLog

log = logging.getLogger(__name__)

_WEAKNESS = {Method.MEASURED: 0, Method.INTEGRATED: 1, Method.ESTIMATED: 2}

# Reasons, as stats() and the log name them.
MALFORMED = "malformed"
FUTURE = "future"
TOO_OLD = "too_old"
SHED = "shed"
REFUSALS = (MALFORMED, FUTURE, TOO_OLD)

# Targets whose uncovered ("overhead") energy is kept for inspection; beyond,
# the target first met is forgotten (processes come and go for months).
MAX_OVERHEAD_TARGETS = 65_536

_Key = tuple[int, str, float]  # (pid, model, t0): what two calls can share
_CallKey = tuple[int, str, float, int]  # the same with seq: one call
_WRITTEN = 1  # low bit of a _seq value: a call with this key was completed


@dataclass(slots=True)
class _Open:
    span: Span
    target: TargetKey | None = None
    energy_j: float = 0.0
    method: Method = Method.MEASURED


def _start(span: Span) -> float:
    return span.t0


def _call_key(span: Span) -> _CallKey:
    return (span.pid, span.model, span.t0, span.seq)


class SpanLedger:
    """Held spans and their calls' energy; bounded by count and by time (see the module)."""

    def __init__(
        self,
        max_spans: int = 500_000,
        horizon_s: float = 3600.0,
        part_weights: PartWeights = token_weights,
    ) -> None:
        if max_spans < 1:
            raise ValueError(f"the span ledger must hold at least 1 span, not {max_spans}")
        if not (math.isfinite(horizon_s) and horizon_s > 0):
            raise ValueError(f"the span horizon must be a positive number, not {horizon_s}")
        self.max_spans = max_spans
        self.horizon_s = horizon_s
        # How a completed step span's energy is split over its requests (step_split).
        self.part_weights = part_weights
        self._by_pid: dict[int, list[Span]] = {}
        self._open: dict[_CallKey, _Open] = {}
        # Per (pid, model, t0): next seq << 1 | _WRITTEN. An entry lives while
        # a span with its key is held or while its key is remembered.
        self._seq: dict[_Key, int] = {}
        self._held: dict[_Key, int] = {}  # held spans per key
        self._done: list[_Key] = []  # completed since the last complete() began
        self._done_t0 = -math.inf
        self._remembered: deque[tuple[float, list[_Key]]] = deque()  # (max t0, keys)
        self._floor = -math.inf  # spans starting at or before it are refused
        self._cutoff = -math.inf
        self.received = 0
        self.refused: Counter[str] = Counter()
        self.shed_spans = 0
        self.completed_calls = 0
        self.late_spans = 0  # accepted, but after some of their intervals were attributed
        self.unattributed_calls = 0  # from a pid that was never a target
        # Active energy of each target that no call covered, since start.
        self.overhead_j: dict[TargetKey, float] = {}
        self.overhead_targets_forgotten = 0
        self.shed_log = ShedLog(
            log,
            "span ledger",
            {
                MALFORMED: "spans refused: times not finite or ending before they start",
                FUTURE: f"spans refused: ending more than {horizon_s:g} s after now",
                TOO_OLD: f"spans refused: starting more than {horizon_s:g} s before "
                "the oldest interval held",
                SHED: f"held spans shed, latest-ending first, over the bound of {max_spans}",
            },
            detail=lambda: f"holding {len(self._open)} spans",
        )

    # ----- arrival ------------------------------------------------------------

    def add(self, spans: Iterable[Span], now: float) -> int:
        """Take the spans that pass the door, numbered; returns how many did.

        ``now`` is the agent's clock (the trace's, in a replay): the door's
        window is around it.
        """
        if not math.isfinite(now):
            raise ValueError(f"the ledger's clock must be finite, not {now}")
        ref = now if self._cutoff == -math.inf else min(now, self._cutoff)
        oldest = ref - self.horizon_s
        latest = now + self.horizon_s
        refused: Counter[str] = Counter()
        touched: set[int] = set()
        accepted = 0
        for span in spans:
            self.received += 1
            t0, t1 = span.t0, span.t1
            if not (math.isfinite(t0) and math.isfinite(t1)) or t1 < t0:
                refused[MALFORMED] += 1
                continue
            if t1 > latest:
                refused[FUTURE] += 1
                continue
            if t0 < oldest or t0 <= self._floor:
                refused[TOO_OLD] += 1
                continue
            if t0 < self._cutoff:
                self.late_spans += 1
            key = (span.pid, sys.intern(span.model), t0)
            value = self._seq.get(key, 0)
            seq = value >> 1
            self._seq[key] = value + 2
            self._held[key] = self._held.get(key, 0) + 1
            if span.seq != seq:
                span = replace(span, seq=seq)
            self._open[(*key, seq)] = _Open(span)
            self._by_pid.setdefault(span.pid, []).append(span)
            touched.add(span.pid)
            accepted += 1
        for pid in touched:  # nearly sorted: timsort is linear here
            self._by_pid[pid].sort(key=_start)
        self.refused.update(refused)
        self.shed_log.note(refused)
        over = len(self._open) - self.max_spans
        if over > 0:
            self._shed(over)
        return accepted

    def _shed(self, n: int) -> None:
        """Drop the ``n`` held spans that end latest (see the module for why).

        Among spans ending at the same time the latest arrivals go first.
        The threshold comes from sorting the ends as plain floats, which is
        a C loop: a full ledger under a flood sheds on every tick.
        """
        cut = sorted([o.span.t1 for o in self._open.values()])[-n]
        victims = [o for o in self._open.values() if o.span.t1 > cut]
        need = n - len(victims)
        if need > 0:
            for o in reversed(self._open.values()):
                if o.span.t1 == cut:
                    victims.append(o)
                    need -= 1
                    if not need:
                        break
        gone: set[int] = set()
        for call in victims:
            span = call.span
            del self._open[_call_key(span)]
            gone.add(id(span))
            self._release((span.pid, span.model, span.t0), written=False)
        for pid in {o.span.pid for o in victims}:
            keep = [s for s in self._by_pid[pid] if id(s) not in gone]
            if keep:
                self._by_pid[pid] = keep
            else:
                del self._by_pid[pid]
        self.shed_spans += len(victims)
        self.shed_log.note({SHED: len(victims)})
        self._trim()  # a shed twin of a written call leaves its key remembered

    def _release(self, key: _Key, written: bool) -> None:
        """A held span of ``key`` leaves: completed (``written``), or shed/unattributed."""
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        if written:
            self._seq[key] |= _WRITTEN
            self._done.append(key)
            self._done_t0 = max(self._done_t0, key[2])
        elif not left and not self._seq[key] & _WRITTEN:
            # Nothing with this key waits or was written: numbering may start over.
            del self._seq[key]

    def pids(self) -> set[int]:
        return set(self._by_pid)

    # ----- attribution ----------------------------------------------------------

    def split(
        self,
        shares: Sequence[Share],
        targets: Mapping[TargetKey, Target],
        predict: Predict | None = None,
    ) -> list[Share]:
        """Replace each target's active share by its per-model parts; credit the calls.

        ``predict`` weighs the calls by their predicted energy (span_split.py).
        """
        out: list[Share] = []
        for share in shares:
            if share.bucket is not Bucket.ACTIVE or share.target is None:
                out.append(share)
                continue
            spans = self.overlapping(share.target[1], share.t0, share.t1)
            target = targets.get(share.target)
            result = split_over_spans(share, spans, target.labels if target else None, predict)
            out.extend(result.shares)
            self._add_overhead(share.target, result.overhead_j)
            for span, energy in result.call_energy_j:
                call = self._open[_call_key(span)]
                call.target = share.target
                call.energy_j += energy
                if _WEAKNESS[share.method] > _WEAKNESS[call.method]:
                    call.method = share.method
        return out

    def _add_overhead(self, target: TargetKey, energy_j: float) -> None:
        if target not in self.overhead_j and len(self.overhead_j) >= MAX_OVERHEAD_TARGETS:
            del self.overhead_j[next(iter(self.overhead_j))]
            self.overhead_targets_forgotten += 1
        self.overhead_j[target] = self.overhead_j.get(target, 0.0) + energy_j

    def complete(self, cutoff: float, targets: Mapping[int, Target]) -> list[CallEnergy]:
        """Calls that ended before ``cutoff``: all their intervals are attributed.

        A step span comes out as one call per request it served (step_split).
        """
        self._cutoff = max(self._cutoff, cutoff)
        done: list[CallEnergy] = []
        for pid in list(self._by_pid):
            spans = self._by_pid[pid]
            keep = []
            for span in spans:
                if span.t1 > cutoff:
                    keep.append(span)
                    continue
                call = self._open.pop(_call_key(span))
                key = (span.pid, span.model, span.t0)
                target_key = call.target
                if target_key is None and pid in targets:
                    target_key = targets[pid].key  # a call that drew nothing measurable
                if target_key is None:
                    self.unattributed_calls += 1
                    self._release(key, written=False)
                    continue
                self._release(key, written=True)
                self.completed_calls += 1
                done.extend(
                    expand_step(
                        CallEnergy(span, target_key, call.energy_j, call.method), self.part_weights
                    )
                )
            if keep:
                self._by_pid[pid] = keep
            else:
                del self._by_pid[pid]
        self._forget()
        self.shed_log.quiet()
        return done

    def _forget(self) -> None:
        """Remember this flush's keys; forget those too old, and the oldest beyond the bound."""
        if self._done:
            self._remembered.append((self._done_t0, self._done))
            self._done, self._done_t0 = [], -math.inf
        self._trim(self._cutoff - self.horizon_s)

    def _trim(self, too_old: float = -math.inf) -> None:
        while self._remembered and (
            self._remembered[0][0] < too_old or self.keys_remembered > self.max_spans
        ):
            max_t0, keys = self._remembered.popleft()
            self._floor = max(self._floor, max_t0)
            for key in keys:
                value = self._seq.get(key)
                if value is None:
                    continue
                if key in self._held:  # its span is refused at the door from now on
                    self._seq[key] = value & ~_WRITTEN
                else:
                    del self._seq[key]

    def overlapping(self, pid: int, t0: float, t1: float) -> list[Span]:
        """The held spans of ``pid`` that overlap [t0, t1)."""
        spans = self._by_pid.get(pid)
        if not spans:
            return []
        # Spans are sorted by start; those starting at or after t1 cannot overlap.
        end = bisect.bisect_left(spans, t1, key=_start)
        return [s for s in spans[:end] if s.t1 > t0]

    # ----- what it did ------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._open)

    @property
    def keys_remembered(self) -> int:
        """Keys of written calls remembered with no span of theirs held."""
        return len(self._seq) - len(self._held)

    def stats(self) -> dict[str, int]:
        """Every count since start; see the module for how they add up."""
        out = {
            "received": self.received,
            "held": len(self._open),
            "completed": self.completed_calls,
            "unattributed": self.unattributed_calls,
            "shed": self.shed_spans,
            "late": self.late_spans,
            "keys": len(self._seq),  # in memory for numbering: held and remembered
            "keys_remembered": self.keys_remembered,
        }
        for reason in REFUSALS:
            out[f"refused_{reason}"] = self.refused[reason]
        return out
