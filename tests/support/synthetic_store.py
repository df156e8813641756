"""A store of several hours, written through the real Store.write_flush.

The H100 recordings last a minute or three, inside one hour, so they never
reach the report's rollup path. This builds hours of flushes with what the
rollups and the report must get right: two tenants, requests of several
calls across two models, a CPU whose capacity the card cannot price, a GPU
hour nobody used (its idle must stay idle under --share-idle), busy
fractions, and every weight basis.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_from_config
from infermeter.records import (
    Bucket,
    CallEnergy,
    Device,
    DeviceKind,
    DeviceWindowRecord,
    Method,
    Price,
    PriceCard,
    Share,
    Span,
    Target,
)
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.request_rollup import rollup_store
from infermeter.store.writer import FlushBatch, Store

HOST = "synthetic"
# An hour boundary plus 20 minutes: the data starts and ends inside hours.
T0 = 1_795_000_000.0 - (1_795_000_000.0 % 3600) + 1200.0
WINDOW_S = 60.0
GPU = Device("GPU-synthetic-0", DeviceKind.GPU, "NVIDIA H100 80GB HBM3", memory_total_bytes=80)
CPU = Device("cpu", DeviceKind.CPU, "synthetic CPU x8", cores=8)
A = Target(HOST, 100, 1000.0, labels={"model": "alpha"})
B = Target(HOST, 200, 2000.0, labels={"model": "beta"})
PER_KWH = 0.13 * 1.58 / 3_600_000  # energy cost per joule
CARBON = 475.0 * 1.58 / 3_600_000  # grams per joule
GPU_HOURLY = 3.0


@dataclass(frozen=True, slots=True)
class Synthetic:
    url: str
    t_start: float
    t_end: float
    quiet_hour: float  # start of the hour in which nobody used the GPU


def _price(device: Device, energy_j: float, window_j: float, seconds: float) -> Price:
    capacity = None  # the card knows no rate for the CPU: capacity unpriced
    if device is GPU:
        capacity = GPU_HOURLY * seconds / 3600 * energy_j / window_j
    return Price(energy_j * PER_KWH, capacity, energy_j * CARBON)


def _share(
    t0: float,
    t1: float,
    device: Device,
    bucket: Bucket,
    energy_j: float,
    target: Target | None = None,
    tenant: str | None = None,
    basis: str = "sm-util",
) -> Share:
    """A share of one window: measured on the GPU, estimated on the CPU; the target's model."""
    method = Method.MEASURED if device is GPU else Method.ESTIMATED
    if target is None:
        return Share(t0, t1, device.uid, bucket, method, energy_j, None, None, tenant, basis)
    model = target.labels["model"]
    return Share(t0, t1, device.uid, bucket, method, energy_j, target.key, model, tenant, basis)


def example_card() -> PriceCard:
    pm = make_plugin_manager()
    return card_from_config(build_config(pm.config_options(), environ={}))


def build(
    url: str, hours: int = 5, seed: int = 7, priced: bool = True, window_s: float = WINDOW_S
) -> Synthetic:
    """Write ``hours`` hours of flushes into a migrated store, then roll up.

    Flushes are a minute long unless ``window_s`` says otherwise (longer
    ones keep a store of days quick to build).

    ``priced=False`` stores every cost as unknown (NULL), as with no price card.
    """
    rng = random.Random(seed)
    card = example_card() if priced else None
    engine = open_engine(url)
    migrate.upgrade(engine)
    store = Store(engine, HOST)
    t_end = T0 + hours * 3600
    quiet_hour = T0 - (T0 % 3600) + 2 * 3600  # the third hour touched
    t = T0
    serial = 0
    while t < t_end:
        t1 = t + window_s
        quiet = quiet_hour <= t < quiet_hour + 3600
        shares: list[Share] = []
        calls: list[CallEnergy] = []
        share = partial(_share, t, t1)
        gpu_shares = [share(GPU, Bucket.IDLE, 70.0 * window_s, basis="baseline")]
        if not quiet:
            e_a = rng.uniform(50, 150) * window_s
            e_b = rng.uniform(10, 90) * window_s
            gpu_shares += [
                share(GPU, Bucket.KEEPWARM, 25.0 * window_s, A),
                share(GPU, Bucket.KEEPWARM, 25.0 * window_s, B),
                share(GPU, Bucket.ACTIVE, e_a * 0.6, A, "acme"),
                share(GPU, Bucket.ACTIVE, e_a * 0.4, A, "globex"),
                share(GPU, Bucket.ACTIVE, e_b, B, "acme", "gpu-memory"),
                share(GPU, Bucket.OTHER, 3.0 * window_s, basis="equal"),
            ]
        cpu_active = rng.uniform(5, 20) * window_s
        cpu_shares = [
            share(CPU, Bucket.IDLE, 10.0 * window_s, basis="baseline"),
            share(CPU, Bucket.ACTIVE, cpu_active, B, "globex", "cpu-seconds"),
        ]
        shares = gpu_shares + cpu_shares
        gpu_j = sum(s.energy_j for s in gpu_shares)
        cpu_j = sum(s.energy_j for s in cpu_shares)
        prices = [
            _price(GPU, s.energy_j, gpu_j, window_s) if s.device_uid == GPU.uid
            else _price(CPU, s.energy_j, cpu_j, window_s)
            for s in shares
        ]  # fmt: skip
        if not quiet:
            for _ in range(rng.randint(20, 40)):
                serial += 1
                start = rng.uniform(t, t1 - 1.0)
                tenant = rng.choice(["acme", "acme", "globex"])
                request_id = f"r{serial}" if serial % 4 else None
                models = ["alpha", "beta"] if serial % 5 == 0 else [rng.choice(["alpha", "beta"])]
                for k, model in enumerate(models):
                    target = A if model == "alpha" else B
                    energy = rng.lognormvariate(1.0, 1.0)
                    span = Span(
                        pid=target.pid,
                        model=model,
                        t0=start + k * 0.01,
                        t1=start + k * 0.01 + 0.005,
                        items=rng.choice([1, 2, 8]),
                        tokens_in=rng.randint(10, 100) if model == "alpha" else None,
                        request_id=request_id,
                        tenant=tenant,
                    )
                    calls.append(CallEnergy(span, target.key, energy, Method.MEASURED))
        # Every seventh call of beta has no capacity price: those requests are unpriced.
        call_prices = [
            Price(
                c.energy_j * PER_KWH,
                None if c.target == B.key and i % 7 == 0 else c.energy_j * 1e-5,
                c.energy_j * CARBON,
            )
            for i, c in enumerate(calls)
        ]
        gpu_busy = 0.02 if quiet else rng.uniform(0.3, 0.9)
        windows = [
            DeviceWindowRecord(GPU.uid, t, t1, gpu_j, Method.MEASURED, gpu_busy, None),
            DeviceWindowRecord(
                CPU.uid, t, t1, cpu_j, Method.ESTIMATED, rng.uniform(0.05, 0.2), None
            ),
        ]
        store.write_flush(
            FlushBatch(
                shares=shares,
                devices=[GPU, CPU],
                targets=[A, B],
                now=t1,
                calls=calls,
                windows=windows,
                card=card,
                share_prices=prices if priced else [],
                call_prices=call_prices if priced else [],
            )
        )
        t = t1
    rollup_store(store, 0.0, t_end)
    store.close()
    engine.dispose()
    return Synthetic(url, T0, t_end, quiet_hour)
