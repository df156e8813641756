"""What the agent's periodic jobs and ``top`` cost on a busy store.

Run on the store benchmarks/make_requests.py made (10 million requests, a
call every 60 ms for 7 days). Prints, in seconds of this machine:

- one ``top`` refresh (``live.snapshot``), best of ``--repeat``;
- the rollup job as the agent runs it every ``agent.rollup_s``: the last
  hour recomputed up to where rows are final (idempotent: it rewrites the
  same rollup rows);
- the recommend job's statistics over one hour and over the configured
  window (``recommend.window_s``, a day by default), which read every
  stored call of the window once.

Run:  python benchmarks/bench_jobs.py [--db /tmp/infermeter-bench.db] [--host bench-host]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_from_config
from infermeter.recommend import run as recommend
from infermeter.report.top import open_readonly, snapshot
from infermeter.store.engine import open_engine
from infermeter.store.request_rollup import COMPLETE_KEY, rollup_store
from infermeter.store.writer import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("/tmp/infermeter-bench.db"))
    ap.add_argument("--host", default="bench-host")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    url = f"sqlite:///{args.db}"

    reader = open_readonly(url)
    snapshot(reader)  # a warm page cache, as a running top has
    best = min(_timed(lambda: snapshot(reader)) for _ in range(args.repeat))
    reader.dispose()
    print(f"top refresh (live.snapshot), best of {args.repeat}: {best * 1000:.1f} ms")

    engine = open_engine(url)
    store = Store(engine, args.host)
    done = store.get_state(COMPLETE_KEY)
    if done is None:
        raise SystemExit(f"{args.db} has no rollups: make it with benchmarks/make_requests.py")
    until = float(done)
    seconds = _timed(lambda: rollup_store(store, until - 3600 - 300, until))
    print(f"rollup job (the last hour, final point unchanged): {seconds:.2f} s")

    pm = make_plugin_manager()
    newest = recommend.newest_time(engine, args.host)
    assert newest is not None
    for window in (3600.0, None):
        overrides = {}
        if window is not None:
            overrides = {"recommend": {"window_s": window, "profile_s": window}}
        config = build_config(pm.config_options(), overrides, environ={})
        card = card_from_config(config)
        span = float(config["recommend.window_s"])
        seconds = _timed(
            lambda config=config, card=card: recommend.statistics(
                engine, args.host, config, card, newest
            )
        )
        print(f"recommend statistics over {span / 3600:g} h of calls: {seconds:.1f} s")
    store.close()
    engine.dispose()


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
