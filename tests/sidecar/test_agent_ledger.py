"""Issue 10, cases 3 and 7, against a real running agent (`infermeter run`).

Spans go over the real Unix socket from this test process (the kernel
stamps them with its pid, so the agent announces it and it becomes a
target); calls are read back from the real SQLite file or PostgreSQL
database; the agent's memory is its RSS as the kernel reports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import run_cli
from support.agent_run import RunningAgent, sqlite_rows
from support.pg import PG_ADMIN_URL

from infermeter.attribute.ledger import SpanLedger
from infermeter.records import Span
from infermeter.spans.wire import decode_batch, encode_batch

pytestmark = pytest.mark.slow

FAR = 86400 * 365 * 10  # ten years ahead: finite, so the wire accepts it
QUERY = (
    "SELECT r.seq, r.energy_j, r.t0, r.t1, r.request_id FROM requests r "
    "JOIN models m ON m.id = r.model_id WHERE m.name = :name ORDER BY r.seq"
)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder: AF_UNIX paths must fit 108 bytes, pytest's tmp_path may not."""
    d = Path(tempfile.mkdtemp(prefix="im-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Agent(RunningAgent):
    """`infermeter run` on ``db`` with the span socket ``sock``, and a sender on it."""

    def __init__(self, tmp: Path, sock: Path, env: dict[str, str], config: str, db: str) -> None:
        self.sock = sock
        (tmp / "agent.toml").write_text(config)
        env = {**env, "INFERMETER_SOCKET": str(sock)}
        super().__init__(env, tmp / "agent.toml", db, tmp / "agent.log")
        self.wait_for(sock.exists, "the span socket")
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, spans: list[Span]) -> None:
        for datagram in encode_batch(spans):
            self._out.sendto(datagram, str(self.sock))  # blocks while the agent is behind

    def stop_with_log(self) -> str:
        """SIGTERM (unless it has exited), its exit waited for: its whole log."""
        self._out.close()
        self.stop()
        return self.text()

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


def call(model: str, t0: float, t1: float, request_id: str | None = None) -> Span:
    return Span(pid=0, model=model, t0=t0, t1=t1, items=1, request_id=request_id)


def future_spans(n: int, start: int, t1: float) -> list[Span]:
    now = time.time()
    return [call(f"m{i % 50}", now - 1 + i * 1e-6, t1, f"req-{i}") for i in range(start, start + n)]


def sqlite_calls(db: Path, model: str) -> list[tuple[Any, ...]]:
    """(seq, energy_j, t0, t1, request_id) of ``model``'s stored calls."""
    return sqlite_rows(db, QUERY.replace(":name", "?"), (model,))


def since_start(log: str, what: str) -> dict[str, int]:
    """The totals of the last line of ``what`` (ShedLog's "(since start: a 1, b 2)")."""
    lines = [ln for ln in log.splitlines() if f"{what}:" in ln and "since start:" in ln]
    assert lines, f"no `{what}` line in the agent's log:\n{log[-3000:]}"
    totals = re.search(r"\(since start: ([^)]*)\)", lines[-1])
    assert totals is not None
    return {k: int(v) for k, v in (p.rsplit(" ", 1) for p in totals.group(1).split(", "))}


def keep_cost_per_span(datagrams: list[bytes]) -> float:
    """Bytes a span costs when the agent decodes and holds it, measured in this process."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ledger = SpanLedger(max_spans=10**9, horizon_s=10.0 * FAR)  # a door that lets all in
    n = 0
    for d in datagrams:
        spans, _ = decode_batch(d, pid=os.getpid())
        n += ledger.add(spans, time.time())
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert n and ledger.held == n
    return (after - before) / n


class Flood:
    """Spans sent in chunks, each followed by a well-formed call waited for in the store.

    Once that call is stored the agent has taken every span sent before it
    (one socket, one receiving thread, in order), so the chunks never pile
    up in the receiver's queue and the agent's memory is measured at rest.
    """

    def __init__(self, agent: Agent, db: Path, chunk: int) -> None:
        self.agent, self.db, self.chunk = agent, db, chunk
        self.sent = 0
        self.marks = 0

    def send(self, chunks: int, t1: float) -> None:
        for _ in range(chunks):
            self.agent.send(future_spans(self.chunk, self.sent, t1))
            self.sent += self.chunk
            now = time.time()
            name = f"mark-{self.marks}"
            self.agent.send([call(name, now - 0.01, now)])
            self.agent.wait_for(lambda n=name: len(sqlite_calls(self.db, n)) == 1, f"call {name}")
            self.marks += 1

    def check_marks_stored_alone(self) -> None:
        for k in range(self.marks):  # every well-formed call, before, during and after
            assert len(sqlite_calls(self.db, f"mark-{k}")) == 1, k
        with sqlite3.connect(self.db) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == self.marks


FAST = "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\n"
NO_SYNTHETIC = '[plugins]\ndisabled = ["synthetic"]\n'


def test_far_future_spans_are_refused_memory_stays_flat_and_later_calls_are_stored(
    tmp_path: Path, sock_dir: Path, cli_env: dict[str, str]
) -> None:
    """Case 3 as reported: ~490k spans ending far ahead, RSS 117 -> 428 MB, kept forever.

    The ledger's count bound is left at its default (500,000) so that only
    the door at the horizon stands between these spans and the memory.
    """
    db = tmp_path / "store.db"
    agent = Agent(
        tmp_path, sock_dir / "spans.sock", cli_env, FAST + NO_SYNTHETIC, f"sqlite:///{db}"
    )
    flood = Flood(agent, db, chunk=25_000)
    try:
        flood.send(2, time.time() + FAR)  # warm-up: imports, caches and the socket's buffers
        rss_before = agent.rss()
        flood.send(8, time.time() + FAR)  # 200,000 spans ending ten years from now
        rss_after = agent.rss()
        log = agent.stop_with_log()
    finally:
        agent.stop_with_log()
    assert agent.proc.returncode == 0, log[-3000:]

    # Keeping the 200,000 would cost at least what this process measures for
    # decoding and holding a sample of them (tracemalloc; RSS adds the
    # allocator's own overhead on top); the agent may grow by a quarter of it.
    sample = encode_batch(future_spans(20_000, 0, time.time() + FAR))
    keep_bytes = keep_cost_per_span(sample) * 8 * flood.chunk
    assert keep_bytes > 50 * 2**20  # sanity: holding them is a real cost (> 50 MiB)
    grew = rss_after - rss_before
    print(f"RSS grew {grew / 2**20:.1f} MiB; keeping the spans: {keep_bytes / 2**20:.1f} MiB")
    assert grew < keep_bytes / 4, (grew, keep_bytes)
    # Every one of the 250,000 was refused at the door and counted; nothing
    # else was lost, and the well-formed calls between them were all stored.
    assert since_start(log, "span ledger") == {"future": 10 * flood.chunk}
    flood.check_marks_stored_alone()


def test_over_the_count_bound_the_latest_ending_spans_are_shed_and_counted(
    tmp_path: Path, sock_dir: Path, cli_env: dict[str, str]
) -> None:
    db = tmp_path / "store.db"
    config = FAST + "ledger_max_spans = 5000\n" + NO_SYNTHETIC
    agent = Agent(tmp_path, sock_dir / "spans.sock", cli_env, config, f"sqlite:///{db}")
    flood = Flood(agent, db, chunk=25_000)
    try:
        # Inside the horizon (they end in 30 minutes), but 25,000 for 5,000 places.
        flood.send(1, time.time() + 1800)
        log = agent.stop_with_log()
    finally:
        agent.stop_with_log()
    assert agent.proc.returncode == 0, log[-3000:]
    # 20,000 shed; then the well-formed call took one more place (it ends
    # first, so one of the 30-minute spans went instead) and was stored.
    assert since_start(log, "span ledger") == {"shed": flood.chunk - 5000 + 1}
    flood.check_marks_stored_alone()
    # The agent's last word, stored at shutdown, is what `status` shows.
    status = run_cli(cli_env, "--db", f"sqlite:///{db}", "status", "--json", check=True)
    (host,) = json.loads(status.stdout)["hosts"]
    assert host["span_sources"]["agent"]["spans_shed"] == flood.chunk - 5000 + 1


def burn_cpu(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_two_calls_with_the_same_start_are_both_stored_with_their_own_energy(
    tmp_path: Path, sock_dir: Path, cli_env: dict[str, str]
) -> None:
    db = tmp_path / "store.db"
    config = (
        "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\n"
        '[plugins]\ndisabled = ["synthetic"]\n[cpu]\nestimate = "always"\n'
    )
    agent = Agent(tmp_path, sock_dir / "spans.sock", cli_env, config, f"sqlite:///{db}")
    try:
        now = time.time()
        agent.send([call("hello", now - 0.01, now)])  # announces this process: a target
        agent.wait_for(lambda: len(sqlite_calls(db, "hello")) == 1, "the first call")
        t0 = time.time()
        burn_cpu(1.0)  # both run on this process's CPU time...
        mid = t0 + 0.5
        t1 = time.time()
        # ...one for its first half, one for all of it, and a coarse clock gave
        # both the same start.
        agent.send([call("twin", t0, mid, "short"), call("twin", t0, t1, "long")])
        agent.wait_for(lambda: len(sqlite_calls(db, "twin")) == 2, "both twins")
        log = agent.stop_with_log()
    finally:
        agent.stop_with_log()
    assert agent.proc.returncode == 0, log[-3000:]
    rows = sqlite_calls(db, "twin")
    assert [(seq, rid) for seq, _e, _t0, _t1, rid in rows] == [(0, "short"), (1, "long")]
    assert rows[0][2] == rows[1][2] == t0
    short_j, long_j = rows[0][1], rows[1][1]
    # Both had the first half, shared by items (1:1); the long one also had
    # the second half alone: more energy, and neither is zero.
    assert 0 < short_j < long_j, rows


def pg_calls(url: str, model: str) -> list[tuple[int, float, float, float, str | None]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(QUERY), {"name": model})]  # type: ignore[misc]
    finally:
        engine.dispose()


def set_connections(url: str, allowed: bool) -> None:
    """The database refuses (or takes again) connections; refusing ends those open."""
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
    finally:
        admin.dispose()


def test_while_the_store_is_away_the_calls_held_stay_bounded_and_the_drop_is_counted(
    tmp_path: Path, sock_dir: Path, cli_env: dict[str, str], pg_url: str
) -> None:
    bound = 300
    wave = 200
    waves = 8
    config = (
        "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\n"
        f"buffer_max_calls = {bound}\n"
        '[plugins]\ndisabled = ["synthetic"]\n'
    )
    agent = Agent(tmp_path, sock_dir / "spans.sock", cli_env, config, pg_url)
    try:
        now = time.time()
        agent.send([call("hello", now - 0.01, now)])
        agent.wait_for(lambda: len(pg_calls(pg_url, "hello")) == 1, "the first call")
        set_connections(pg_url, allowed=False)  # the store goes away
        for w in range(waves):
            now = time.time()
            agent.send(
                [call(f"wave-{w}", now - 0.1 + i * 1e-5, now, f"{w}-{i}") for i in range(wave)]
            )
            time.sleep(1.0)  # a few flushes apart; the counts below hold however far
        agent.wait_for(lambda: "agent buffers:" in agent.text(), "a drop")
        set_connections(pg_url, allowed=True)
        # Held batches are written oldest first, before a new one: once a call
        # sent now is stored, everything still held was written.
        now = time.time()
        agent.send([call("after", now - 0.01, now)])
        agent.wait_for(lambda: len(pg_calls(pg_url, "after")) == 1, "the call after")
        log = agent.stop_with_log()
    finally:
        set_connections(pg_url, allowed=True)
        agent.stop_with_log()
    assert agent.proc.returncode == 0, log[-3000:]

    held = [int(n) for n in re.findall(r"\(\d+ shares, (\d+) calls\)", log)]
    assert held and max(held) <= bound, held
    totals = since_start(log, "agent buffers")
    stored = sum(len(pg_calls(pg_url, f"wave-{w}")) for w in range(waves))
    # 1,600 calls sent while the store was away, 300 places: what is not
    # stored was dropped, and counted, call for call.
    assert totals["calls"] >= waves * wave - bound, totals
    assert stored + totals["calls"] == waves * wave, (stored, totals)
