"""`infermeter run` as a real subprocess: the scheduler, signals, the lock, crashes.

The third-party test plugin (tests/support/plugin_pkg, installed with pip) supplies a
meter of constant power, so every stored window can be checked against it:
each device draws ``power_w`` and the shares of a window must add up to
``power_w x (t1 - t0)``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from support import infermeter_cmd, run_cli
from support.agent_run import TEST_METER_ONLY, RunningAgent, sqlite_rows

from infermeter.records import Span
from infermeter.spans.emitter import Emitter

# Real agents and applications as subprocesses: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

POWER_W = 100.0
IDLE_W = 40.0


def write_config(tmp_path: Path, devices: int = 2, tick: float = 0.1, flush: float = 0.5) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\ntick_s = {tick}\nflush_s = {flush}\nrollup_s = 1\nhost = "test-host"\n'
        f"[synthetic]\ndevices = {devices}\npower_w = {POWER_W}\nidle_w = {IDLE_W}\n"
        f'marker = "{tmp_path / "exports.jsonl"}"\n' + TEST_METER_ONLY
    )
    return path


def start(tmp_path: Path, env: dict[str, str], config: Path, db: Path) -> RunningAgent:
    """An agent on ``db``; each start of a test has a log of its own."""
    log = tmp_path / f"agent-{len(list(tmp_path.glob('agent-*.log')))}.log"
    return RunningAgent(env, config, f"sqlite:///{db}", log)


def count_windows(db: Path) -> int:
    rows = sqlite_rows(db, "SELECT count(*) FROM (SELECT DISTINCT device_id, t0 FROM usage_shares)")
    return int(rows[0][0]) if rows else 0


def wait_for_windows(db: Path, n: int, agent: RunningAgent) -> None:
    agent.wait_for(lambda: count_windows(db) >= n, f"{n} windows to be stored")


def check_every_window_conserves(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT device_id, t0, max(t1), sum(energy_j), "
            "sum(CASE WHEN bucket = 'idle' THEN energy_j ELSE 0 END), count(*) "
            "FROM usage_shares GROUP BY device_id, t0"
        ).fetchall()
    for _device, t0, t1, total, idle, n in rows:
        assert total == pytest.approx(POWER_W * (t1 - t0), rel=1e-9, abs=1e-6)
        assert idle == pytest.approx(IDLE_W * (t1 - t0), rel=1e-9, abs=1e-6)
        assert n == 2  # idle and other: a window is stored whole or not at all
    return len(rows)


def test_run_ticks_flushes_and_stops_cleanly_on_sigterm(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    db = tmp_path / "store.db"
    agent = start(tmp_path, cli_env, write_config(tmp_path), db)
    wait_for_windows(db, 4, agent)
    code = agent.stop()
    err = agent.text()
    assert code == 0, err
    assert "meters: synthetic" in err
    assert "received SIGTERM" in err and "final flush wrote" in err
    check_every_window_conserves(db)
    with sqlite3.connect(db) as conn:
        last_t1 = conn.execute("SELECT max(t1) FROM usage_shares").fetchone()[0]
        hosts = conn.execute("SELECT name FROM hosts").fetchall()
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
    assert hosts == [("test-host",)]
    assert devices == 2
    # The final flush stored the ticks after the last scheduled flush (at a
    # 0.1 s tick and a 0.5 s flush, some are always pending at SIGTERM).
    final = re.search(r"final flush wrote (\d+) shares", err)
    assert final is not None and int(final.group(1)) > 0, err
    assert last_t1 is not None
    exports = (tmp_path / "exports.jsonl").read_text().splitlines()
    assert len(exports) >= 2, "the plugin's export hook is called once per flush"


def test_ctrl_c_also_exits_zero(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "store.db"
    agent = start(tmp_path, cli_env, write_config(tmp_path), db)
    wait_for_windows(db, 2, agent)
    code = agent.stop(signal.SIGINT)
    assert code == 0, agent.text()
    assert "received SIGINT" in agent.text()


def test_second_agent_on_one_sqlite_file_refuses(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "store.db"
    config = write_config(tmp_path)
    first = start(tmp_path, cli_env, config, db)
    try:
        wait_for_windows(db, 1, first)
        before = count_windows(db)
        second = run_cli(cli_env, "--config", str(config), "--db", f"sqlite:///{db}", "run")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith("infermeter: error: another")
        assert f"pid {first.pid}" in second.stderr
        assert count_windows(db) >= before
    finally:
        code = first.stop()
    assert code == 0, first.text()


def test_sigkill_mid_flush_loses_nothing_committed(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Kill a busy agent at random moments; every committed window survives whole."""
    db = tmp_path / "store.db"
    # 1500 devices make each flush a transaction of ~6000 rows, long enough
    # that random kills land inside one.
    config = write_config(tmp_path, devices=1500, tick=0.1, flush=0.3)
    rng = random.Random(7)
    committed = 0
    for _ in range(4):
        agent = start(tmp_path, cli_env, config, db)
        wait_for_windows(db, committed + 1, agent)
        time.sleep(rng.uniform(0.2, 1.0))
        seen = count_windows(db)
        agent.stop(signal.SIGKILL)
        after = check_every_window_conserves(db)
        assert after >= seen >= committed
        committed = after
    # The store opens again, migrated and unlocked, and the agent carries on.
    agent = start(tmp_path, cli_env, config, db)
    wait_for_windows(db, committed + 1, agent)
    assert agent.stop() == 0, agent.text()
    assert check_every_window_conserves(db) > committed


def test_unreachable_database_exits_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    r = run_cli(
        cli_env,
        "--config",
        str(write_config(tmp_path)),
        "--db",
        "postgresql://nobody@127.0.0.1:1/none",
        "run",
    )
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("infermeter: error: cannot connect to database postgresql://nobody@")


def test_newer_schema_exits_2_and_changes_nothing(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    subprocess.run(
        [*infermeter_cmd(), "--db", url, "db", "upgrade"],
        env=cli_env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d0099'")
    before = db.read_bytes()
    for args in (["run"], ["db", "upgrade"], ["db", "current"]):
        r = run_cli(cli_env, "--config", str(write_config(tmp_path)), "--db", url, *args)
        assert r.returncode == 2, args
        assert "schema is at revision f00d0099, newer than this infermeter" in r.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "f00d0099"
        assert conn.execute("SELECT count(*) FROM hosts").fetchone()[0] == 0
    assert len(before) > 0


def test_a_deleted_socket_directory_is_noticed_and_spans_are_stored_again(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """`rm -rf` of the agent's runtime directory: it binds again, says so, and stores spans."""
    run = tmp_path / "run"
    sock = run / "spans.sock"
    db = tmp_path / "store.db"
    env = {**cli_env, "INFERMETER_SOCKET": str(sock)}
    agent = start(tmp_path, env, write_config(tmp_path), db)
    emitter = Emitter(str(sock), interval_s=0.02)
    try:
        agent.wait_for(sock.exists, "the span socket")
        first_inode = sock.stat().st_ino

        def emit(model: str) -> None:
            t = emitter.wall_time()
            emitter.emit(Span(pid=os.getpid(), model=model, t0=t - 0.01, t1=t))

        emit("before")
        agent.wait_for(
            lambda: "before" in stored_models(db), "the call before to be stored", poll_s=0.05
        )
        shutil.rmtree(run)
        agent.wait_for(
            lambda: sock.exists() and sock.stat().st_ino != first_inode, "a new socket", poll_s=0.05
        )
        emit("after")
        agent.wait_for(
            lambda: "after" in stored_models(db), "the call after to be stored", poll_s=0.05
        )
    finally:
        emitter.close()
        code = agent.stop()
    err = agent.text()
    assert code == 0, err
    assert err.count(f"span socket {sock} vanished (its directory deleted?): bound it again") == 1
    assert emitter.stats().dropped == 0


def stored_models(db: Path) -> set[str]:
    """Names of the models that have a model call stored."""
    rows = sqlite_rows(
        db, "SELECT DISTINCT m.name FROM requests r JOIN models m ON m.id = r.model_id"
    )
    return {name for (name,) in rows}
