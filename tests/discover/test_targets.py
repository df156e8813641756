from __future__ import annotations

import re
import subprocess
import sys

from infermeter.discover.targets import Discovery, ProcessInfo, process_info
from infermeter.records import Target

MARK = "infermeter-discovery-test-marker"


def decide_marked(p: ProcessInfo) -> Target | None:
    if any(MARK in part for part in p.cmdline):
        return Target(host="ignored", pid=p.pid, start_time=p.start_time, cmdline=p.cmdline)
    return None


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MARK])


def test_finds_a_real_process_and_forgets_it_when_it_exits() -> None:
    calls: list[int] = []

    def decide(p: ProcessInfo) -> Target | None:
        calls.append(p.pid)
        return decide_marked(p)

    d = Discovery("host-a", decide, young_s=0.0)
    proc = sleeper()
    try:
        found = d.scan()
        assert proc.pid in found
        t = found[proc.pid]
        assert t.host == "host-a", "the agent's host name wins over the plugin's"
        assert MARK in t.cmdline
        info = process_info(proc.pid)
        assert info is not None and t.start_time == info.start_time
        before = len(calls)
        d.scan()
        assert len(calls) == before, "a known process is not examined again"
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in d.scan()


def test_a_young_process_is_asked_again_until_it_is_old() -> None:
    """A server maps its runtime seconds after it starts; the first answer may be no."""
    ready = False
    asked: list[int] = []

    def decide(p: ProcessInfo) -> Target | None:
        asked.append(p.pid)
        return decide_marked(p) if ready else None

    proc = sleeper()
    try:
        now = [proc_start(proc.pid) + 0.5]
        d = Discovery("h", decide, young_s=60.0, clock=lambda: now[0])
        assert proc.pid not in d.scan()
        ready = True
        assert proc.pid not in d.scan(), "asked again only after a backoff"
        now[0] += 1.1
        assert proc.pid in d.scan()
        assert asked.count(proc.pid) == 2
        old = Discovery("h", decide, young_s=60.0, clock=lambda: proc_start(proc.pid) + 61)
        ready = False
        old.scan()
        ready = True
        assert proc.pid not in old.scan(), "an old process is asked once"
    finally:
        proc.kill()
        proc.wait()


def test_young_processes_back_off() -> None:
    asked: list[float] = []
    now = [1000.0]
    d = Discovery(
        "h",
        lambda p: asked.append(now[0]) and None,
        list_pids=lambda: [77],
        inspect=lambda pid: ProcessInfo(pid, 1000.0, "x", (), None),
        start_time=lambda pid: 1000.0,
        clock=lambda: now[0],
    )
    while now[0] < 1080.0:
        d.scan()
        now[0] += 0.5
    # Every second for ten seconds, then after 2, 4, 8, 16 s; never after 60 s of age.
    assert [t - 1000.0 for t in asked] == [float(s) for s in range(11)] + [12.0, 16.0, 24.0, 40.0]


def proc_start(pid: int) -> float:
    info = process_info(pid)
    assert info is not None
    return info.start_time


def test_a_reused_pid_is_a_new_target() -> None:
    """pid reuse cannot be forced on a real kernel: the start time source is injected."""
    starts = {4242: 100.0}
    d = Discovery(
        "h",
        lambda p: Target(host="h", pid=p.pid, start_time=p.start_time),
        list_pids=lambda: [4242],
        inspect=lambda pid: ProcessInfo(pid, starts[pid], "x", (), None),
        start_time=lambda pid: starts.get(pid),
        recheck_every=1,
    )
    assert d.scan()[4242].start_time == 100.0
    starts[4242] = 200.0
    assert d.scan()[4242].start_time == 200.0


def test_announced_process_becomes_a_target_with_its_labels() -> None:
    d = Discovery("h", lambda p: None)
    proc = sleeper()
    try:
        assert proc.pid not in d.scan()
        d.announce(proc.pid, {"tenant": "acme"})
        t = d.scan()[proc.pid]
        assert t.how_found == "sdk" and t.labels == {"tenant": "acme"}
    finally:
        proc.kill()
        proc.wait()


def test_plugin_errors_do_not_stop_discovery() -> None:
    asked: list[int] = []

    def broken(p: ProcessInfo) -> Target | None:
        asked.append(p.pid)
        raise RuntimeError("boom")

    d = Discovery("h", broken)
    assert d.scan() == {}
    # Every process was still offered to the plugin: one failure stopped nothing.
    assert len(set(asked)) > 1


SECRET_ARGS = ("--api-key=sk-secret123", "--hf-token", "hf_abc", "OPENAI_API_KEY=sk-x")
REDACTED_ARGS = ("--api-key=***", "--hf-token", "***", "OPENAI_API_KEY=***")


def test_plugins_and_targets_see_the_command_line_redacted() -> None:
    """A real process with secrets in its argv: no plugin, target or SDK target sees one."""
    seen: list[tuple[str, ...]] = []

    def decide(p: ProcessInfo) -> Target | None:
        seen.append(p.cmdline)
        return decide_marked(p)

    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", MARK, *SECRET_ARGS]
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *SECRET_ARGS])
    try:
        raw = process_info(proc.pid)
        assert raw is not None and raw.cmdline[-4:] == SECRET_ARGS, "the kernel shows them"
        d = Discovery("h", decide, young_s=0.0)
        found = d.scan()
        assert found[proc.pid].cmdline[-5:] == (MARK, *REDACTED_ARGS)
        d.announce(other.pid, {"tenant": "acme"})  # the SDK path builds its own Target
        found = d.scan()
        assert found[other.pid].how_found == "sdk"
        assert found[other.pid].cmdline[-4:] == REDACTED_ARGS
        assert seen and not any("sk-secret123" in w or "hf_abc" in w for c in seen for w in c)
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def test_the_patterns_given_are_the_ones_applied() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MARK, "--x=y"])
    try:
        d = Discovery("h", decide_marked, young_s=0.0, redact_patterns=[re.compile(r"(--x=)(.*)")])
        assert d.scan()[proc.pid].cmdline[-2:] == (MARK, "--x=***")
        keep = Discovery("h", decide_marked, young_s=0.0, redact_patterns=[])
        assert keep.scan()[proc.pid].cmdline[-2:] == (MARK, "--x=y")
    finally:
        proc.kill()
        proc.wait()
