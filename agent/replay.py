"""Running the whole agent over a recorded trace, on the trace's own clock.

The plugins hand over meters that answer from the recording through the same
code that reads the hardware, and the processes the trace saw. The agent then
ticks and flushes exactly as it does live, only without waiting between
ticks. ``processes.jsonl``, written by ``infermeter record``, is the core's own
record of what discovery saw; plugins add what their own files name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from infermeter.config import Config
from infermeter.errors import InfermeterError
from infermeter.loop import Agent
from infermeter.plugin_manager import PluginManager
from infermeter.records import Framework, Share, Span, Target
from infermeter.store.writer import Store

log = logging.getLogger(__name__)

PROCESSES_FILE = "processes.jsonl"
META_FILE = "meta.json"
WORKLOAD_FILE = "workload.json"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    host: str
    t_start: float
    t_end: float
    ticks: int
    shares_written: int
    spans: int
    meters: tuple[str, ...]
    targets: tuple[Target, ...]


def trace_host(trace_dir: Path) -> str:
    """The host a trace was recorded on: meta.json's, else the folder's name."""
    meta = trace_dir / META_FILE
    if meta.is_file():
        try:
            host = json.loads(meta.read_text()).get("host")
        except (ValueError, AttributeError):
            host = None
        if isinstance(host, str) and host:
            return host
    return trace_dir.resolve().name


def recorded_targets(trace_dir: Path, host: str) -> list[Target]:
    path = trace_dir / PROCESSES_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        out.append(
            Target(
                host=host,
                pid=int(rec["pid"]),
                start_time=float(rec["start_time"]),
                framework=Framework(rec.get("framework", "unknown")),
                cmdline=tuple(rec.get("cmdline", ())),
                labels=dict(rec.get("labels", {})),
                how_found=str(rec.get("how_found", "runtime")),
            )
        )
    return out


def recorded_spans(trace_dir: Path) -> list[Span]:
    """Every span a trace recorded: per-request spans, then the workload's phases."""
    spans = [*request_spans(trace_dir), *workload_spans(trace_dir)]
    spans.sort(key=lambda s: s.t0)
    return spans


def request_spans(trace_dir: Path) -> list[Span]:
    """Every request of ``spans_*.jsonl``: a header line, then [i, due, start, end, items]."""
    spans: list[Span] = []
    for path in sorted(trace_dir.glob("spans_*.jsonl")):
        lines = path.read_text().splitlines()
        if not lines:
            continue
        header = json.loads(lines[0])
        pid, model = int(header["pid"]), str(header["model"])
        framework = header.get("runtime")
        dtype = header.get("dtype")
        for line in lines[1:]:
            if not line.strip():
                continue
            _index, _due, start, end, items = json.loads(line)
            spans.append(
                Span(
                    pid=pid,
                    model=model,
                    t0=float(start),
                    t1=float(end),
                    items=int(items),
                    framework=framework,
                    dtype=dtype,
                )
            )
    return spans


def workload_spans(trace_dir: Path) -> list[Span]:
    """One span per phase of ``workload.json``: the workload's own record of its calls.

    The benchmark that made the trace wrote, per phase, its process, model,
    dtype, batch size, the exact window, how many synchronous calls it made
    back to back and their latency percentiles, but not each call. One span
    covering the window with all the phase's items is therefore coarser than
    per-call spans: the energy of the window goes to the phase as a whole
    (no overhead between calls), and what a call looks like is in the tags:
    ``calls`` and ``batch`` (so a reader can recover the calls' batch-size
    histogram), ``p50_ms``/``p99_ms`` (the recorded latency of one call), and
    ``dtype``, because one process ran one model name at two precisions and
    the store keeps one dtype per model name. Phases without a process (the
    idle one) or without calls are not spans.
    """
    path = trace_dir / WORKLOAD_FILE
    if not path.is_file():
        return []
    spans: list[Span] = []
    for phase in json.loads(path.read_text()):
        if phase.get("pid") is None or not phase.get("model") or not phase.get("calls"):
            continue
        tags = {"calls": str(int(phase["calls"])), "batch": str(int(phase["bs"]))}
        if phase.get("dtype"):
            tags["dtype"] = str(phase["dtype"])
        for key, tag in (("lat_p50_ms", "p50_ms"), ("lat_p99_ms", "p99_ms")):
            if phase.get(key) is not None:
                tags[tag] = repr(float(phase[key]))
        spans.append(
            Span(
                pid=int(phase["pid"]),
                model=str(phase["model"]),
                t0=float(phase["t0"]),
                t1=float(phase["t1"]),
                items=int(phase["items"]),
                tags=tags,
                dtype=str(phase["dtype"]) if phase.get("dtype") else None,
            )
        )
    return spans


def replay_targets(trace_dir: Path, config: Config, pm: PluginManager, host: str) -> list[Target]:
    by_pid: dict[int, Target] = {}
    plugin_targets = pm.collect("infermeter_replay_targets", trace_dir=trace_dir, config=config)
    for target in [*recorded_targets(trace_dir, host), *plugin_targets]:
        if target.pid not in by_pid:
            by_pid[target.pid] = replace(target, host=host)
        else:  # a later source may know labels the first did not
            first = by_pid[target.pid]
            labels = {**target.labels, **first.labels}
            framework = first.framework
            if framework is Framework.UNKNOWN:
                framework = target.framework
            by_pid[target.pid] = replace(first, labels=labels, framework=framework)
    return list(by_pid.values())


def targets_at(targets: Sequence[Target]) -> Callable[[float], Mapping[int, Target]]:
    """A target exists from its start time on (for a trace: when first seen)."""
    ordered = sorted(targets, key=lambda t: t.start_time)

    def current(now: float) -> Mapping[int, Target]:
        return {t.pid: t for t in ordered if t.start_time <= now}

    return current


def replay(
    trace_dir: Path,
    config: Config,
    pm: PluginManager,
    store: Store | None,
    progress: Callable[[float], None] | None = None,
    observe: Callable[[Agent, list[Share]], None] | None = None,
) -> ReplayResult:
    """Replay a trace into ``store``; ``observe`` sees the agent and each tick's shares."""
    if not trace_dir.is_dir():
        raise InfermeterError(f"trace folder {trace_dir} does not exist")
    meters = pm.collect("infermeter_replay_meters", trace_dir=trace_dir, config=config)
    windows = pm.collect("infermeter_replay_window", flatten=False, trace_dir=trace_dir)
    if not meters or not windows:
        raise InfermeterError(f"{trace_dir}: no plugin recognises any file in it")
    t_start = min(float(w[0]) for w in windows)
    t_end = max(float(w[1]) for w in windows)
    host = store.host if store is not None else trace_host(trace_dir)
    targets = replay_targets(trace_dir, config, pm, host)
    # The trace's spans are fed below; a replay never listens on the live socket.
    agent = Agent(config, pm, store, meters=meters, targets=targets_at(targets), span_sources=[])
    agent.start()
    spans = recorded_spans(trace_dir)
    next_span = 0

    def deliver_spans(now: float) -> None:
        # A trace knows every span in advance: each reaches the agent when it
        # starts, so even a span longer than the span lag (a workload phase)
        # is there when its first interval is attributed. Live, spans arrive
        # when they end and the lag covers the short ones.
        nonlocal next_span
        start = next_span
        while next_span < len(spans) and spans[next_span].t0 <= now:
            next_span += 1
        if next_span > start:
            agent.add_spans(spans[start:next_span], now)

    tick_s = float(config["agent.tick_s"])
    flush_every = max(1, round(float(config["agent.flush_s"]) / tick_s))
    written = 0
    now = t_start
    agent.tick(now)  # sets every meter's baseline
    while now < t_end:
        now = min(now + tick_s, t_end)
        deliver_spans(now)
        shares = agent.tick(now)
        if observe is not None:
            observe(agent, shares)
        if agent.ticks % flush_every == 0:
            written += agent.flush(now)
        if progress is not None:
            progress((now - t_start) / max(t_end - t_start, 1e-9))
    written += agent.flush(now, final=True)
    agent.rollup(now, final=True)
    agent.close()
    return ReplayResult(
        host=host,
        t_start=t_start,
        t_end=t_end,
        ticks=agent.ticks,
        shares_written=written,
        spans=len(spans),
        meters=tuple(m.name for m in meters),
        targets=tuple(targets),
    )
