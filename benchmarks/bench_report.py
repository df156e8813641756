"""How long ``infermeter report`` takes over a store of millions of requests.

Fill the store first with benchmarks/make_requests.py (10 million requests
over 7 days by default). This times, for each grouping and both idle modes:

- ``build_report`` in this process (the SQL and the assembly; the number
  the "under 1 s" goal is about), first call and best of ``--repeat``;
- rendering it as 80-column tables;
- the whole command as a user runs it (a new ``infermeter`` process:
  interpreter start, imports, plugins and config, the query, the output),
  beside ``infermeter --help`` for what the CLI costs before any query.

``--raw`` also times the report with the rollups ignored (every raw row
read), to show what the rollups save.

Run:  python benchmarks/bench_report.py [--db /tmp/infermeter-bench.db] [--since 8d]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from infermeter.cli._time import parse_duration
from infermeter.cli.report import render, time_range
from infermeter.report.build import GROUPINGS, Report, build_report
from infermeter.store.engine import open_engine


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """(first call s, best of ``repeat`` s, last result)."""
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times[0], min(times), result


def cli_seconds(args: list[str], repeat: int) -> float:
    script = Path(sys.executable).with_name("infermeter")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([str(script), *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("/tmp/infermeter-bench.db"))
    ap.add_argument("--since", default="8d", help="range, back from now (default 8d: all of it)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--raw", action="store_true", help="also time the report without rollups")
    args = ap.parse_args()
    url = f"sqlite:///{args.db}"
    now = time.time()
    start, _end = time_range(parse_duration(args.since), None, None, now)  # as --since reads
    engine = open_engine(url)
    print(f"store {args.db} ({args.db.stat().st_size / 2**30:.1f} GiB), range --since {args.since}")
    print(f"{'by':8} {'share-idle':10} {'first s':>8} {'best s':>8} {'render s':>9}  read")
    worst = 0.0
    report: Report | None = None
    for by in GROUPINGS:
        for share_idle in (False, True):
            first, best, result = timed(
                lambda by=by, share_idle=share_idle: build_report(
                    engine, start, now, by, share_idle
                ),
                args.repeat,
            )
            assert isinstance(result, Report)
            report = result
            buf = io.StringIO()
            t = time.perf_counter()
            Console(width=80, file=buf).print(render(report))
            rendered = time.perf_counter() - t
            worst = max(worst, first + rendered)
            raw_s = sum(hi - lo for lo, hi in report.raw_ranges)
            print(
                f"{by:8} {share_idle!s:10} {first:8.3f} {best:8.3f} {rendered:9.3f}  "
                f"{report.rollup_hours} rolled-up host-hours ({report.rollup_days} days of "
                f"requests per day), {raw_s / 60:.0f} min of raw rows"
            )
    assert report is not None
    print(
        f"requests covered: {report.total_requests.requests:,} "
        f"({report.total_requests.calls:,} calls); worst first report + render: {worst:.3f} s"
    )
    if args.raw:
        first, _best, raw = timed(lambda: build_report(engine, start, now, use_rollups=False), 1)
        assert isinstance(raw, Report)
        print(f"without rollups (every raw row): {first:.2f} s")
    engine.dispose()
    help_s = cli_seconds(["--help"], args.repeat)
    text_s = cli_seconds(["--db", url, "report", "--since", args.since], args.repeat)
    json_s = cli_seconds(["--db", url, "report", "--since", args.since, "--json"], args.repeat)
    print(
        f"whole command, median of {args.repeat}: infermeter --help {help_s:.2f} s; "
        f"report {text_s:.2f} s; report --json {json_s:.2f} s"
    )


if __name__ == "__main__":
    main()
