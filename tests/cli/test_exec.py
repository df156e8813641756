"""``infermeter exec``: instruments a program's Python processes with no code change."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import infermeter_cmd, run_cli
from support.waiting import collect

from infermeter.spans.receiver import SocketReceiver

# Real agents and applications as subprocesses: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

# What the instrumented program runs: it checks that instrument() already ran
# before its first line, then emits a span through the process's emitter.
CHILD = """
import os, sys
from infermeter.spans.sdk import current_emitter
from infermeter.records import Span
emitter = current_emitter()
assert emitter is not None, "not instrumented"
emitter.emit(Span(pid=os.getpid(), model=sys.argv[1], t0=1.0, t1=2.0))
"""


@pytest.fixture
def receiver() -> Iterator[SocketReceiver]:
    d = tempfile.mkdtemp(prefix="im-")
    r = SocketReceiver(os.path.join(d, "spans.sock"))
    yield r
    r.close()
    shutil.rmtree(d, ignore_errors=True)


def env_for(receiver: SocketReceiver, pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["INFERMETER_SOCKET"] = receiver.path
    return env


def run_exec(
    args: list[str], env: dict[str, str], **kw: object
) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [*infermeter_cmd(), "exec", "--", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def test_the_child_is_instrumented_and_keeps_the_pid(receiver: SocketReceiver) -> None:
    proc, _, err = run_exec([sys.executable, "-c", CHILD, "direct"], env_for(receiver))
    assert proc.returncode == 0, err
    (got,) = collect(receiver, 1)
    assert (got.model, got.pid) == ("direct", proc.pid)  # execvp: the program is that pid


def test_without_exec_nothing_is_instrumented(receiver: SocketReceiver) -> None:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, "plain"],
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "not instrumented" in r.stderr


def test_grandchildren_are_instrumented_too(receiver: SocketReceiver) -> None:
    parent = textwrap.dedent(
        f"""
        import subprocess, sys
        child = subprocess.run([sys.executable, "-c", {CHILD!r}, "grandchild"])
        assert child.returncode == 0
        sys.argv = ["-c", "child"]
        exec({CHILD!r})
        """
    )
    proc, _, err = run_exec([sys.executable, "-c", parent], env_for(receiver))
    assert proc.returncode == 0, err
    got = collect(receiver, 2)
    assert sorted(s.model for s in got) == ["child", "grandchild"]
    pids = {s.model: s.pid for s in got}
    assert pids["child"] == proc.pid and pids["grandchild"] != proc.pid


def test_an_existing_sitecustomize_still_runs(receiver: SocketReceiver, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    marker = tmp_path / "marker"
    (theirs / "sitecustomize.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\nCHAINED = True\n"
    )
    check = CHILD + "import sitecustomize\nassert sitecustomize.CHAINED\n"
    proc, _, err = run_exec(
        [sys.executable, "-c", check, "chained"], env_for(receiver, pythonpath=str(theirs))
    )
    assert proc.returncode == 0, err
    assert marker.read_text() == str(proc.pid)
    assert [s.model for s in collect(receiver, 1)] == ["chained"]


def test_a_nested_exec_puts_the_folder_on_the_path_once(receiver: SocketReceiver) -> None:
    code = "import os; print(os.environ['PYTHONPATH'])"
    proc, out, err = run_exec(
        [*infermeter_cmd(), "exec", "--", sys.executable, "-c", code], env_for(receiver, "/x")
    )
    assert proc.returncode == 0, err
    entries = out.strip().split(os.pathsep)
    assert len(entries) == 2 and entries[0].endswith("_site") and entries[1] == "/x"


def test_the_exit_code_and_signals_pass_through(receiver: SocketReceiver) -> None:
    proc, _, _ = run_exec([sys.executable, "-c", "raise SystemExit(7)"], env_for(receiver))
    assert proc.returncode == 7
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    proc, _, _ = run_exec([sys.executable, "-c", kill], env_for(receiver))
    assert proc.returncode == -signal.SIGTERM
    proc, _, err = run_exec(["no-such-program-here"], env_for(receiver))
    assert proc.returncode == 127 and "no-such-program-here" in err


def test_options_after_the_program_belong_to_the_program(receiver: SocketReceiver) -> None:
    proc = run_cli(
        env_for(receiver), "exec", sys.executable, "-c", "import sys; print(sys.argv[1:])", "-v"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['-v']"


def test_the_socket_option_reaches_every_process(receiver: SocketReceiver) -> None:
    env = env_for(receiver)
    del env["INFERMETER_SOCKET"]
    proc = run_cli(
        env, "exec", "--socket", receiver.path, "--", sys.executable, "-c", CHILD, "option"
    )
    assert proc.returncode == 0, proc.stderr
    assert [s.model for s in collect(receiver, 1)] == ["option"]
