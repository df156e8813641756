"""What the agent costs: CPU per tick and resident memory, one GPU and 50 targets.

The GPU is the H100 of tests/fixtures/h100-serving, replayed through the real
NVML meter code (the stand-in answers from the recording, mapped onto this
run's clock); the 50 targets are real processes on this machine, found by a
discovery rule and charged by the live CPU meter; every tenth tick flushes
to a real SQLite store. The agent ticks once a second, as it does by
default, and the CPU time of the whole process (all threads) is measured.

Run:  python benchmarks/bench_tick.py [--ticks 60] [--targets 50]
For scale (the issue's figures): CodeCarbon 3.3.2 in process mode at a 1 s
interval, tracking nothing, costs 0.67% of one core and 80 MB here.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from infermeter.config import build_config
from infermeter.hookspecs import Meter
from infermeter.plugin_manager import make_plugin_manager
from infermeter.plugins.nvml.replay import NvmlStandIn, ReplayNvmlMeter
from infermeter.records import Reading, Target
from infermeter.sidecar.agent import Agent
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

TRACE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "h100-serving"
MARK = "infermeter-bench-target"


class OnThisClock:
    """The replayed GPU, read on this run's clock: trace time = start + elapsed."""

    name = "nvml"

    def __init__(self, meter: ReplayNvmlMeter, trace_start: float) -> None:
        self.meter = meter
        self.offset = trace_start - time.time()

    def read(self, now: float, targets: Mapping[int, Target]) -> Sequence[Reading]:
        return self.meter.read(now + self.offset, targets)

    def close(self) -> None:
        self.meter.close()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--profile", type=int, default=0, help="profile N ticks instead")
    ap.add_argument(
        "--settle",
        type=float,
        default=65.0,
        help="seconds to tick before measuring: discovery re-asks processes "
        "younger than a minute, which a long-running agent rarely meets",
    )
    args = ap.parse_args()

    # Idle Python processes named by the mark (a rule makes them targets).
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", MARK])
        for _ in range(args.targets)
    ]
    try:
        pm = make_plugin_manager()
        config = build_config(
            pm.config_options(),
            {"discovery": {"rules": [{"cmdline": MARK, "labels": {"model": "bench"}}]}},
            environ={},
        )
        rss_before_trace = psutil.Process().memory_info().rss
        standin = NvmlStandIn.from_trace(TRACE)
        trace_mb = (psutil.Process().memory_info().rss - rss_before_trace) / 2**20
        gpu: Meter = OnThisClock(ReplayNvmlMeter(standin), standin.start_t + 5.0)
        cpu = [
            m for m in pm.collect("infermeter_meters", config=config) if m.name == "cpu_estimate"
        ]
        db = Path(tempfile.mkdtemp()) / "bench.db"
        # Migrate in another process, as `infermeter db upgrade` or an earlier
        # run would: an agent on an up-to-date store never loads Alembic
        # (~11 MB), and that steady state is what this measures.
        subprocess.run(
            [sys.executable, "-m", "infermeter", "--db", f"sqlite:///{db}", "db", "upgrade"],
            check=True,
            capture_output=True,
        )
        engine = open_engine(f"sqlite:///{db}")
        assert not migrate.needs_upgrade(engine)
        agent = Agent(config, pm, Store(engine, "bench"), meters=[gpu, *cpu], span_sources=[])
        agent.start()
        agent.tick()
        agent.flush(final=True)
        settle_end = time.monotonic() + args.settle
        while time.monotonic() < settle_end:
            time.sleep(1.0)
            agent.tick()
        agent.flush(final=True)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.profile):
                agent.tick()
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            return

        per_tick_ms: list[float] = []
        rss_start = psutil.Process().memory_info().rss
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        next_tick = time.monotonic() + 1.0
        for i in range(1, args.ticks + 1):
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += 1.0
            t = time.thread_time()
            agent.tick()
            if i % 10 == 0:
                agent.flush()
            per_tick_ms.append((time.thread_time() - t) * 1000)
        cpu_used, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        rss = psutil.Process().memory_info().rss
        targets = len(agent.discovery.targets)
    finally:
        for c in children:
            c.kill()
            c.wait()

    per_tick_ms.sort()
    print(f"targets discovered       {targets} (asked for {args.targets})")
    print(f"meters                   {', '.join(m.name for m in agent.meters)}")
    print(f"ticks                    {args.ticks} at 1 s, a flush every 10")
    print(f"tick CPU, median         {statistics.median(per_tick_ms):.2f} ms")
    print(f"tick CPU, p99            {per_tick_ms[int(0.99 * (len(per_tick_ms) - 1))]:.2f} ms")
    print(f"process CPU, all threads {100 * cpu_used / wall:.3f} % of one core")
    print(
        f"resident memory          {rss / 2**20:.1f} MB (at start of ticks "
        f"{rss_start / 2**20:.1f} MB)"
    )
    print(
        f"  of which the recording  {trace_mb:.1f} MB (held by the NVML stand-in; a live "
        f"agent has none)"
    )
    print(f"  agent alone            {rss / 2**20 - trace_mb:.1f} MB")
    print("goal: under 0.3 % of one core and 60 MB", file=sys.stderr)


if __name__ == "__main__":
    main()
