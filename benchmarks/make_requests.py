"""Fill a SQLite store with millions of requests, as a busy host would, for bench_report.

One host, two H100s and a CPU, four models (one process each), three
tenants. The requests (10 million by default, as the report counts them)
are spread evenly over the last ``--days`` days up to now; one request in
nine is two calls across two models, so the store holds 10/9 as many
calls (rows of the ``requests`` table) as requests. The shares (one
flush every 10 s: idle, keep-warm, active per model and tenant, other)
and the device windows cover the same days, priced like the example
card. Rows go in with ``INSERT ... SELECT`` over a recursive CTE, a
million per transaction, so nothing passes through Python row by row.
Then the agent's own rollup code builds usage_hourly and the report
rollups and marks them final up to 30 s ago, as a running agent would.

Run:  python benchmarks/make_requests.py [--requests 10000000] [--days 7]
      [--db /tmp/infermeter-bench.db]
Then: python benchmarks/bench_report.py --db /tmp/infermeter-bench.db
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.request_rollup import rollup_store
from infermeter.store.writer import Store

HOST = "bench-host"
FLUSH_S = 10.0
MODELS = ("llama-8b", "resnet50", "whisper-small", "bge-embed")
TENANTS = ("acme", "globex", "initech")
J_TO_USD = 0.13 * 1.58 / 3.6e6  # energy cost per joule, example card
J_TO_G = 475.0 * 1.58 / 3.6e6  # carbon per joule
CHUNK = 1_000_000


def setup(db: Path, now: float) -> None:
    if db.exists():
        db.unlink()
    engine = open_engine(f"sqlite:///{db}")
    migrate.upgrade(engine)
    engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO hosts (id, name, first_seen, last_seen) VALUES (1, ?, ?, ?)",
            (HOST, now, now),
        )
        devices = [
            (1, "GPU-bench-0", "gpu", "NVIDIA H100 80GB HBM3", 0, None),
            (2, "GPU-bench-1", "gpu", "NVIDIA H100 80GB HBM3", 1, None),
            (3, "cpu", "cpu", "bench CPU x32", 0, 32),
        ]
        conn.executemany(
            'INSERT INTO devices (id, host_id, uid, kind, name, "index", cores, first_seen,'
            " last_seen) VALUES (?, 1, ?, ?, ?, ?, ?, 0, 0)",
            devices,
        )
        for i, model in enumerate(MODELS, 1):
            conn.execute(
                "INSERT INTO models (id, name, framework, first_seen) VALUES (?, ?, 'torch', 0)",
                (i, model),
            )
            conn.execute(
                "INSERT INTO targets (id, host_id, pid, start_time, framework, cmdline, labels,"
                " how_found, first_seen, last_seen)"
                " VALUES (?, 1, ?, 0, 'torch', '', ?, 'runtime', 0, 0)",
                (i, 1000 + i, f'{{"model": "{model}"}}'),
            )
        conn.execute(
            "INSERT INTO price_cards (id, version, currency, body, created_at)"
            " VALUES (1, 'bench', 'USD', '{}', 0)"
        )


def fill_requests(conn: sqlite3.Connection, n: int, start: float, step: float) -> None:
    """Call i at start + i*step, model i % 4; calls 2k, 2k+1 are one request when k % 5 == 0.

    Both calls of a request carry its tenant.
    """
    tenant = "CASE (i / 2) % 3 WHEN 0 THEN 'acme' WHEN 1 THEN 'globex' ELSE 'initech' END"
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        conn.execute(
            f"""
            WITH RECURSIVE seq(i) AS (
                SELECT {lo} UNION ALL SELECT i + 1 FROM seq WHERE i < {hi - 1}
            ),
            calls AS (
                SELECT i, (i % 4) + 1 AS m, (abs(random()) % 1000000) / 100000.0 + 0.01 AS e
                FROM seq
            )
            INSERT INTO requests (target_id, model_id, request_id, t0, t1, items, tokens_in,
                tokens_out, tenant, tags, energy_j, method, energy_cost, capacity_cost, carbon_g,
                price_card_id)
            SELECT m, m, CASE WHEN (i / 2) % 5 = 0 THEN 'r' || (i / 2) END,
                {start} + i * {step}, {start} + i * {step} + 0.02, 1 + abs(random()) % 8,
                CASE WHEN m = 1 THEN 50 + abs(random()) % 500 END,
                CASE WHEN m = 1 THEN 20 + abs(random()) % 200 END,
                {tenant}, '{{}}', e, 'measured', e * {J_TO_USD}, e * 2.0e-5, e * {J_TO_G}, 1
            FROM calls
            """
        )
        conn.commit()
        print(f"  calls {hi:,}/{n:,}", flush=True)


def fill_shares(conn: sqlite3.Connection, start: float, end: float) -> None:
    """Per flush window and device: idle, keep-warm, active per model and tenant, other."""
    windows = int((end - start) // FLUSH_S)
    rows = """
        SELECT 1 AS d, NULL AS tg, NULL AS mo, NULL AS te, 'idle' AS b, 'baseline' AS wb, 70.0 AS w
        UNION ALL SELECT 1, 1, 1, NULL, 'keepwarm', 'sm-util', 25.0
        UNION ALL SELECT 1, 2, 2, NULL, 'keepwarm', 'sm-util', 25.0
        UNION ALL SELECT 1, 1, 1, 'acme', 'active', 'sm-util', 150.0
        UNION ALL SELECT 1, 1, 1, 'globex', 'active', 'sm-util', 90.0
        UNION ALL SELECT 1, 1, 1, 'initech', 'active', 'sm-util', 40.0
        UNION ALL SELECT 1, 2, 2, 'acme', 'active', 'sm-util', 60.0
        UNION ALL SELECT 1, 2, 2, 'globex', 'active', 'sm-util', 30.0
        UNION ALL SELECT 1, NULL, NULL, NULL, 'other', 'sm-util', 5.0
        UNION ALL SELECT 2, NULL, NULL, NULL, 'idle', 'baseline', 70.0
        UNION ALL SELECT 2, 3, 3, NULL, 'keepwarm', 'sm-util', 48.0
        UNION ALL SELECT 2, 3, 3, 'acme', 'active', 'gpu-memory', 80.0
        UNION ALL SELECT 2, 3, 3, 'initech', 'active', 'gpu-memory', 20.0
        UNION ALL SELECT 3, NULL, NULL, NULL, 'idle', 'baseline', 40.0
        UNION ALL SELECT 3, 4, 4, 'acme', 'active', 'cpu-seconds', 30.0
        UNION ALL SELECT 3, 4, 4, 'globex', 'active', 'cpu-seconds', 20.0
        UNION ALL SELECT 3, 4, 4, 'initech', 'active', 'cpu-seconds', 10.0
    """
    per_window = CHUNK // 20
    for lo in range(0, windows, per_window):
        hi = min(windows, lo + per_window)
        conn.execute(
            f"""
            WITH RECURSIVE seq(k) AS (
                SELECT {lo} UNION ALL SELECT k + 1 FROM seq WHERE k < {hi - 1}
            ),
            kinds AS ({rows}),
            shares AS (
                SELECT k, d, tg, mo, te, b, wb,
                    w * {FLUSH_S} * (0.8 + (abs(random()) % 400) / 1000.0) AS j
                FROM seq, kinds
            )
            INSERT INTO usage_shares (host_id, device_id, t0, t1, target_id, model_id, tenant,
                bucket, method, weight_basis, energy_j, energy_cost, capacity_cost, carbon_g,
                price_card_id)
            SELECT 1, d, {start} + k * {FLUSH_S}, {start} + (k + 1) * {FLUSH_S}, tg, mo, te, b,
                CASE WHEN d = 3 THEN 'estimated' ELSE 'measured' END, wb, j, j * {J_TO_USD},
                3.0 * {FLUSH_S} / 3600 * j / ({FLUSH_S} * 450.0), j * {J_TO_G}, 1
            FROM shares
            """
        )
        conn.execute(
            f"""
            WITH RECURSIVE seq(k) AS (
                SELECT {lo} UNION ALL SELECT k + 1 FROM seq WHERE k < {hi - 1}
            )
            INSERT INTO device_windows (host_id, device_id, t0, t1, energy_j, method, busy_fraction,
                memory_used_bytes)
            SELECT 1, d.id, {start} + k * {FLUSH_S}, {start} + (k + 1) * {FLUSH_S}, 4000.0,
                'measured', (abs(random()) % 1000) / 1000.0, 40000000000
            FROM seq, devices d
            """
        )
        conn.commit()
        print(f"  share windows {hi:,}/{windows:,}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("/tmp/infermeter-bench.db"))
    ap.add_argument("--requests", type=int, default=10_000_000, help="requests (not calls)")
    ap.add_argument("--days", type=float, default=7.0)
    args = ap.parse_args()
    now = time.time()
    end = now - 5.0
    start = end - args.days * 86400
    began = time.perf_counter()
    setup(args.db, now)
    with sqlite3.connect(args.db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        # Of every 10 calls, 2 make one request: 9 requests.
        calls = -(-args.requests * 10 // 9)
        fill_requests(conn, calls, start, (end - start) / calls)
        fill_shares(conn, start, end)
    print(f"inserted in {time.perf_counter() - began:.0f} s; rolling up", flush=True)
    engine = open_engine(f"sqlite:///{args.db}")
    store = Store(engine, HOST)
    t = time.perf_counter()
    # First run: every hour, final up to 30 s ago, as the agent's would be.
    rollup_store(store, 0.0, now - 30.0)
    store.set_state("rollup_until", now - 30.0)
    print(f"rolled up in {time.perf_counter() - t:.0f} s", flush=True)
    with engine.connect() as conn:
        for table in (
            "requests",
            "usage_shares",
            "device_windows",
            "usage_hourly",
            "request_hourly",
        ):
            n = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            print(f"  {table}: {n:,} rows")
    engine.dispose()
    size = args.db.stat().st_size / 2**30
    print(f"{args.db}: {size:.1f} GiB, {time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
