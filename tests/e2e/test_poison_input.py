"""Issue 10, cases 1 and 4, against a real running agent: `infermeter run` as a
subprocess, spans sent to its real socket, a real SQLite file or the real
PostgreSQL server.

Case 1: one span with a string the store cannot hold (a lone surrogate, a
NUL, a 256-character tenant or request id) failed every flush after it, and
SIGTERM's final flush wrote 0 shares. Now the wire cleans such strings (and
counts them), every later span is stored, and the final flush writes.

Case 4: items = 2**63 - 1 overflowed the hourly rollup's sum, the rollup
never moved its completion point, and retention pruned raw rows of hours
never rolled up. Now the wire refuses such a span (alone, counted), calls
of that size already stored are moved to quarantine by the rollup, an hour
whose rollup still fails is recorded and passed, and retention keeps its
raw rows.

The spans are crafted datagrams (json.dumps, as any process on the socket
may write them): the SDK itself no longer sends these values.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from support import run_cli
from support.agent_run import TEST_METER_ONLY, RunningAgent

from infermeter.store import schema
from infermeter.store.request_rollup import COMPLETE_KEY, FAILED_KEY

pytestmark = pytest.mark.slow

HOST = "poison-host"
HOUR = 3600.0


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A short folder: AF_UNIX paths must fit 108 bytes, pytest's tmp_path may not."""
    d = Path(tempfile.mkdtemp(prefix="im-"))
    yield d / "run" / "spans.sock"
    shutil.rmtree(d, ignore_errors=True)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nhost = "{HOST}"\ntick_s = 0.2\nflush_s = 0.5\nspan_lag_s = 0.5\n'
        "rollup_s = 1\nretention_s = 1\n"
        "[store]\nretention_days = 1\n"
        "[synthetic]\ndevices = 1\npower_w = 100.0\nidle_w = 40.0\n" + TEST_METER_ONLY
    )
    return path


class Agent(RunningAgent):
    """`infermeter run` on ``url``, with a sender of crafted datagrams to its socket ``sock``."""

    def __init__(self, tmp_path: Path, env: dict[str, str], url: str, sock: Path) -> None:
        self.sock = sock
        env = {**env, "INFERMETER_SOCKET": str(sock)}
        super().__init__(env, _config(tmp_path), url, tmp_path / "agent.log")
        self.wait_for(sock.exists, "the span socket")

    def send(self, *spans: list[Any], dropped: int = 0) -> None:
        data = json.dumps({"v": 1, "d": dropped, "s": list(spans)}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(data, str(self.sock))

    def finish(self) -> str:
        """SIGTERM; the agent must exit 0. Returns its log."""
        code = self.stop()
        log = self.text()
        assert code == 0, log
        return log


def span(model: str, t0: float, **fields: Any) -> list[Any]:
    """A span array in wire.FIELDS order; the kernel replaces the pid."""
    f = {"items": 1, "request_id": None, "tenant": None, "tags": {}, **fields}
    return [
        1,
        model,
        t0,
        t0 + 0.01,
        f["items"],
        None,
        None,
        f["request_id"],
        f["tenant"],
        f["tags"],
        None,
        None,
        None,
        None,
    ]


def _query(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """Rows of ``sql``, or [] while the agent has not created the tables yet."""
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    except (OperationalError, ProgrammingError):
        return []


def _state(engine: Engine, key: str) -> Any:
    rows = _query(engine, "SELECT value FROM agent_state WHERE key = :k", k=key)
    return json.loads(rows[0][0]) if rows else None


def _calls(engine: Engine) -> dict[str, tuple[str | None, int]]:
    """Stored calls by request id: (tenant, items)."""
    rows = _query(engine, "SELECT request_id, tenant, items FROM requests")
    return {r[0]: (r[1], r[2]) for r in rows if r[0] is not None}


def _final_flush(log: str) -> int:
    m = re.search(r"final flush wrote (\d+) shares", log)
    assert m, log
    return int(m.group(1))


def _status(env: dict[str, str], url: str) -> dict[str, Any]:
    out = run_cli(env, "--db", url, "status", "--json")
    assert out.returncode == 0, out.stderr
    hosts = {h["host"]: h for h in json.loads(out.stdout)["hosts"]}
    return dict(hosts[HOST])


def test_case_1_strings_the_store_cannot_hold_are_cleaned_and_nothing_else_is_lost(
    tmp_path: Path, cli_env: dict[str, str], db_url: str, sock_path: Path
) -> None:
    engine = create_engine(db_url)
    agent = Agent(tmp_path, cli_env, db_url, sock_path)
    try:
        t = time.time()
        # One datagram each, as the reproductions sent them.
        agent.send(span("m", t, request_id="surrogate", tenant="\ud800"))
        agent.send(span("m", t + 0.1, request_id="nul\x00id", tenant="acme\x00"))
        agent.send(span("m", t + 0.2, request_id="r" * 256, tenant="t" * 256))
        agent.send(span("m", t + 0.3, request_id="tag", tags={"k\x00": "v\udfff"}))
        agent.wait_for(lambda: len(_calls(engine)) >= 4, "the cleaned calls to be stored")
        # Later spans are stored too: the flush is not stuck behind the first ones.
        agent.send(*(span("m", t + 1 + i, request_id=f"after-{i}") for i in range(3)))
        agent.wait_for(lambda: len(_calls(engine)) >= 7, "the spans after them to be stored")
        last_t1 = t + 3.01
        # The rollups pass them: their completion point moves beyond the last call.
        agent.wait_for(
            lambda: (_state(engine, COMPLETE_KEY) or 0) > last_t1, "the rollups to pass them"
        )
        # Seven strings changed: the surrogate tenant, the NUL request id and tenant,
        # the 256-character request id and tenant, the tag key and the tag value.
        agent.wait_for(
            lambda: (
                ((_state(engine, "span_sources") or {}).get("socket") or {}).get("strings_changed")
                == 7
            ),
            "the changed strings to be counted",
        )
    finally:
        log = agent.finish() if agent.proc.poll() is None else agent.text()
    assert _final_flush(log) > 0, "the final flush wrote nothing"
    assert "span strings from pid" in log and "replaced or cut to fit the store" in log
    calls = _calls(engine)
    assert calls["surrogate"] == ("\ufffd", 1)
    assert calls["nul\ufffdid"] == ("acme\ufffd", 1)
    assert calls["r" * 255] == ("t" * 255, 1)  # cut to the VARCHAR(255) columns
    assert {f"after-{i}" for i in range(3)} <= set(calls)
    tags = _query(engine, "SELECT tags FROM requests WHERE request_id = 'tag'")[0][0]
    assert (json.loads(tags) if isinstance(tags, str) else tags) == {"k\ufffd": "v\ufffd"}
    # Nothing was refused by the store, so nothing is in quarantine.
    assert _query(engine, "SELECT count(*) FROM quarantine")[0][0] == 0
    # The rollup counts every call before its completion point (from the raw rows).
    complete = _state(engine, COMPLETE_KEY)
    rolled = _query(
        engine,
        "SELECT sum(calls) FROM request_hourly WHERE grain = 'host' AND hour < :c",
        c=complete,
    )[0][0]
    raw = _query(engine, "SELECT count(*) FROM requests WHERE t0 < :c", c=complete)[0][0]
    assert rolled == raw >= 7
    status = _status(cli_env, db_url)
    assert status["span_sources"]["socket"]["strings_changed"] == 7
    assert status["rollups_complete_until"] == complete
    assert status["quarantine"] == [] and status["rollup_failed_hours"] == []
    engine.dispose()


def _seed_old_agent_rows(engine: Engine, now: float) -> tuple[float, float, float]:
    """Rows as an agent from before the fix left them.

    Returns (poisoned hour, old hour, the hour of the huge calls):

    - two calls of 2**63 - 1 items two hours ago (SQLite only: PostgreSQL's
      INTEGER never held them), with a good call beside them;
    - raw shares three days old in two hours: ``old`` rolls up, ``poisoned``
      is refused by the database (a trigger, as a CHECK would), so its rollup
      fails however often it is tried.
    """
    poisoned = (now // HOUR - 72) * HOUR
    old = poisoned - HOUR
    calls_hour = (now // HOUR - 2) * HOUR
    with engine.begin() as conn:
        host = conn.execute(
            insert(schema.hosts).values(name=HOST, first_seen=old, last_seen=old)
        ).inserted_primary_key[0]
        device = conn.execute(
            insert(schema.devices).values(
                host_id=host, uid="old-gpu", kind="gpu", name="Old", first_seen=old, last_seen=old
            )
        ).inserted_primary_key[0]
        for hour in (old, poisoned):
            conn.execute(
                insert(schema.usage_shares),
                [
                    {
                        "host_id": host,
                        "device_id": device,
                        "t0": hour + 60 * k,
                        "t1": hour + 60 * (k + 1),
                        "bucket": "idle",
                        "method": "measured",
                        "weight_basis": "baseline",
                        "energy_j": 10.0,
                    }
                    for k in range(5)
                ],
            )
        if conn.dialect.name == "sqlite":
            target = conn.execute(
                insert(schema.targets).values(
                    host_id=host,
                    pid=4242,
                    start_time=old,
                    framework="torch",
                    cmdline="serve",
                    labels={},
                    how_found="sdk",
                    first_seen=old,
                    last_seen=old,
                )
            ).inserted_primary_key[0]
            model = conn.execute(
                insert(schema.models).values(name="old-model", first_seen=old)
            ).inserted_primary_key[0]
            t0 = calls_hour + 10
            conn.execute(
                insert(schema.requests),
                [
                    {
                        "target_id": target,
                        "model_id": model,
                        "request_id": f"old-{i}",
                        "t0": t0 + i,
                        "t1": t0 + i + 1,
                        "items": items,
                        "tenant": f"t{i}",
                        "tags": {},
                        "energy_j": 1.0,
                        "method": "measured",
                        "seq": 0,
                    }
                    for i, items in enumerate([2**63 - 1, 2**63 - 1, 4])
                ],
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER poison BEFORE INSERT ON usage_hourly WHEN NEW.hour = {poisoned} "
                "BEGIN SELECT RAISE(ABORT, 'poisoned hour'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.hour = {poisoned} THEN RAISE EXCEPTION 'poisoned hour' "
                "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON usage_hourly "
                "FOR EACH ROW EXECUTE FUNCTION poison()"
            )
    return poisoned, old, calls_hour


def test_case_4_huge_counts_and_a_poisoned_hour_never_wedge_the_rollups(
    tmp_path: Path, cli_env: dict[str, str], db_url: str, sock_path: Path
) -> None:
    upgrade = run_cli(cli_env, "--db", db_url, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    engine = create_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    poisoned, old, calls_hour = _seed_old_agent_rows(engine, time.time())
    agent = Agent(tmp_path, cli_env, db_url, sock_path)
    try:
        t = time.time()
        huge = [span("m", t + i, items=2**63 - 1, request_id=f"huge-{i}") for i in range(2)]
        agent.send(*huge, span("m", t + 2, items=3, request_id="beside"))  # refused alone
        agent.send(*huge)  # a datagram of nothing valid: refused whole
        agent.send(span("m", t + 3, items=5, request_id="after"))
        agent.wait_for(
            lambda: {"beside", "after"} <= set(_calls(engine)), "the good spans to be stored"
        )
        agent.wait_for(
            lambda: (_state(engine, COMPLETE_KEY) or 0) > t + 4, "the rollups to pass them"
        )
        agent.wait_for(
            lambda: _state(engine, FAILED_KEY) == [poisoned], "the failure to be recorded"
        )
        # Retention runs every second: the old hour's shares go, the poisoned hour's stay.
        agent.wait_for(
            lambda: not _query(engine, "SELECT 1 FROM usage_shares WHERE t0 < :h", h=poisoned),
            "retention to prune the old hour that was rolled up",
        )
        agent.wait_for(
            lambda: (
                ((_state(engine, "span_sources") or {}).get("socket") or {}).get("invalid_span")
                == 2
            ),
            "the refused spans to be counted",
        )
    finally:
        log = agent.finish() if agent.proc.poll() is None else agent.text()
    assert _final_flush(log) > 0
    calls = _calls(engine)
    assert calls["beside"] == (None, 3) and calls["after"] == (None, 5)
    assert not {"huge-0", "huge-1"} & set(calls)
    assert "spans from pid" in log and "items out of range" in log
    kept = _query(
        engine,
        "SELECT count(*) FROM usage_shares WHERE t0 >= :a AND t0 < :b",
        a=poisoned,
        b=poisoned + HOUR,
    )[0][0]
    assert kept == 5, "retention pruned raw rows of an hour that was never rolled up"
    # The old hour was rolled up (five shares of 10 J) before its raw rows went.
    rolled = _query(engine, "SELECT sum(energy_j) FROM usage_hourly WHERE hour = :h", h=old)
    assert rolled[0][0] == pytest.approx(50.0)
    q = schema.quarantine.c
    with engine.connect() as conn:
        rows = conn.execute(select(q.source, q.reason, q.payload).order_by(q.id)).all()
    by_source: dict[str, list[Any]] = {}
    for r in rows:
        by_source.setdefault(r.source, []).append(r)
    # One row for the hour, however often it was retried; the database's reason
    # (sqlite3's IntegrityError, psycopg's CheckViolation).
    (failure,) = by_source["rollup"]
    assert failure.reason.endswith("Error: poisoned hour") or failure.reason.endswith(
        "CheckViolation: poisoned hour"
    ), failure.reason
    assert json.loads(failure.payload) == {"host": HOST, "hour": poisoned}
    if sqlite:  # the old agent's two calls were moved out of requests, kept whole
        moved = by_source["call"]
        assert sorted(json.loads(r.payload)["request_id"] for r in moved) == ["old-0", "old-1"]
        assert all("items 9223372036854775807 out of range" in r.reason for r in moved)
        assert calls["old-2"] == ("t2", 4)
        h = schema.request_hourly.c
        with engine.connect() as conn:
            hour_calls = conn.execute(
                select(h.calls, h["items"]).where(
                    h.grain == "host", h.hour == calls_hour, h.tenant == "t2"
                )
            ).one()
        assert tuple(hour_calls) == (1, 4)
    else:
        assert "call" not in by_source
    status = _status(cli_env, db_url)
    assert status["rollup_failed_hours"] == [poisoned]
    assert status["span_sources"]["socket"]["invalid_span"] == 2
    assert status["span_sources"]["socket"]["malformed"] == 1
    counts = {s["source"]: s["count"] for s in status["quarantine"]}
    assert counts == ({"call": 2, "rollup": 1} if sqlite else {"rollup": 1})
    engine.dispose()
