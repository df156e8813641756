"""``infermeter record``: a trace of what the meters and discovery saw.

Each plugin's recorder writes its own raw samples (the format of the shared
fixtures, which its replay meters read back); the core adds meta.json and
processes.jsonl, the targets discovery found. A user can attach the folder
to a bug report, and the project can add it as a hardware fixture.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import infermeter
from infermeter.config import Config
from infermeter.discover.processes import ProcessInfo
from infermeter.discover.redact import patterns_for
from infermeter.discover.targets import Discovery
from infermeter.errors import InfermeterError
from infermeter.hookspecs import Recorder
from infermeter.plugin_manager import PluginManager
from infermeter.records import Target
from infermeter.sidecar.replay import META_FILE, PROCESSES_FILE
from infermeter.store.private_files import open_private, private_dir

log = logging.getLogger(__name__)

DISCOVERY_PERIOD_S = 1.0


@dataclass(frozen=True, slots=True)
class RecordResult:
    out_dir: Path
    seconds: float
    recorders: tuple[str, ...]
    targets: int
    files: tuple[str, ...]


def record(
    out_dir: Path,
    seconds: float,
    config: Config,
    pm: PluginManager,
    stop: threading.Event | None = None,
) -> RecordResult:
    if seconds <= 0:
        raise InfermeterError(f"--seconds must be > 0, not {seconds}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InfermeterError(f"{out_dir} is not empty; record into a new folder")
    patterns = patterns_for(config)  # a bad pattern stops us before anything is written
    private_dir(out_dir)  # 0700 when new: processes.jsonl holds command lines
    recorders: list[Recorder] = pm.collect("infermeter_recorders", out_dir=out_dir, config=config)
    stop = stop or threading.Event()

    def decide(process: ProcessInfo) -> Target | None:
        result: Target | None = pm.hook.infermeter_discover(process=process, config=config)
        return result

    discovery = Discovery(config.host, decide, redact_patterns=patterns)
    seen: dict[tuple[int, float], Target] = {}
    current: dict[int, Target] = {}
    started = time.time()
    due = {id(r): started for r in recorders}
    next_discovery = started
    deadline = started + seconds
    try:
        while not stop.is_set():
            now = time.time()
            if now >= deadline:
                break
            if now >= next_discovery:
                current = discovery.scan()
                for target in current.values():
                    seen.setdefault((target.pid, target.start_time), target)
                next_discovery = now + DISCOVERY_PERIOD_S
            for r in recorders:
                if now >= due[id(r)]:
                    try:
                        r.sample(now, current)
                    except Exception:
                        log.exception("recorder %s failed", r.name)
                    due[id(r)] = now + r.period_s
            wake = min([*due.values(), next_discovery, deadline])
            stop.wait(max(0.0, wake - time.time()))
    finally:
        for r in recorders:
            try:
                r.close()
            except Exception:
                log.exception("recorder %s failed to close", r.name)
    ended = time.time()
    with open_private(out_dir / PROCESSES_FILE) as f:
        for t in seen.values():
            rec = asdict(t)
            rec["labels"] = dict(t.labels)
            rec["framework"] = str(t.framework)
            f.write(json.dumps(rec) + "\n")
    meta = {
        "host": config.host or socket.gethostname(),
        "started": started,
        "ended": ended,
        "infermeter": infermeter.__version__,
        "recorders": [r.name for r in recorders],
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return RecordResult(
        out_dir=out_dir,
        seconds=ended - started,
        recorders=tuple(r.name for r in recorders),
        targets=len(seen),
        files=tuple(sorted(p.name for p in out_dir.iterdir())),
    )
