"""``infermeter top`` under a real pseudo-terminal, on a store filled by replay.

The child runs ``infermeter top`` through ``sh`` on the slave side of a
pty, then ``stty -a``: after ``q`` (or Ctrl-C) the shell must find the
terminal back in canonical mode with echo on, which is what "restored"
means to the user who typed the command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import infermeter_cmd
from support.replayed import ReplayedStores
from support.terminal import Screen

from infermeter.report.top import open_readonly, recent_requests_query, recent_usage_query, snapshot
from infermeter.store.engine import open_engine
from infermeter.store.models import Host

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, template_stores: ReplayedStores) -> str:
    """h100-serving replayed, shared by the tests that only read it."""
    return template_stores.sqlite(tmp_path_factory.mktemp("top") / "store.db")


def shows_the_store(text: str) -> bool:
    names = ("H100 80GB HBM3", "resnet50", "encoder", "mlp")
    headings = ("Devices", "Targets", "Models", "power W", "req/s")
    return all(name in text for name in names) and all(h in text for h in headings)


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_top_shows_devices_and_models_and_quits_cleanly(
    store: str, tmp_path: Path, key: bytes
) -> None:
    screen = Screen(store, tmp_path)
    text = screen.read_until(shows_the_store)
    assert shows_the_store(text), text[-3000:]
    assert "q: quit" in text
    assert "\x1b[?1049h" in screen.raw.decode(errors="replace")  # the alternate screen
    time.sleep(1.5)  # at least one refresh after the first frame
    screen.send(key)
    after = screen.read_until(lambda t: "EXIT=" in t and "icanon" in t.split("EXIT=")[-1])
    assert screen.wait() == 0
    tail = after.split("EXIT=")[-1]
    assert tail.startswith("0"), after[-2000:]
    # The terminal is back as the shell left it: line editing and echo on.
    assert re.search(r"(?<!-)icanon", tail) and re.search(r"(?<![-\w])echo\b", tail), tail
    assert "\x1b[?1049l" in screen.raw.decode(errors="replace")  # left the alternate screen
    assert "Traceback" not in after


def test_top_reads_without_blocking_the_writer(store: str) -> None:
    reader = open_readonly(store)
    writer = open_engine(store)
    with reader.connect() as conn:  # a reader mid-transaction, as top is during a refresh
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM usage_shares").all()
        # No waiting allowed: a writer that had to wait for the reader would
        # fail at once with "database is locked" instead of timing out slowly.
        with writer.connect() as w:
            w.exec_driver_sql("PRAGMA busy_timeout = 0")
            w.execute(Host.__table__.update().values(last_seen=Host.last_seen + 1))
            w.commit()
    with pytest.raises(Exception, match="readonly"), reader.begin() as conn:
        conn.execute(Host.__table__.update().values(last_seen=0))
    reader.dispose()
    writer.dispose()


def test_snapshot_of_a_replayed_store(store: str) -> None:
    engine = open_readonly(store)
    snap = snapshot(engine)
    engine.dispose()
    assert snap.as_of is not None
    gpu = next(d for d in snap.devices if "H100" in d.label)
    assert 60 < gpu.power_w < 700 and gpu.method == "measured"
    models = {u.label: u for u in snap.models}
    assert {"resnet50", "encoder", "mlp"} <= set(models)
    assert models["resnet50"].requests_per_s > 10  # ~90 requests/s in the recording
    assert all(u.cost_today is not None and u.cost_today > 0 for u in models.values())
    total_today = sum(u.cost_today or 0.0 for u in snap.targets)
    assert snap.cost_today is not None and total_today <= snap.cost_today + 1e-12


def test_once_prints_a_frame_when_not_a_terminal(store: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.update(HOME=str(tmp_path))
    done = subprocess.run(
        [*infermeter_cmd(), "--db", store, "top", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert shows_the_store(done.stdout) and "\x1b[" not in done.stdout
    assert sys.platform != "win32"


def test_the_recent_queries_read_the_t0_range_not_the_table(store: str) -> None:
    """Each refresh must stay a range read however many calls the store keeps.

    SQLite's plan for the "now" queries names the t0 index as the search;
    grouped by bare target/model columns it would scan their (id, t0) index,
    every row of the table.
    """
    engine = open_readonly(store)
    with engine.connect() as conn:
        for query, index in (
            (recent_usage_query(1.0), "ix_usage_shares_t0"),
            (recent_requests_query(1.0), "ix_requests_t0"),
        ):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " | ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            )
            assert "SEARCH" in plan and f"USING INDEX {index} (t0>?)" in plan, plan
    engine.dispose()
