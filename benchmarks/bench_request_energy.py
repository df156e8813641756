"""Per-request energy against batch size on h100-serving, and the curve the agent fitted.

Replays the recording (three servers, every request, the H100's counter)
through the real agent into a SQLite store at the default tick, then prints
for each model: the mean stored J per request at each batch size, the
learned J(call) = J/call + J/item x batch on each device kind, and the
fitted curve at the same batch sizes, with the fit's R2. Also what the
requests carry of their process's active energy (the rest is overhead).

Run:  python benchmarks/bench_request_energy.py [--trace tests/fixtures/h100-serving]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.sidecar.replay import replay
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=ROOT / "tests/fixtures/h100-serving")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        pm = make_plugin_manager()
        config = build_config(pm.config_options(), {}, environ={})
        engine = open_engine(f"sqlite:///{db}")
        migrate.upgrade(engine)
        store = Store(engine, args.trace.name)
        replay(args.trace, config, pm, store)
        models = {(m.model, m.device_kind): m for m in store.energy_models()}
        store.close()
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT m.name, r.items, count(*), avg(r.energy_j) FROM requests r "
                "JOIN models m ON m.id = r.model_id GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            carried = conn.execute(
                "SELECT m.name, (SELECT sum(energy_j) FROM requests r WHERE r.model_id = m.id), "
                "(SELECT sum(energy_j) FROM usage_shares s WHERE s.model_id = m.id "
                "AND s.bucket = 'active') FROM models m ORDER BY 1"
            ).fetchall()
    by_model: dict[str, list[tuple[int, int, float]]] = {}
    for name, items, n, mean in rows:
        by_model.setdefault(name, []).append((items, n, mean))
    for name, points in by_model.items():
        print(f"\n{name}")
        fits = {kind: m for (model, kind), m in models.items() if model == name}
        print("  batch  requests  stored J/request  " + "  ".join(f"fit {k:>11}" for k in fits))
        for items, n, mean in points:
            fitted = "  ".join(
                f"{m.j_per_call + items * m.j_per_item:15.4f}" for m in fits.values()
            )
            print(f"  {items:5d}  {n:8d}  {mean:16.4f}  {fitted}")
        for kind, m in fits.items():
            r2 = "-" if m.r2 is None else f"{m.r2:.3f}"
            print(
                f"  {kind}: J(call) = {m.j_per_call:.4f} + {m.j_per_item:.4f} x batch "
                f"({m.windows} intervals, R2 of the fit {r2})"
            )
    print()
    for name, requests_j, active_j in carried:
        if requests_j and active_j:
            print(f"{name}: requests carry {requests_j / active_j:.1%} of its active energy")


if __name__ == "__main__":
    main()
