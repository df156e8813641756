"""Issue 10 case 9: no other local user reads the store or a trace, and no secret reaches them.

Real files and real agents: ``infermeter run`` on a fresh data folder while a
real process with ``--api-key=...`` in its argv is discovered by a rule;
``infermeter record`` of that process; ``infermeter replay`` of a trace
recorded before redaction existed. Modes are read with os.stat once SQLite's
-wal and -shm exist; secrets are looked for in the files' bytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from support import FIXTURES, infermeter_cmd, run_cli
from support.agent_run import RunningAgent, sqlite_rows

from infermeter.store import migrate
from infermeter.store.engine import open_engine

MARK = "privacy-marker"
SECRETS = ("--api-key=sk-secret123", "--hf-token", "hf_abc", "OPENAI_API_KEY=sk-x")
REDACTED = ("--api-key=***", "--hf-token", "***", "OPENAI_API_KEY=***")
# Long enough not to turn up by chance in a binary file.
NEEDLES = (b"sk-secret123", b"hf_abc")

# Busy 20 ms in every 100: CPU time for the CPU estimate to attribute to it,
# so the agent stores it as a target (a target is stored with its shares).
BUSY = """
import time
while True:
    t = time.monotonic()
    while time.monotonic() - t < 0.02:
        pass
    time.sleep(0.08)
"""

RULE = f'[[discovery.rules]]\ncmdline = "{MARK}"\nlabels = {{team = "privacy"}}\n'


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def secret_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", BUSY, MARK, *SECRETS])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def expected_cmdline() -> str:
    """What the store must hold: the argv above, each secret replaced by *** by hand."""
    return " ".join([sys.executable, "-c", BUSY, MARK, *REDACTED])


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ----- the store's files -------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277], ids=["000", "022", "277"])
def test_a_new_store_is_owner_only_whatever_the_umask(
    tmp_path: Path, mask: int, umask: None
) -> None:
    """0o000 would leave 0666/0777; 0o277 would take the owner's own write away."""
    folder = tmp_path / "infermeter"
    db = folder / "infermeter.db"
    os.umask(mask)
    engine = open_engine(f"sqlite:///{db}", create_dir=True)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:  # an open connection keeps -wal and -shm
            conn.execute(text("SELECT count(*) FROM hosts"))
            assert (folder / "infermeter.db-wal").exists()
            assert (folder / "infermeter.db-shm").exists()
            assert mode(folder) == 0o700
            for name in ("infermeter.db", "infermeter.db-wal", "infermeter.db-shm"):
                assert mode(folder / name) == 0o600, name
    finally:
        engine.dispose()


def test_an_existing_folder_and_open_store_are_left_as_found_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's choices stay; a store anyone may read is named, with the fix."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    db = folder / "store.db"
    sqlite3.connect(db).close()  # made by someone else, with their umask
    os.chmod(db, 0o644)
    with caplog.at_level(logging.WARNING, logger="infermeter.store.private_files"):
        open_engine(f"sqlite:///{db}", create_dir=True, warn_public=True).dispose()
    assert mode(folder) == 0o755 and mode(db) == 0o644
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"store file {db} is open to every local user (mode 0644)" in warning
    assert f"chmod 600 {db}" in warning


def test_a_private_store_opens_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "store.db"
    open_engine(f"sqlite:///{db}").dispose()
    with caplog.at_level(logging.WARNING, logger="infermeter.store.private_files"):
        open_engine(f"sqlite:///{db}", warn_public=True).dispose()
    assert mode(db) == 0o600 and caplog.records == []


def test_only_the_agent_warns_about_an_open_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A report or a query on a 0644 store says nothing: the agent said it at start."""
    db = tmp_path / "store.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    with caplog.at_level(logging.WARNING, logger="infermeter.store.private_files"):
        open_engine(f"sqlite:///{db}").dispose()
    assert caplog.records == []


# ----- a real agent ------------------------------------------------------------


def stored_cmdlines(db: Path) -> dict[int, str]:
    return dict(sqlite_rows(db, "SELECT pid, cmdline FROM targets"))


def secrets_in(*paths: Path) -> list[tuple[str, bytes]]:
    found = []
    for path in paths:
        if path.exists():
            data = path.read_bytes()
            found += [(path.name, n) for n in NEEDLES if n in data]
    return found


def test_run_keeps_a_private_store_without_the_secrets(
    tmp_path: Path, cli_env: dict[str, str], secret_process: subprocess.Popen[bytes]
) -> None:
    folder = tmp_path / "data" / "infermeter"  # the default data folder, not there yet
    env = {**cli_env, "INFERMETER_DATA_DIR": str(folder)}
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.25\n"
        '[cpu]\nestimate = "always"\ntdp_w = 100.0\nidle_w = 10.0\n'
        '[plugins]\ndisabled = ["core.nvml", "core.rapl", "synthetic"]\n' + RULE
    )
    db = folder / "infermeter.db"
    agent = RunningAgent(env, config, None, tmp_path / "agent.log")
    try:
        agent.wait_for(
            lambda: secret_process.pid in stored_cmdlines(db),
            "the marked process to reach the store",
            poll_s=0.2,
        )
        wal, shm = folder / "infermeter.db-wal", folder / "infermeter.db-shm"
        assert wal.exists() and shm.exists(), "the running agent holds the WAL open"
        assert mode(folder) == 0o700
        assert {p.name: mode(p) for p in (db, wal, shm)} == {
            "infermeter.db": 0o600,
            "infermeter.db-wal": 0o600,
            "infermeter.db-shm": 0o600,
        }
        assert stored_cmdlines(db)[secret_process.pid] == expected_cmdline()
        assert secrets_in(db, wal) == []
    finally:
        code = agent.stop()
    assert code == 0, agent.text()
    assert secrets_in(db, folder / "infermeter.db-wal") == []
    assert mode(db) == 0o600


def test_record_writes_a_private_trace_without_the_secrets(
    tmp_path: Path, cli_env: dict[str, str], secret_process: subprocess.Popen[bytes]
) -> None:
    """``infermeter record`` needs no GPU: the CPU recorder and discovery run anywhere."""
    config = tmp_path / "agent.toml"
    config.write_text('[plugins]\ndisabled = ["synthetic"]\n' + RULE)
    out = tmp_path / "trace"
    r = run_cli(cli_env, "--config", str(config), "record", "--out", str(out), "--seconds", "2")
    assert r.returncode == 0, r.stderr
    assert mode(out) == 0o700 and mode(out / "processes.jsonl") == 0o600
    recorded = [json.loads(line) for line in (out / "processes.jsonl").read_text().splitlines()]
    (mine,) = [p for p in recorded if p["pid"] == secret_process.pid]
    assert mine["cmdline"] == [sys.executable, "-c", BUSY, MARK, *REDACTED]
    files = sorted(p for p in out.iterdir() if p.is_file())
    assert len(files) >= 3  # processes.jsonl, meta.json and the CPU recorder's
    assert secrets_in(*files) == []


def test_replay_of_a_trace_recorded_before_redaction_stores_none(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A trace from an older agent names pid 416 (the serving fixture's process A) with secrets."""
    trace = tmp_path / "old-trace"
    shutil.copytree(FIXTURES / "h100-serving", trace)
    header = json.loads((trace / "spans_A.jsonl").read_text().splitlines()[0])
    argv = ["python", "serve.py", *SECRETS]
    line = {"pid": header["pid"], "start_time": header["t0"], "cmdline": argv, "labels": {}}
    (trace / "processes.jsonl").write_text(json.dumps(line) + "\n")
    folder = tmp_path / "data" / "infermeter"
    env = {**cli_env, "INFERMETER_DATA_DIR": str(folder)}
    r = run_cli(env, "replay", "--no-progress", str(trace))
    assert r.returncode == 0, r.stderr
    db = folder / "infermeter.db"
    assert mode(folder) == 0o700 and mode(db) == 0o600
    for side in ("infermeter.db-wal", "infermeter.db-shm"):
        if (folder / side).exists():  # the last connection's close may remove them
            assert mode(folder / side) == 0o600
    assert stored_cmdlines(db)[header["pid"]] == " ".join(["python", "serve.py", *REDACTED])
    assert secrets_in(*folder.iterdir()) == []


# ----- a bad pattern -------------------------------------------------------------


def test_a_bad_pattern_stops_record_before_it_writes(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nredact_patterns = ["--api-key=(.+)", "(unclosed"]\n')
    out = tmp_path / "trace"
    base = [*infermeter_cmd(), "--config", str(config), "--db", f"sqlite:///{tmp_path / 's.db'}"]
    for command in (["record", "--out", str(out), "--seconds", "1"], ["run"]):
        r = subprocess.run(
            [*base, *command],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (command, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("infermeter: error: config key `agent.redact_patterns`")
        assert "item 1 ('(unclosed') is not a valid regular expression" in last
    assert not out.exists()
