"""Learning each device's idle and keep-warm power from its quiet windows.

A table default (from the meter) is only a start: the same card model idles
at different power in different chassis and driver versions. A window is
quiet when nobody holds the device and it is not busy: its power is a sample
of the bare idle. A window in which processes hold the device but nothing
runs on it is a sample of idle + keep-warm. The median of the recent samples
wins over the default once there are enough of them, and the store keeps the
learned values across restarts. Estimated readings teach nothing: their idle
is the model's own.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from infermeter.attribute.split import Baseline
from infermeter.records import Device, Method, Reading

MIN_SAMPLES = 5
WINDOW = 120
QUIET_BUSY = 0.01  # a device below 1 % busy is doing nothing worth charging


@dataclass
class _Samples:
    idle_w: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    held_w: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    learned_idle_w: float | None = None
    learned_keepwarm_w: float | None = None


class BaselineLearner:
    def __init__(self) -> None:
        self._by_device: dict[str, _Samples] = {}

    def seed(self, uid: str, idle_w: float | None, keepwarm_w: float | None) -> None:
        """Values learned by an earlier run, read back from the store."""
        s = self._by_device.setdefault(uid, _Samples())
        s.learned_idle_w = idle_w
        s.learned_keepwarm_w = keepwarm_w

    def observe(self, reading: Reading) -> None:
        if reading.method is Method.ESTIMATED or reading.duration_s <= 0:
            return
        busy = reading.busy_fraction
        active = sum(w for w in reading.weights.values() if w > 0)
        if (busy is not None and busy > QUIET_BUSY) or active > 0:
            return
        s = self._by_device.setdefault(reading.device.uid, _Samples())
        power_w = reading.energy_j / reading.duration_s
        (s.held_w if reading.holders else s.idle_w).append(power_w)
        if len(s.idle_w) >= MIN_SAMPLES:
            s.learned_idle_w = statistics.median(s.idle_w)
        idle = s.learned_idle_w if s.learned_idle_w is not None else reading.device.idle_power_w
        if len(s.held_w) >= MIN_SAMPLES and idle is not None:
            s.learned_keepwarm_w = max(0.0, statistics.median(s.held_w) - idle)

    def baseline(self, device: Device) -> Baseline:
        s = self._by_device.get(device.uid)
        idle = s.learned_idle_w if s and s.learned_idle_w is not None else device.idle_power_w
        keepwarm = (
            s.learned_keepwarm_w
            if s and s.learned_keepwarm_w is not None
            else device.keepwarm_power_w
        )
        return Baseline(idle or 0.0, keepwarm or 0.0)

    def learned(self, uid: str) -> tuple[float | None, float | None]:
        s = self._by_device.get(uid)
        return (s.learned_idle_w, s.learned_keepwarm_w) if s else (None, None)
