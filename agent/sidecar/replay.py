"""Running the whole agent over a recorded trace, on the trace's own clock.

The plugins hand over meters that answer from the recording through the same
code that reads the hardware, and the processes the trace saw. The agent then
ticks and flushes exactly as it does live, only without waiting between
ticks. ``processes.jsonl``, written by ``infermeter record``, is the core's own
record of what discovery saw; plugins add what their own files name.

A trace is checked whole before anything is written: the core's own files
(meta.json, processes.jsonl, spans_*.jsonl, workload.json) here, each
plugin's through ``infermeter_replay_check``. Any problem refuses the trace
with one line naming the file and the line (``TraceError``); with
``partial`` the readable rows are replayed and each problem is a gap, kept
in the store's ``quarantine`` table (source ``trace``) and in the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infermeter.config import Config
from infermeter.discover.redact import patterns_for, redact_cmdline
from infermeter.errors import InfermeterError
from infermeter.plugin_manager import PluginManager
from infermeter.records import Framework, Share, Span, Target
from infermeter.sidecar.agent import Agent
from infermeter.sidecar.trace_check import (
    BadValue,
    TraceError,
    TraceProblem,
    first,
    json_value,
    key_line,
    load_document,
    mapping,
    number,
    read_lines,
    sequence,
    show,
    text,
    whole,
)
from infermeter.store.writer import Store

log = logging.getLogger(__name__)

PROCESSES_FILE = "processes.jsonl"
META_FILE = "meta.json"
WORKLOAD_FILE = "workload.json"
QUARANTINE_SOURCE = "trace"


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
    gaps: tuple[TraceProblem, ...] = ()  # what a partial replay left out


# -- the core's files, each line checked -------------------------------------------


def load_meta(trace_dir: Path) -> tuple[dict[str, Any], list[TraceProblem]]:
    """meta.json ({} when absent or unreadable), and its problems."""
    path = trace_dir / META_FILE
    data, problems = load_document(path, absent={})
    if problems:
        return {}, problems
    key = "host"
    try:
        meta = mapping(data, META_FILE)
        if meta.get("host") is not None:
            text(meta["host"], "host")
        key = "started"
        started = None if meta.get(key) is None else number(meta[key], key, 0)
        key = "ended"
        ended = None if meta.get(key) is None else number(meta[key], key, 0)
        if started is not None and ended is not None and ended < started:
            raise BadValue(f"time goes backwards (ended {ended!r} before started {started!r})")
        key = "idle_window"
        if meta.get(key) is not None:
            a, b = (number(v, key, 0) for v in sequence(meta[key], key, 2))
            if b < a:
                raise BadValue(f"idle_window: time goes backwards ({b!r} before {a!r})")
    except BadValue as e:
        return {}, [TraceProblem(path, key_line(path, key), str(e), whole_file=True)]
    return meta, []


def trace_host(trace_dir: Path) -> str:
    """The host a trace was recorded on: meta.json's, else the folder's name."""
    host = load_meta(trace_dir)[0].get("host")
    if isinstance(host, str) and host:
        return host
    return trace_dir.resolve().name


def _target_line(_number: int, line: str) -> tuple[None, dict[str, Any]]:
    rec = mapping(json_value(line), "line")
    whole(rec["pid"], "pid")
    number(rec["start_time"], "start_time", 0)
    framework = text(rec.get("framework", "unknown"), "framework")
    if framework not in {str(f) for f in Framework}:
        raise BadValue(f"framework: {show(framework)} is not one infermeter knows")
    for i, arg in enumerate(sequence(rec.get("cmdline", []), "cmdline")):
        text(arg, f"cmdline[{i}]", empty=True)
    for k, v in mapping(rec.get("labels", {}), "labels").items():
        text(v, f"labels[{show(k)}]", empty=True)
    text(rec.get("how_found", "runtime"), "how_found")
    return None, rec  # start times are not in order: a process seen later may be older


def load_processes(trace_dir: Path) -> tuple[list[dict[str, Any]], list[TraceProblem]]:
    """processes.jsonl's readable records ([] when absent), and its problems."""
    return read_lines(trace_dir / PROCESSES_FILE, _target_line, optional=True)


def recorded_targets(trace_dir: Path, host: str) -> list[Target]:
    return [
        Target(
            host=host,
            pid=int(rec["pid"]),
            start_time=float(rec["start_time"]),
            framework=Framework(rec.get("framework", "unknown")),
            cmdline=tuple(rec.get("cmdline", ())),
            labels=dict(rec.get("labels", {})),
            how_found=str(rec.get("how_found", "runtime")),
        )
        for rec in load_processes(trace_dir)[0]
    ]


def recorded_spans(trace_dir: Path) -> list[Span]:
    """Every span a trace recorded: per-request spans, then the workload's phases."""
    spans = [*request_spans(trace_dir), *workload_spans(trace_dir)]
    spans.sort(key=lambda s: s.t0)
    return spans


def _spans_header(line: str) -> dict[str, Any]:
    header = mapping(json_value(line), "header")
    whole(header.get("pid"), "header pid")
    text(header.get("model"), "header model")
    for key in ("runtime", "dtype"):
        if header.get(key) is not None:
            text(header[key], f"header {key}")
    if header.get("t0") is not None:
        number(header["t0"], "header t0", 0)
    return header


def _request_line(_number: int, line: str) -> tuple[float, tuple[float, float, int]]:
    row = sequence(json_value(line), "request", 5)
    whole(row[0], "index")
    number(row[1], "due", 0)
    start = number(row[2], "start", 0)
    end = number(row[3], "end", 0)
    if end < start:
        raise BadValue(f"time goes backwards (end {end!r} before start {start!r})")
    return start, (start, end, whole(row[4], "items"))


def load_request_spans(path: Path) -> tuple[list[Span], list[TraceProblem]]:
    """One spans_*.jsonl: a header line, then [index, due, start, end, items] per request."""
    headers: list[dict[str, Any]] = []

    def header(line: str) -> None:
        headers.append(_spans_header(line))

    rows, problems = read_lines(path, _request_line, header)
    if not headers:
        return [], problems
    h = headers[0]
    pid, model = int(h["pid"]), str(h["model"])
    framework, dtype = h.get("runtime"), h.get("dtype")
    spans = [
        Span(pid=pid, model=model, t0=t0, t1=t1, items=items, framework=framework, dtype=dtype)
        for t0, t1, items in rows
    ]
    return spans, problems


def request_spans(trace_dir: Path) -> list[Span]:
    """Every readable request of ``spans_*.jsonl``."""
    paths = sorted(trace_dir.glob("spans_*.jsonl"))
    return [span for path in paths for span in load_request_spans(path)[0]]


_PHASE_KEYS = ("name", "model", "dtype", "pid", "calls", "items", "bs", "t0", "t1")


def _check_phase(d: dict[str, Any]) -> None:
    for key in ("name", "model", "dtype"):
        if d.get(key) is not None:
            text(d[key], key, empty=True)
    for key in ("pid", "calls", "items", "bs"):
        if d.get(key) is not None:
            whole(d[key], key)
    t0, t1 = number(d["t0"], "t0", 0), number(d["t1"], "t1", 0)
    if t1 < t0:
        raise BadValue(f"t1: time goes backwards ({t1!r} before t0 {t0!r})")
    for key in ("lat_p50_ms", "lat_p99_ms"):
        if d.get(key) is not None:
            number(d[key], key, 0)


def load_workload(trace_dir: Path) -> tuple[list[dict[str, Any]], list[TraceProblem]]:
    """workload.json's phases ([] when absent or unreadable), and its problems."""
    path = trace_dir / WORKLOAD_FILE
    data, problems = load_document(path, absent=[])
    if problems:
        return [], problems
    try:
        phases = [mapping(p, f"phase {i}") for i, p in enumerate(sequence(data, WORKLOAD_FILE))]
    except BadValue as e:
        return [], [TraceProblem(path, 1, str(e), whole_file=True)]
    for i, phase in enumerate(phases):
        try:
            _check_phase(phase)
        except (BadValue, KeyError) as e:
            what = str(e.args[0]) if isinstance(e, BadValue) else f"missing {e.args[0]!r}"
            key = next((k for k in _PHASE_KEYS if what.startswith(k) or f"'{k}'" in what), "name")
            line = key_line(path, key, i)
            return [], [TraceProblem(path, line, f"phase {i}: {what}", whole_file=True)]
    return phases, []


def check_core_files(trace_dir: Path) -> list[TraceProblem]:
    """Every problem in the files the core reads from a trace."""
    problems = [*load_meta(trace_dir)[1], *load_processes(trace_dir)[1]]
    for path in sorted(trace_dir.glob("spans_*.jsonl")):
        problems += load_request_spans(path)[1]
    return [*problems, *load_workload(trace_dir)[1]]


def check_trace(trace_dir: Path, pm: PluginManager) -> list[TraceProblem]:
    """Every problem in a trace: the core's files and each plugin's (none: replay it whole)."""
    found = pm.collect("infermeter_replay_check", trace_dir=trace_dir)
    return [*check_core_files(trace_dir), *found]


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
    spans: list[Span] = []
    for phase in load_workload(trace_dir)[0]:
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
    patterns = patterns_for(config)  # a trace recorded before redaction, or by hand
    plugin_targets = pm.collect("infermeter_replay_targets", trace_dir=trace_dir, config=config)
    for target in [*recorded_targets(trace_dir, host), *plugin_targets]:
        if target.pid not in by_pid:
            cmdline = redact_cmdline(target.cmdline, patterns)
            by_pid[target.pid] = replace(target, host=host, cmdline=cmdline)
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
    partial: bool = False,
    problems: Sequence[TraceProblem] | None = None,
) -> ReplayResult:
    """Replay a trace into ``store``; ``observe`` sees the agent and each tick's shares.

    The trace is checked first (``problems``, when the caller checked it
    already): a problem raises TraceError before anything is written, unless
    ``partial``, when the readable rest is replayed and the problems are
    stored as the trace's gaps.
    """
    if not trace_dir.is_dir():
        raise InfermeterError(f"trace folder {trace_dir} does not exist")
    gaps = list(check_trace(trace_dir, pm) if problems is None else problems)
    refused = first(gaps)
    if refused is not None and not partial:
        raise TraceError(refused)
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
    if store is not None and gaps:
        record_gaps(store, gaps, t_start)
    return ReplayResult(
        host=host,
        t_start=t_start,
        t_end=t_end,
        ticks=agent.ticks,
        shares_written=written,
        spans=len(spans),
        meters=tuple(m.name for m in meters),
        targets=tuple(targets),
        gaps=tuple(sorted(gaps, key=lambda g: (str(g.path), g.line))),
    )


def record_gaps(store: Store, gaps: Sequence[TraceProblem], t_start: float) -> int:
    """Keep each gap of a partial replay in ``quarantine`` (source "trace"), once.

    ``at`` is the recorded time the gap begins (the trace's start when it has
    none), so a gap sits among the rows of the time it is missing from. A
    second replay of the same trace adds nothing: a gap is its payload.
    """
    from sqlalchemy import insert, select

    from infermeter.store.schema import quarantine

    added = 0
    with store.engine.begin() as conn:
        host_id = store.host_id(conn, t_start)
        for gap in gaps:
            payload = json.dumps(gap.payload(), sort_keys=True, ensure_ascii=True)
            seen = conn.execute(
                select(quarantine.c.id).where(
                    quarantine.c.host_id == host_id,
                    quarantine.c.source == QUARANTINE_SOURCE,
                    quarantine.c.payload == payload,
                )
            ).first()
            if seen is not None:
                continue
            reason = f"trace gap: {gap}; missing {gap.missing}"
            conn.execute(
                insert(quarantine).values(
                    host_id=host_id,
                    at=gap.t_from if gap.t_from is not None else t_start,
                    source=QUARANTINE_SOURCE,
                    reason=reason.encode("ascii", "backslashreplace").decode("ascii"),
                    payload=payload,
                )
            )
            added += 1
    return added
