"""Discovery from /proc with real processes: real runtimes mapped, real rules, real denial."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.waiting import wait_until

from infermeter.config import CORE_OPTIONS, Config, build_config
from infermeter.discover import processes as procfs_scan
from infermeter.discover.processes import ProcessInfo
from infermeter.errors import ConfigError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.plugins import procfs
from infermeter.records import Framework

pytestmark = pytest.mark.slow

SLEEP_PY = "import time; time.sleep(60)"
RUNTIMES = {
    "onnxruntime": ("import onnxruntime, time; time.sleep(60)", b"onnxruntime_pybind11_state"),
    "torch": ("import torch, time; time.sleep(60)", b"libtorch_cpu"),
    "litert": (
        "from ai_edge_litert.interpreter import Interpreter; import time; time.sleep(60)",
        b"_pywrap_litert_interpreter_wrapper",
    ),
}


def config(**discovery: Any) -> Config:
    file_values = {"discovery": discovery} if discovery else {}
    return build_config([*CORE_OPTIONS, *procfs.infermeter_config_options()], file_values)


def wait_for_maps(proc: subprocess.Popen[bytes], needle: bytes) -> None:
    maps = Path(f"/proc/{proc.pid}/maps")
    wait_until(lambda: needle in maps.read_bytes(), f"{needle!r} in {maps}", proc=proc, poll_s=0.05)


def info_of(pid: int) -> ProcessInfo:
    info = procfs_scan.process_info(pid)
    assert info is not None
    return info


@pytest.fixture(scope="module")
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One child per runtime, a plain Python child and a plain `sleep`, started together."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (code, _needle) in RUNTIMES.items():
            children[name] = subprocess.Popen([sys.executable, "-c", code])
        children["python"] = subprocess.Popen([sys.executable, "-c", SLEEP_PY, "serve-mlp"])
        children["sleep"] = subprocess.Popen(["sleep", "60"])
        for name, (_code, needle) in RUNTIMES.items():
            wait_for_maps(children[name], needle)
        yield children
    finally:
        for child in children.values():
            child.kill()
            child.wait()


@pytest.mark.parametrize(
    ("name", "framework"),
    [
        ("onnxruntime", Framework.ONNXRUNTIME),
        ("torch", Framework.TORCH),
        ("litert", Framework.LITERT),
    ],
)
def test_runtime_in_maps_makes_a_target(
    procs: dict[str, subprocess.Popen[bytes]], name: str, framework: Framework
) -> None:
    info = info_of(procs[name].pid)
    target = procfs.infermeter_discover(process=info, config=config())
    assert target is not None
    assert target.framework is framework
    assert (target.pid, target.start_time) == (info.pid, info.start_time)
    assert target.how_found == "runtime"
    assert target.cmdline == info.cmdline and "-c" in target.cmdline


def test_processes_without_a_runtime_are_not_targets(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    for name in ("sleep", "python"):
        assert procfs.infermeter_discover(process=info_of(procs[name].pid), config=config()) is None
    me = info_of(os.getpid())
    assert procfs.infermeter_discover(process=me, config=config(rules=[{"cmdline": "."}])) is None


def test_rules_add_targets_and_label_runtime_ones(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    rules = [
        {"cmdline": r"serve-mlp$", "labels": {"model": "mlp", "tenant": "acme"}},
        {"cmdline": r"onnxruntime", "labels": {"team": "vision"}},
        {"cmdline": r"serve-mlp", "user": "root", "labels": {"tenant": "globex"}},
        {"cmdline": r"serve-mlp", "user": "nobody", "labels": {"team": "never"}},
    ]
    cfg = config(rules=rules)
    plain = procfs.infermeter_discover(process=info_of(procs["python"].pid), config=cfg)
    assert plain is not None
    assert plain.how_found == "rule" and plain.framework is Framework.UNKNOWN
    # every matching rule adds labels, a later one overrides; the nobody rule does not match
    assert dict(plain.labels) == {"model": "mlp", "tenant": "globex"}
    ort = procfs.infermeter_discover(process=info_of(procs["onnxruntime"].pid), config=cfg)
    assert ort is not None
    assert ort.how_found == "runtime" and ort.framework is Framework.ONNXRUNTIME
    assert dict(ort.labels) == {"team": "vision"}
    assert procfs.infermeter_discover(process=info_of(procs["sleep"].pid), config=cfg) is None


def test_cgroup_rule_and_framework_override(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    pid = procs["python"].pid
    cgroup = Path(f"/proc/{pid}/cgroup").read_text().strip().splitlines()[-1]
    path = cgroup.split(":", 2)[2]
    cfg = config(rules=[{"cgroup": path, "framework": "litert", "labels": {"team": "edge"}}])
    target = procfs.infermeter_discover(process=info_of(pid), config=cfg)
    assert target is not None
    assert target.framework is Framework.LITERT and target.labels["team"] == "edge"
    miss = config(rules=[{"cgroup": path + "-no-such-group", "labels": {"team": "edge"}}])
    assert procfs.infermeter_discover(process=info_of(pid), config=miss) is None


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"cmdline": "(", "labels": {}}, "rules[1].cmdline is not a valid regex"),
        ({"comand": "typo"}, "unknown key(s) ['comand']"),
        ({"labels": {"model": "x"}}, "needs at least one of"),
        ({"cmdline": "serve-mlp", "framework": "tensorflow"}, "framework must be one of"),
    ],
)
def test_a_bad_rule_is_a_config_error_naming_it(rule: dict[str, Any], message: str) -> None:
    good = {"cmdline": "serve-mlp", "labels": {"model": "mlp"}}
    with pytest.raises(ConfigError) as e:
        config(rules=[good, rule])
    assert "discovery.rules" in str(e.value) and message in str(e.value)


def test_process_identity_is_pid_and_start_time(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    pid = procs["sleep"].pid
    info = info_of(pid)
    assert info.name == "sleep" and info.cmdline == ("sleep", "60") and info.username == "root"
    assert info.start_time == psutil.Process(pid).create_time()  # same key as psutil's
    assert procfs_scan.list_processes()[pid] == info.start_time
    reused = ProcessInfo(pid, info.start_time + 3600.0, "sleep", info.cmdline, "root")
    assert reused != info and reused.key != info.key
    assert len({info, reused}) == 2
    renamed = ProcessInfo(pid, info.start_time, "other", (), None)
    assert renamed == info  # name and cmdline are not identity


def test_gone_process_is_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert procfs_scan.process_info(child.pid) is None
    assert procfs_scan.start_time(child.pid) is None
    ghost = ProcessInfo(child.pid, 1.0, "true", ("true",), "root")
    assert procfs.infermeter_discover(process=ghost, config=config()) is None


def test_discovery_through_the_entry_point(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    pm = make_plugin_manager()
    assert pm.get_plugin("core.procfs") is procfs
    cfg = build_config(pm.config_options(), {"discovery": {"rules": []}})
    target = pm.hook.infermeter_discover(process=info_of(procs["torch"].pid), config=cfg)
    assert target is not None and target.framework is Framework.TORCH


DENIED_CHILD = """
import json, logging, os, sys
from infermeter.config import CORE_OPTIONS, build_config
from infermeter.discover import processes as procfs_scan
from infermeter.plugins import procfs
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="LOG %(levelname)s %(message)s")
rules = [{"cmdline": "import torch", "labels": {"team": "t"}}]
cfg = build_config([*CORE_OPTIONS, *procfs.infermeter_config_options()],
                   {"discovery": {"rules": rules}})
infos = [procfs_scan.process_info(int(p)) for p in sys.argv[1:]]
os.setgid(65534)
os.setuid(65534)
results = [procfs.infermeter_discover(process=i, config=cfg) for i in infos + infos]
flags = [None if r is None else [r.framework, r.how_found, dict(r.labels)] for r in results]
print("RESULT", json.dumps(flags, separators=(",", ":")), len(procfs._state.denied))
"""


def test_processes_the_agent_may_not_inspect_are_reported_once(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    """As an unprivileged user, other users' maps raise EACCES: None, one warning, no retry."""
    if os.geteuid() == 0:  # the child drops to nobody; the runtimes' children stay root's
        pids = [str(procs["onnxruntime"].pid), str(procs["torch"].pid)]
        code = DENIED_CHILD
    else:  # already unprivileged: root's own processes are the ones we may not read
        roots = [
            p.pid
            for p in psutil.process_iter(["username", "cmdline"])
            if p.info["username"] == "root" and p.info["cmdline"]
        ]
        pids = [str(p) for p in roots[:2]]
        code = DENIED_CHILD.replace("os.setgid(65534)\nos.setuid(65534)\n", "")
    out = subprocess.run(
        [sys.executable, "-c", code, *pids], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("LOG WARNING")]
    assert len(warnings) == 1
    assert "CAP_SYS_PTRACE" in warnings[0] and f"/proc/{pids[0]}/maps" in warnings[0]
    result = next(line for line in lines if line.startswith("RESULT")).split(maxsplit=2)
    # the runtimes go undetected, but a rule on the command line still applies
    ruled = ["unknown", "rule", {"team": "t"}]
    if os.geteuid() == 0:
        assert json.loads(result[1]) == [None, ruled, None, ruled]
    else:
        assert json.loads(result[1]) == [None, None, None, None]
    assert result[2] == "2"  # both remembered; the second round did not read again
    assert sum("cannot read" in line for line in lines) == 2  # 1 warning + 1 debug, not 4
    assert "rules still apply" in warnings[0]


def test_maps_read_cost(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Chunked early stop (the plugin) versus a whole read and versus a line loop."""
    pid = procs["torch"].pid

    def read_whole() -> bytes:
        with open(f"/proc/{pid}/maps", "rb", buffering=0) as f:
            return f.read()  # FileIO.read() with no size reads until EOF

    def chunked() -> Framework | None:
        return procfs.scan_maps(pid)

    def whole() -> Framework | None:
        return procfs.framework_in_maps(read_whole())

    def by_line() -> Framework | None:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                for needle, framework in procfs.RUNTIME_LIBS:
                    if needle in line:
                        return framework
        return None

    results = {}
    for fn in (chunked, whole, by_line):
        t = time.perf_counter()
        for _ in range(50):
            results[fn.__name__] = fn()
        results[fn.__name__ + "_us"] = (time.perf_counter() - t) / 50 * 1e6
    data = read_whole()
    lines = data.count(b"\n")
    print(
        f"\ntorch maps: {lines} lines, {len(data)} bytes; chunked early stop "
        f"{results['chunked_us']:.0f} us, whole read+search {results['whole_us']:.0f} us, "
        f"line loop {results['by_line_us']:.0f} us"
    )
    assert results["chunked"] is results["whole"] is results["by_line"] is Framework.TORCH


def test_process_table_scan_cost() -> None:
    """list_processes (listdir + one stat read each) against psutil, printed for the lead."""
    n = len(procfs_scan.list_processes())

    def timed(fn: Any, reps: int = 20) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e6

    ours = timed(procfs_scan.list_processes)
    pids = timed(psutil.pids)

    def psutil_identities() -> dict[int, float]:
        out = {}
        for pid in psutil.pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                out[pid] = psutil.Process(pid).create_time()
        return out

    fresh = timed(psutil_identities)
    info = timed(lambda: procfs_scan.process_info(os.getpid()), reps=200)
    print(
        f"\n{n} processes: list_processes {ours:.0f} us, psutil.pids {pids:.0f} us, "
        f"psutil.Process(p).create_time() for all {fresh:.0f} us; process_info {info:.0f} us"
    )
    assert n > 3 and os.getpid() in procfs_scan.list_processes()


def test_rules_match_the_redacted_command_line() -> None:
    """Through the agent's own discovery: a rule sees ***, never the secret it replaced."""
    from infermeter.discover.redact import patterns_for
    from infermeter.discover.targets import Discovery

    pm = make_plugin_manager()
    rules = [
        {"cmdline": "privacy-marker --api-key=\\*\\*\\*", "labels": {"team": "redacted"}},
        {"cmdline": "sk-secret123", "labels": {"leak": "yes"}},
    ]
    cfg = build_config(pm.config_options(), {"discovery": {"rules": rules}})

    def decide(p: ProcessInfo) -> Any:
        return pm.hook.infermeter_discover(process=p, config=cfg)

    child = subprocess.Popen(
        [sys.executable, "-c", SLEEP_PY, "privacy-marker", "--api-key=sk-secret123"]
    )
    try:
        d = Discovery(cfg.host, decide, young_s=0.0, redact_patterns=patterns_for(cfg))
        target = d.scan()[child.pid]
        assert target.how_found == "rule" and dict(target.labels) == {"team": "redacted"}
        assert target.cmdline[-2:] == ("privacy-marker", "--api-key=***")
    finally:
        child.kill()
        child.wait()
