"""The agent's steps, as methods the scheduler calls: tick, flush, rollup, prune.

The state between steps is small and explicit: the current targets, the
meters, and the shares attributed since the last flush. Each step is a thin
shell around the pure functions in attribution.py and the store's writes, so
the live daemon and ``infermeter replay`` run exactly the same code with a
different clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from infermeter.attribution import attribute_reading, merge_shares
from infermeter.baseline import BaselineLearner
from infermeter.config import Config
from infermeter.discovery import Discovery, ProcessInfo
from infermeter.hookspecs import Meter
from infermeter.plugin_manager import PluginManager
from infermeter.records import Device, Reading, Share, Target, TargetKey
from infermeter.store.writer import FlushBatch, Store

log = logging.getLogger(__name__)

TargetSource = Callable[[float], Mapping[int, Target]]


class Agent:
    """One host's metering state. ``tick`` and ``flush`` may run on two threads."""

    def __init__(
        self,
        config: Config,
        pm: PluginManager,
        store: Store | None,
        meters: Sequence[Meter] | None = None,
        targets: TargetSource | None = None,
    ) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.meters: list[Meter] = list(meters) if meters is not None else []
        self._meters_given = meters is not None
        self.discovery = Discovery(config.host, self._decide)
        self._targets: TargetSource = targets or (lambda _now: self.discovery.scan())
        self.learner = BaselineLearner()
        self._lock = threading.Lock()
        self._pending: deque[Share] = deque()
        self._max_pending = int(config["agent.buffer_max_shares"])
        self.dropped_shares = 0
        self.devices: dict[str, Device] = {}
        self._seen_targets: dict[TargetKey, Target] = {}
        self.last_readings: list[Reading] = []
        self.ticks = 0
        self.flushes = 0

    # ----- life cycle --------------------------------------------------------

    def start(self) -> None:
        if not self._meters_given:
            self.meters = self.pm.collect("infermeter_meters", config=self.config)
        if self.store is not None:
            for uid, (idle_w, keepwarm_w) in self.store.learned_baselines().items():
                self.learner.seed(uid, idle_w, keepwarm_w)
        names = ", ".join(m.name for m in self.meters) or "none"
        log.info("meters: %s", names)

    def close(self) -> None:
        for meter in self.meters:
            try:
                meter.close()
            except Exception:
                log.exception("meter %s failed to close", meter.name)

    # ----- steps -------------------------------------------------------------

    def _decide(self, process: ProcessInfo) -> Target | None:
        result: Target | None = self.pm.hook.infermeter_discover(
            process=process, config=self.config
        )
        return result

    def tick(self, now: float | None = None) -> list[Share]:
        """Discover, read every meter, attribute; keep the shares for the flush."""
        now = time.time() if now is None else now
        targets = dict(self._targets(now))
        readings: list[Reading] = []
        for meter in self.meters:
            try:
                readings.extend(meter.read(now, targets))
            except Exception:  # a meter bug loses its reading, not the tick
                log.exception("meter %s failed", meter.name)
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
            self._bound_pending()
        self.last_readings = readings
        self.ticks += 1
        return shares

    def take_batch(self, now: float) -> FlushBatch:
        """Everything attributed since the last flush, merged per device window."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            targets = self._seen_targets
            self._seen_targets = {}
        by_device: dict[str, list[Share]] = {}
        for s in pending:
            by_device.setdefault(s.device_uid, []).append(s)
        merged: list[Share] = []
        for group in by_device.values():
            t0 = min(s.t0 for s in group)
            t1 = max(s.t1 for s in group)
            merged.extend(merge_shares(group, t0, t1))
        named = {s.target for s in merged if s.target is not None}
        return FlushBatch(
            shares=merged,
            devices=[self.devices[uid] for uid in by_device],
            targets=[t for k, t in targets.items() if k in named],
            now=now,
            baselines={uid: self.learner.learned(uid) for uid in by_device},
        )

    def flush(self, now: float | None = None) -> int:
        """Write what was attributed since the last flush, in one transaction.

        When the store is away the batch goes back to the buffer (bounded) and
        is written by a later flush; a retried batch never counts twice.
        """
        now = time.time() if now is None else now
        batch = self.take_batch(now)
        if not batch.shares or self.store is None:
            return 0
        try:
            written = self.store.write_flush(batch)
        except Exception as e:
            log.warning(
                "flush failed, keeping %d shares for the next one: %s", len(batch.shares), e
            )
            self._restore(batch)
            return 0
        self.flushes += 1
        self.pm.collect("infermeter_export", batch=batch.shares, config=self.config)
        return written

    def _restore(self, batch: FlushBatch) -> None:
        with self._lock:
            self._pending.extendleft(reversed(batch.shares))
            for target in batch.targets:
                self._seen_targets.setdefault(target.key, target)
            self._bound_pending()

    def _bound_pending(self) -> None:
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped_shares += 1

    def rollup(self, now: float | None = None) -> int:
        if self.store is None:
            return 0
        now = time.time() if now is None else now
        since = self.store.get_state("rollup_until")
        since = float(since) - 3600 if since is not None else 0.0
        rows = self.store.rollup(since, now)
        self.store.set_state("rollup_until", now)
        return rows

    def prune(self, now: float | None = None) -> int:
        if self.store is None:
            return 0
        now = time.time() if now is None else now
        keep_s = float(self.config["store.retention_days"]) * 86400
        return self.store.prune(now - keep_s)

    def recommend(self, now: float | None = None) -> int:
        recs = self.pm.collect("infermeter_recommend", stats={}, config=self.config)
        return len(recs)

    def current_targets(self) -> Iterable[Target]:
        return self.discovery.targets.values()
