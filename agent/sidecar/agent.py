"""The agent's steps, as methods the scheduler calls: tick, flush, rollup, prune.

The state between steps is small and explicit: the current targets, the
meters, and the shares attributed since the last flush. Each step is a thin
shell around the pure functions in attribute/split.py and the store's writes, so
the live daemon and ``infermeter replay`` run exactly the same code with a
different clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from infermeter.attribute.baseline import BaselineLearner
from infermeter.attribute.energy_model import EnergyFit, fit_from_records, fit_records
from infermeter.attribute.energy_weights import EnergyWeights
from infermeter.attribute.ledger import SpanLedger
from infermeter.attribute.readings import implausible
from infermeter.attribute.split import attribute_reading, merge_shares
from infermeter.attribute.windows import summarise
from infermeter.config import Config
from infermeter.discover.processes import ProcessInfo
from infermeter.discover.redact import patterns_for
from infermeter.discover.targets import Discovery
from infermeter.errors import ConfigError
from infermeter.hookspecs import Meter, SpanSource
from infermeter.plugin_manager import PluginManager
from infermeter.price.pricing import card_or_none, price_calls, price_shares
from infermeter.records import Device, Price, PriceCard, Reading, Share, Span, Target, TargetKey
from infermeter.shedding import ShedLog
from infermeter.store.writer import FlushBatch, Store

log = logging.getLogger(__name__)

TargetSource = Callable[[float], Mapping[int, Target]]
# Agent state: the span sources' counters as of the last rollup (``status`` shows them).
SPAN_SOURCES_KEY = "span_sources"


def _one_line(e: BaseException) -> str:
    """An exception as one line: a driver's message can span several."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class Agent:
    """One host's metering state. ``tick`` and ``flush`` may run on two threads."""

    def __init__(
        self,
        config: Config,
        pm: PluginManager,
        store: Store | None,
        meters: Sequence[Meter] | None = None,
        targets: TargetSource | None = None,
        span_sources: Sequence[SpanSource] | None = None,
    ) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.meters: list[Meter] = list(meters) if meters is not None else []
        self._meters_given = meters is not None
        self.discovery = Discovery(config.host, self._decide, redact_patterns=patterns_for(config))
        self._targets: TargetSource = targets or (lambda _now: self.discovery.scan())
        self.learner = BaselineLearner()
        self._saved_fit: EnergyFit | None = None
        self.card: PriceCard | None = card_or_none(config)
        self.span_sources: list[SpanSource] = list(span_sources or [])
        self._sources_given = span_sources is not None
        max_spans = int(config["agent.ledger_max_spans"])
        horizon_s = float(config["agent.span_horizon_s"])
        if max_spans < 1:
            raise ConfigError(f"config key `agent.ledger_max_spans` must be >= 1, not {max_spans}")
        if not horizon_s > 0 or horizon_s == float("inf"):
            raise ConfigError(
                f"config key `agent.span_horizon_s` must be a positive number, not {horizon_s}"
            )
        self.energy = EnergyWeights(self._device_kind)
        self.ledger = SpanLedger(
            max_spans=max_spans, horizon_s=horizon_s, part_weights=self.energy.part_weights
        )
        self.spans_dropped: dict[str, int] = {}
        self._span_lag_s = float(config["agent.span_lag_s"])
        self._lock = threading.Lock()
        self._pending: deque[Share] = deque()
        self._pending_readings: deque[Reading] = deque()
        self._unwritten: deque[FlushBatch] = deque()
        self._max_pending = int(config["agent.buffer_max_shares"])
        self._max_calls = int(config["agent.buffer_max_calls"])
        for key, bound in (
            ("buffer_max_shares", self._max_pending),
            ("buffer_max_calls", self._max_calls),
        ):
            if bound < 1:
                raise ConfigError(f"config key `agent.{key}` must be >= 1, not {bound}")
        # What the bounded buffers shed, since start (shed_counts() has them all).
        self.dropped_shares = 0  # attributed, never written: pending or in unwritten batches
        self.dropped_calls = 0  # completed calls in unwritten batches dropped
        self.dropped_batches = 0
        self.dropped_readings = 0  # device readings pending their window summary
        self.buffer_log = ShedLog(
            log,
            "agent buffers",
            {
                "batches": "unwritten batches dropped, oldest first, while the store is away",
                "shares": f"shares dropped (bound: {self._max_pending} held)",
                "calls": f"calls dropped (bound: {self._max_calls} held)",
                "readings": f"readings dropped (bound: {self._max_pending} held)",
            },
            detail=self._held_text,
        )
        self._store_failing = False
        self._unattributed_told = 0  # the ledger's count already logged
        self.devices: dict[str, Device] = {}
        self._seen_targets: dict[TargetKey, Target] = {}
        self.last_readings: list[Reading] = []
        self.ticks = 0
        self.refused_readings: dict[str, int] = {}  # by meter: implausible, not attributed
        self.flushes = 0

    # ----- life cycle --------------------------------------------------------

    def start(self) -> None:
        if not self._meters_given:
            self.meters = self.pm.collect("infermeter_meters", config=self.config)
        if not self._sources_given:
            self.span_sources = self.pm.collect("infermeter_span_sources", config=self.config)
        if self.store is not None:
            for uid, (idle_w, keepwarm_w) in self.store.learned_baselines().items():
                self.learner.seed(uid, idle_w, keepwarm_w)
            try:
                self.energy.seed(fit_from_records(self.store.energy_models()))
            except Exception as e:  # a store from before the table: learn afresh
                log.warning("could not read the stored energy model: %s", _one_line(e))
        names = ", ".join(m.name for m in self.meters) or "none"
        log.info("meters: %s", names)

    def close(self) -> None:
        parts: list[Meter | SpanSource] = [*self.meters, *self.span_sources]
        for part in parts:
            try:
                part.close()
            except Exception:
                log.exception("%s failed to close", part.name)

    # ----- steps -------------------------------------------------------------

    def _device_kind(self, uid: str) -> str:
        device = self.devices.get(uid)
        return str(device.kind.value) if device is not None else "unknown"

    def _decide(self, process: ProcessInfo) -> Target | None:
        result: Target | None = self.pm.hook.infermeter_discover(
            process=process, config=self.config
        )
        return result

    def tick(self, now: float | None = None) -> list[Share]:
        """Discover, read every meter, attribute; keep the shares for the flush."""
        now = time.time() if now is None else now
        self._receive_spans(now)
        targets = dict(self._targets(now))
        readings: list[Reading] = []
        for meter in self.meters:
            try:
                got = meter.read(now, targets)
            except Exception:  # a meter bug loses its reading, not the tick
                log.exception("meter %s failed", meter.name)
                continue
            readings.extend(self._plausible(meter.name, got))
        shares: list[Share] = []
        for reading in readings:
            self.devices[reading.device.uid] = reading.device
            self.learner.observe(reading)
            shares.extend(
                attribute_reading(reading, targets, self.learner.baseline(reading.device))
            )
        with self._lock:
            for target in targets.values():
                self._seen_targets[target.key] = target
            self._pending.extend(shares)
            self._pending_readings.extend(r for r in readings if r.energy_j > 0)
            self._bound_pending()
        self.last_readings = readings
        self.ticks += 1
        return shares

    def _plausible(self, meter: str, readings: Sequence[Reading]) -> list[Reading]:
        """The readings a device could have drawn; the rest refused, counted, said once."""
        kept = []
        for reading in readings:
            problem = implausible(reading)
            if problem is None:
                kept.append(reading)
                continue
            self.refused_readings[meter] = self.refused_readings.get(meter, 0) + 1
            if self.refused_readings[meter] == 1:
                log.warning(
                    "meter %s: refused a reading of %s (further ones are counted): %s",
                    meter,
                    reading.device.uid,
                    problem,
                )
        return kept

    def _receive_spans(self, now: float) -> None:
        """Drain the span sources; a process that sends spans announces itself.

        The ledger refuses, at the door, spans outside its window around
        ``now`` and counts them; the pid of a refused span is still the
        kernel's word that the process exists, so it still announces it.
        """
        for source in self.span_sources:
            try:
                spans = source.drain()
            except Exception:
                log.exception("span source %s failed", source.name)
                continue
            with self._lock:
                self.ledger.add(spans, now)
            for pid in {s.pid for s in spans}:
                if pid not in self.discovery.targets:
                    self.discovery.announce(pid, {})
            self._report_drops(source)

    def _report_drops(self, source: SpanSource) -> None:
        """Say when spans were lost: by the sender while we were away, or by us."""
        try:
            dropped = source.dropped()
        except Exception:
            return
        before = self.spans_dropped.get(source.name, 0)
        if dropped > before:
            by_sender: dict[int, int] = getattr(source, "sender_dropped", dict)()
            log.warning(
                "%d spans dropped (%s in all, by sender pid: %s)",
                dropped - before,
                dropped,
                by_sender or "none",
            )
            self.spans_dropped[source.name] = dropped

    def add_spans(self, spans: Iterable[Span], now: float) -> int:
        """Spans handed over directly (replay, tests) rather than by a source.

        ``now`` is the caller's clock (a replay's is the trace's); returns how
        many the ledger took.
        """
        with self._lock:
            return self.ledger.add(spans, now)

    def take_batch(self, now: float, final: bool = False) -> FlushBatch:
        """What can be attributed for good now, merged per device window.

        Intervals younger than the span lag wait for the next flush, so the
        spans that end in them have time to arrive; the final flush takes all.
        """
        cutoff = now if final else now - self._span_lag_s
        with self._lock:
            ready = [s for s in self._pending if s.t1 <= cutoff]
            held = [s for s in self._pending if s.t1 > cutoff]
            self._pending = deque(held)
            ready_readings = [r for r in self._pending_readings if r.t1 <= cutoff]
            self._pending_readings = deque(r for r in self._pending_readings if r.t1 > cutoff)
            targets = self._seen_targets
            still_held = {s.target for s in held}
            ready = self.energy.resplit(ready, self.ledger.overlapping)
            pending = self.ledger.split(ready, targets, self.energy.predict)
            calls = self.ledger.complete(cutoff, {t.pid: t for t in targets.values()})
            # A process that exited keeps its target while spans it sent last wait.
            waiting = self.ledger.pids()
            self._seen_targets = {
                k: t for k, t in targets.items() if k in still_held or t.pid in waiting
            }
            if final:  # the agent stops: say what is pending in the shed logs now
                self.ledger.shed_log.flush()
                self.buffer_log.flush()
            else:
                self.buffer_log.quiet()
        by_device: dict[str, list[Share]] = {}
        for s in pending:
            by_device.setdefault(s.device_uid, []).append(s)
        merged: list[Share] = []
        for group in by_device.values():
            t0 = min(s.t0 for s in group)
            t1 = max(s.t1 for s in group)
            merged.extend(merge_shares(group, t0, t1))
        named = {s.target for s in merged if s.target is not None}
        named.update(c.target for c in calls)
        share_prices: list[Price] = []
        call_prices: list[Price] = []
        if self.card is not None:
            share_prices = price_shares(merged, self.devices, self.card, self.pm)
            call_prices = price_calls(calls, merged, share_prices, self.card)
        return FlushBatch(
            shares=merged,
            devices=[self.devices[uid] for uid in by_device],
            targets=[t for k, t in targets.items() if k in named],
            now=now,
            baselines={uid: self.learner.learned(uid) for uid in by_device},
            calls=calls,
            windows=summarise(ready_readings),
            card=self.card,
            share_prices=share_prices,
            call_prices=call_prices,
        )

    def flush(self, now: float | None = None, final: bool = False) -> int:
        """Write what was attributed since the last flush, in one transaction.

        When the store is away the batch is kept (bounded, oldest dropped and
        counted) and written again before the next one; a batch written twice
        never counts twice, as every row has a natural key. A failing flush
        says how much is held against which bound, and what the bound threw
        away; what is still held after the final flush is ``unwritten()``,
        for the daemon to spool.
        """
        now = time.time() if now is None else now
        batch = self.take_batch(now, final)
        self._report_unstored_calls()
        if self.store is None:
            return 0
        if batch.shares or batch.calls:
            self._unwritten.append(batch)
        written, _ = self._write_unwritten()
        self._save_energy_model(now)
        return written

    def _save_energy_model(self, now: float) -> None:
        """Store the energy model when this run refitted it (never at the cost of a flush)."""
        assert self.store is not None
        fit = self.energy.fit
        if fit is self._saved_fit or not self.energy.learner.learned or self._store_failing:
            return
        try:
            self.store.save_energy_models(fit_records(fit), now)
        except Exception as e:
            log.warning("could not store the energy model: %s", _one_line(e))
            return
        self._saved_fit = fit

    def _write_unwritten(self) -> tuple[int, int]:
        """Write the held batches, oldest first, until the store refuses one.

        Returns the shares and the batches written.
        """
        assert self.store is not None
        written = 0
        batches = 0
        while self._unwritten:
            head = self._unwritten[0]
            try:
                written += self.store.write_flush(head)
            except Exception as e:
                self._store_failing = True
                self._bound_unwritten()  # what it drops, buffer_log says (once per burst)
                held = list(self._unwritten)
                log.warning(
                    "flush failed, holding %d batches (%d shares, %d calls; bounds %d shares, "
                    "%d calls) for the next: %s",
                    len(held),
                    sum(len(b.shares) for b in held),
                    sum(len(b.calls) for b in held),
                    self._max_pending,
                    self._max_calls,
                    _one_line(e),
                )
                return written, batches
            self._unwritten.popleft()
            self.flushes += 1
            batches += 1
            self.pm.collect("infermeter_export", batch=head.shares, config=self.config)
        if self._store_failing:
            self._store_failing = False
            log.info("the store is back: wrote %d held batches", batches)
        return written, batches

    def unwritten(self) -> list[FlushBatch]:
        """The batches the store has not taken yet, oldest first."""
        return list(self._unwritten)

    def write_spooled(self, batches: Sequence[FlushBatch]) -> int:
        """Write batches a previous run could not (its spool), ahead of any new one.

        Returns how many the store took; those it refuses stay held, first in
        line for the next flush. Their rows are idempotent on their natural
        keys, so a batch that was partly written before does no harm.
        """
        if self.store is None or not batches:
            return 0
        self._unwritten.extendleft(reversed(batches))
        _, taken = self._write_unwritten()
        return min(taken, len(batches))

    def _report_unstored_calls(self) -> None:
        """Say when model calls could not be stored because no target claimed them."""
        count = self.ledger.unattributed_calls
        if count > self._unattributed_told:
            log.warning(
                "%d model calls not stored: their process was never a target (%d in all)",
                count - self._unattributed_told,
                count,
            )
            self._unattributed_told = count

    def _bound_unwritten(self) -> None:
        """Keep the outage buffer within buffer_max_shares AND buffer_max_calls.

        The oldest batches go first, whole (a batch is one transaction), and
        what they held is counted and logged once per burst.
        """
        shares = sum(len(b.shares) for b in self._unwritten)
        calls = sum(len(b.calls) for b in self._unwritten)
        lost = {"batches": 0, "shares": 0, "calls": 0}
        while self._unwritten and (shares > self._max_pending or calls > self._max_calls):
            batch = self._unwritten.popleft()
            shares -= len(batch.shares)
            calls -= len(batch.calls)
            lost["batches"] += 1
            lost["shares"] += len(batch.shares)
            lost["calls"] += len(batch.calls)
        self.dropped_batches += lost["batches"]
        self.dropped_shares += lost["shares"]
        self.dropped_calls += lost["calls"]
        self.buffer_log.note(lost)

    def _bound_pending(self) -> None:
        """Keep the shares and readings waiting for their flush within buffer_max_shares."""
        shares = max(0, len(self._pending) - self._max_pending)
        for _ in range(shares):
            self._pending.popleft()
        readings = max(0, len(self._pending_readings) - self._max_pending)
        for _ in range(readings):
            self._pending_readings.popleft()
        self.dropped_shares += shares
        self.dropped_readings += readings
        self.buffer_log.note({"shares": shares, "readings": readings})

    def _held_text(self) -> str:
        shares = sum(len(b.shares) for b in self._unwritten)
        calls = sum(len(b.calls) for b in self._unwritten)
        return (
            f"holding {len(self._unwritten)} unwritten batches "
            f"({shares} shares, {calls} calls) and {len(self._pending)} pending shares"
        )

    def shed_counts(self) -> dict[str, int]:
        """What every bounded structure of this agent refused or shed, and holds now.

        Names: ``spans_*`` the span ledger's (``SpanLedger.stats``),
        ``buffer_*`` the outage buffer and the pending shares and readings,
        ``source_<name>_dropped`` what each span source dropped.
        """
        with self._lock:
            out = {f"spans_{k}": v for k, v in self.ledger.stats().items()}
            pending = len(self._pending)
        batches = list(self._unwritten)  # one step under the GIL: a consistent copy
        out.update(
            buffer_dropped_shares=self.dropped_shares,
            buffer_dropped_calls=self.dropped_calls,
            buffer_dropped_batches=self.dropped_batches,
            buffer_dropped_readings=self.dropped_readings,
            buffer_held_batches=len(batches),
            buffer_held_shares=sum(len(b.shares) for b in batches),
            buffer_held_calls=sum(len(b.calls) for b in batches),
            pending_shares=pending,
        )
        for name, n in self.spans_dropped.items():
            out[f"source_{name}_dropped"] = n
        return out

    def rollup(self, now: float | None = None, final: bool = False) -> int:
        """Hourly rollups of shares, requests, device busy time and weight basis.

        Rows of the last seconds may still be on their way (a flush leaves
        span_lag_s unattributed and a flush comes every flush_s), so the
        rollups stop that long before now, unless this is the last rollup
        after the final flush. An hour that its data makes fail is recorded
        and passed (request_rollup), so no input stops the rollups. The span
        sources' counters are stored alongside, for ``infermeter status``.
        """
        from infermeter.store.request_rollup import rollup_store

        if self.store is None:
            return 0
        now = time.time() if now is None else now
        lag_s = float(self.config["agent.span_lag_s"]) + 2 * float(self.config["agent.flush_s"])
        until = now if final else now - lag_s
        since = self.store.get_state("rollup_until")
        since = float(since) - 3600 if since is not None else 0.0
        rows = rollup_store(self.store, since, until)
        self.store.set_state("rollup_until", until)
        self.save_counts()
        return rows

    def save_counts(self) -> None:
        """Store what the span sources and this agent refused or shed, for ``status``."""
        if self.store is None:
            return
        counts = self._span_source_counts()
        counts["agent"] = self._loss_counts()
        self.store.set_state(SPAN_SOURCES_KEY, counts)

    def _loss_counts(self) -> dict[str, int]:
        """What this agent refused, shed or could not store, since start (for ``status``)."""
        lost = ("refused", "shed", "dropped", "unattributed", "late")
        out = {k: v for k, v in self.shed_counts().items() if any(w in k for w in lost)}
        for meter, n in self.refused_readings.items():
            out[f"readings_refused_{meter}"] = n
        return out

    def _span_source_counts(self) -> dict[str, dict[str, int]]:
        """Per span source, what it dropped and (receiver) refused or changed, since start."""
        out: dict[str, dict[str, int]] = {}
        for source in self.span_sources:
            try:
                counts = dict(getattr(source, "stats", dict)())
                counts["dropped"] = source.dropped()
            except Exception:  # a plugin's counters are not worth a rollup
                continue
            out[source.name] = {k: int(v) for k, v in counts.items()}
        return out

    def prune(self, now: float | None = None) -> int:
        """Delete raw shares past retention, except those of hours not rolled up yet.

        Store.prune keeps every share the rollups have not summed (after the
        completion point, or in an hour whose rollup failed), whatever its age.
        """
        if self.store is None:
            return 0
        now = time.time() if now is None else now
        keep_s = float(self.config["store.retention_days"]) * 86400
        return self.store.prune(now - keep_s)

    def recommend(self, now: float | None = None) -> int:
        """Run the recommenders over the recommend window ending now; store what they say.

        The devices this agent meters are passed along, so power-cap advice
        can use the range NVML reported rather than a table.
        """
        if self.store is None:
            return 0
        from infermeter.recommend import run as recommend  # only this job needs the stats builder

        now = time.time() if now is None else now
        recs = recommend.run(
            self.store.engine,
            self.store.host,
            self.config,
            self.pm,
            self.card,
            until=now,
            live_devices=dict(self.devices),
            now=now,
        )
        return len(recs)

    def current_targets(self) -> Iterable[Target]:
        return self.discovery.targets.values()
