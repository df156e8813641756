"""The store on a real SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from infermeter.errors import StoreError, StoreLockedError
from infermeter.records import (
    Bucket,
    CallEnergy,
    Device,
    DeviceKind,
    Framework,
    Method,
    Share,
    Span,
    Target,
)
from infermeter.store import migrate, request_rollup, schema
from infermeter.store.engine import open_engine
from infermeter.store.lock import StoreLock
from infermeter.store.models import (
    Base,
    QuarantineRow,
    RequestRow,
    TargetRow,
    UsageHourly,
    UsageShare,
)
from infermeter.store.writer import FlushBatch, Store

GPU = Device(uid="GPU-1", kind=DeviceKind.GPU, name="NVIDIA H100 80GB HBM3", idle_power_w=70.0)
TARGET = Target(
    host="h1",
    pid=416,
    start_time=1000.5,
    framework=Framework.TORCH,
    labels={"model": "resnet50", "tenant": "acme"},
)


def batch(t0: float, t1: float, active_j: float = 500.0) -> FlushBatch:
    shares = [
        Share(
            t0, t1, GPU.uid, Bucket.IDLE, Method.MEASURED, 70.0 * (t1 - t0), weight_basis="baseline"
        ),
        Share(
            t0,
            t1,
            GPU.uid,
            Bucket.ACTIVE,
            Method.MEASURED,
            active_j,
            target=TARGET.key,
            model="resnet50",
            tenant="acme",
            weight_basis="sm-util",
        ),
        Share(t0, t1, GPU.uid, Bucket.OTHER, Method.MEASURED, 1.25, weight_basis="sm-util"),
    ]
    return FlushBatch(shares=shares, devices=[GPU], targets=[TARGET], now=t1)


def migrated_store(url: str) -> Store:
    engine = open_engine(url)
    migrate.upgrade(engine)
    return Store(engine, "h1")


def test_upgrade_from_empty_and_downgrade_to_base(db_url: str) -> None:
    engine = open_engine(db_url)
    assert migrate.current_revision(engine) is None
    assert migrate.upgrade(engine) == migrate.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {
        "hosts",
        "devices",
        "targets",
        "models",
        "price_cards",
        "usage_shares",
        "usage_hourly",
        "requests",
        "recommendations",
    } <= tables
    assert migrate.downgrade(engine, "base") is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


# SQLite cannot reflect the expression indexes of the natural keys; PostgreSQL
# can, so the comparison there covers them.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_match_the_models(db_url: str) -> None:
    engine = open_engine(db_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == []


def test_flush_is_idempotent_on_natural_keys(db_url: str) -> None:
    store = migrated_store(db_url)
    b = batch(100.0, 110.0)
    assert store.write_flush(b) == 3
    store.write_flush(b)  # a retried flush
    fresh = Store(store.engine, "h1")  # and one from a restarted agent
    fresh.write_flush(b)
    with store.engine.connect() as conn:
        n, total = conn.execute(select(func.count(), func.sum(UsageShare.energy_j))).one()
        labels = conn.execute(select(TargetRow.labels)).scalar_one()
    assert n == 3
    assert total == pytest.approx(700.0 + 500.0 + 1.25)
    assert labels == {"model": "resnet50", "tenant": "acme"}
    store.close()


def test_a_share_naming_an_unknown_device_is_set_aside_and_the_rest_written(
    db_url: str,
) -> None:
    store = migrated_store(db_url)
    good = batch(0.0, 10.0)
    broken = Share(0.0, 10.0, "GPU-unknown", Bucket.IDLE, Method.MEASURED, 5.0)
    flush = FlushBatch([*good.shares, broken], good.devices, good.targets, 10.0)
    assert store.write_flush(flush) == 3  # the three shares of batch(), without the broken one
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UsageShare)).scalar_one() == 3
        (row,) = conn.execute(select(QuarantineRow)).all()
    assert row.source == "share" and row.reason == "KeyError: 'GPU-unknown'"
    assert json.loads(row.payload)["share"]["device_uid"] == "GPU-unknown"
    assert store.write_flush(batch(10.0, 20.0)) == 3  # and the next flush still works
    store.close()


def _call(t0: float, **span: Any) -> CallEnergy:
    fields: dict[str, Any] = {"request_id": f"req-{t0:g}", "tenant": "acme", **span}
    return CallEnergy(
        Span(pid=TARGET.pid, model="resnet50", t0=t0, t1=t0 + 0.5, **fields),
        TARGET.key,
        2.0,
        Method.MEASURED,
    )


def _refused_calls(dialect: str) -> dict[str, tuple[CallEnergy, str]]:
    """Calls each database refuses, by what is wrong, with (part of) its reason.

    What the wire now cleans or refuses, as an older agent, a replayed trace
    or a plugin's span source may still hand over.
    """
    both = {"lone surrogate": (_call(3.0, tenant="\ud800"), "surrogates not allowed")}
    if dialect == "sqlite":  # SQLite keeps NUL, any length and 64-bit integers
        return {**both, "items over 2**63": (_call(4.0, items=2**63), "too large")}
    return {
        **both,
        "NUL": (_call(4.0, tenant="a\x00b"), "NUL"),
        "256 characters": (_call(5.0, request_id="r" * 256), "value too long"),
        "items over INTEGER": (_call(6.0, items=2**31), "out of range"),
    }


def test_calls_the_database_refuses_are_quarantined_and_the_rest_written(db_url: str) -> None:
    store = migrated_store(db_url)
    refused = _refused_calls(store.engine.dialect.name)
    good_calls = [_call(float(t0)) for t0 in range(10, 20)]
    calls = [*good_calls[:5], *(c for c, _ in refused.values()), *good_calls[5:]]
    flush = dataclasses.replace(batch(0.0, 30.0), calls=calls)
    assert store.write_flush(flush) == 3
    with store.engine.connect() as conn:
        stored = conn.execute(select(RequestRow.request_id).order_by(RequestRow.t0)).scalars()
        rows = conn.execute(select(QuarantineRow).order_by(QuarantineRow.id)).all()
    assert list(stored) == [c.span.request_id for c in good_calls]
    assert len(rows) == len(refused)
    by_request = {json.loads(r.payload)["call"]["span"]["request_id"]: r for r in rows}
    for call, reason in refused.values():
        row = by_request[call.span.request_id]
        assert row.source == "call" and reason in row.reason, row.reason
        assert row.payload.isascii() and "\n" not in row.reason
        assert json.loads(row.payload)["call"]["span"]["tenant"] == call.span.tenant
    # The agent retries a flush it is unsure of: nothing stored or set aside twice.
    assert store.write_flush(flush) == 3
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RequestRow)).scalar_one() == 10
        assert conn.execute(select(func.count()).select_from(QuarantineRow)).scalar_one() == len(
            refused
        )
    store.close()


def test_a_refused_share_costs_no_other_share(db_url: str) -> None:
    store = migrated_store(db_url)
    b = batch(0.0, 10.0)
    bad = dataclasses.replace(b.shares[1], tenant="\udc80")  # a lone low surrogate
    assert store.write_flush(dataclasses.replace(b, shares=[b.shares[0], bad, b.shares[2]])) == 2
    with store.engine.connect() as conn:
        buckets = conn.execute(select(UsageShare.bucket).order_by(UsageShare.bucket)).scalars()
        (row,) = conn.execute(select(QuarantineRow)).all()
    assert list(buckets) == ["idle", "other"]
    assert row.source == "share" and "surrogates not allowed" in row.reason
    assert json.loads(row.payload)["share"]["tenant"] == "\udc80"
    store.close()


def test_rollup_and_prune(db_url: str) -> None:
    store = migrated_store(db_url)
    for k in range(8):  # 8 flushes of 600 s over two hours
        store.write_flush(batch(3600.0 * 10 + 600 * k, 3600.0 * 10 + 600 * (k + 1)))
    assert store.rollup(0.0, 3600.0 * 12) == 6  # 3 buckets x 2 hours
    assert store.rollup(0.0, 3600.0 * 12) == 6  # recomputing is idempotent
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                UsageHourly.hour, UsageHourly.bucket, UsageHourly.energy_j, UsageHourly.energy_cost
            ).order_by(UsageHourly.hour, UsageHourly.bucket)
        ).all()
    assert [r.hour for r in rows] == [36000.0] * 3 + [39600.0] * 3
    active = [r.energy_j for r in rows if r.bucket == "active"]
    assert active == [pytest.approx(3000.0), pytest.approx(1000.0)]
    assert all(r.energy_cost is None for r in rows), "unpriced stays unpriced, never 0"
    # Retention waits for the rollups to say they are complete: nothing goes before.
    assert store.prune(3600.0 * 10 + 1200) == 0
    store.set_state(request_rollup.COMPLETE_KEY, 3600.0 * 12)
    assert store.prune(3600.0 * 10 + 1200) == 6
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UsageShare)).scalar_one() == 18
        assert conn.execute(select(func.count()).select_from(UsageHourly)).scalar_one() == 6
    store.close()


def _poison_hour(store: Store, hour: float) -> None:
    """Make the database refuse the usage_hourly rows of ``hour``, as a CHECK would.

    Bounded counts leave real data no way to fail an hour's rollup, so the
    database itself is told to refuse it; the rollup sees a real refusal.
    """
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER poison BEFORE INSERT ON usage_hourly WHEN NEW.hour = {hour} "
                f"BEGIN SELECT RAISE(ABORT, 'hour {hour:g} is poisoned'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.hour = {hour} THEN RAISE EXCEPTION 'hour {hour:g} is poisoned' "
                "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON usage_hourly "
                "FOR EACH ROW EXECUTE FUNCTION poison()"
            )


def _cure(store: Store) -> None:
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER poison")
        else:
            conn.exec_driver_sql("DROP TRIGGER poison ON usage_hourly")


def _count(store: Store, table: Any, *where: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_a_failed_hour_is_passed_recorded_and_its_raw_rows_kept(db_url: str) -> None:
    """Issue 10, case 4: one hour that cannot be rolled up wedged every later one,
    and retention then pruned raw rows of hours that were never rolled up."""
    store = migrated_store(db_url)
    ten, eleven = 3600.0 * 10, 3600.0 * 11
    for k in range(12):  # 12 flushes of 600 s, each 3 shares: 18 in hour 10, 18 in hour 11
        store.write_flush(batch(ten + 600 * k, ten + 600 * (k + 1)))
    _poison_hour(store, ten)
    request_rollup.rollup_store(store, 0.0, 3600.0 * 12)
    # The completion point passed the poisoned hour, and the hour is recorded.
    assert store.get_state(request_rollup.COMPLETE_KEY) == 3600.0 * 12
    assert store.get_state(request_rollup.FAILED_KEY) == [ten]
    with store.engine.connect() as conn:
        hours = conn.execute(select(UsageHourly.hour).distinct()).scalars().all()
        (row,) = conn.execute(select(QuarantineRow)).all()
    assert hours == [eleven]  # the hour after it was rolled up
    assert row.source == "rollup" and "hour 36000 is poisoned" in row.reason
    assert json.loads(row.payload)["hour"] == ten
    # Retention keeps the raw shares of the hour not rolled up, whatever their age.
    assert store.prune(1e12) == 18
    assert _count(store, UsageShare, UsageShare.t0 < eleven) == 18
    # A later rollup tries the hour again; once it succeeds its rows may go.
    request_rollup.rollup_store(store, eleven, 3600.0 * 12)
    assert store.get_state(request_rollup.FAILED_KEY) == [ten]  # still refused
    _cure(store)
    request_rollup.rollup_store(store, eleven, 3600.0 * 12)
    assert store.get_state(request_rollup.FAILED_KEY) == []
    # 18 shares in hour 10 at 3 buckets: one usage_hourly row per bucket.
    assert _count(store, UsageHourly, UsageHourly.hour == ten) == 3
    assert _count(store, QuarantineRow) == 1  # the same failure is recorded once
    assert store.prune(1e12) == 18
    store.close()


def test_calls_of_2_63_items_no_longer_wedge_the_rollup(db_url: str) -> None:
    """Issue 10, case 4: two calls of 2**63 - 1 items overflowed the hour's sum
    (SQLite INTEGER) and the rollup failed on that hour forever.

    SQLite stores such a call (as an agent before the wire's bound did); the
    rollup moves it to quarantine. PostgreSQL's INTEGER refuses it at the
    flush, which quarantines it there. Either way the hour rolls up with the
    other calls and the completion point moves on.
    """
    store = migrated_store(db_url)
    huge = [_call(100.0 + i, items=2**63 - 1, tenant=f"t{i}") for i in range(2)]
    good = [_call(110.0 + i, items=4) for i in range(3)]
    store.write_flush(dataclasses.replace(batch(100.0, 200.0), calls=[*huge, *good]))
    request_rollup.rollup_store(store, 0.0, 3600.0)
    assert store.get_state(request_rollup.COMPLETE_KEY) == 3600.0
    assert store.get_state(request_rollup.FAILED_KEY) is None
    h = schema.request_hourly.c
    with store.engine.connect() as conn:
        host = conn.execute(
            select(h.requests, h.calls, h["items"]).where(h.grain == "host", h.hour == 0.0)
        ).one()
        rows = conn.execute(select(QuarantineRow)).all()
    assert tuple(host) == (3, 3, 12)  # the three good calls of 4 items
    assert _count(store, RequestRow) == 3
    assert sorted(r.source for r in rows) == ["call", "call"]
    assert all("out of range" in r.reason for r in rows), [r.reason for r in rows]
    store.close()


def test_the_search_for_bad_calls_reads_the_t0_range_only(sqlite_url: str) -> None:
    """It runs on every rollup: a scan of every call of a target would cost the job."""
    store = migrated_store(sqlite_url)
    query = request_rollup.bad_calls_select(1, 3600.0, 7200.0)
    with store.engine.connect() as conn:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "SEARCH requests USING INDEX ix_requests_t0 (t0>? AND t0<?)" in plan, plan
    store.close()


def test_state_round_trips(db_url: str) -> None:
    store = migrated_store(db_url)
    assert store.get_state("rollup_until") is None
    store.set_state("rollup_until", 123.5)
    store.set_state("rollup_until", 456.5)
    assert store.get_state("rollup_until") == 456.5
    store.close()


def test_newer_schema_is_refused(db_url: str) -> None:
    engine = open_engine(db_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    with pytest.raises(StoreError, match="revision ffff9999, newer than this infermeter"):
        migrate.upgrade(engine)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "ffff9999"
        )
    engine.dispose()


def test_unreachable_database_is_one_line() -> None:
    with pytest.raises(StoreError) as e:
        open_engine("postgresql://nobody@127.0.0.1:1/none")
    assert str(e.value).startswith(
        "cannot connect to database postgresql://nobody@127.0.0.1:1/none"
    )
    assert "Connection refused" in str(e.value)
    assert "\n" not in str(e.value)


def test_sqlite_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path / 'no' / 'such.db'}")
    assert not (tmp_path / "no").exists()


def test_second_lock_on_one_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = StoreLock(db)
    first.acquire()
    with pytest.raises(StoreLockedError, match="already writing to"):
        StoreLock(db).acquire()
    first.release()
    again = StoreLock(db)
    again.acquire()
    again.release()


def test_revisions_read_without_alembic_agree_with_alembic() -> None:
    scripts = migrate.script_directory()
    known, head = migrate.known_revisions()
    assert known == {r.revision for r in scripts.walk_revisions()}
    assert head == scripts.get_current_head()


def test_the_daemon_path_does_not_load_alembic(tmp_path: Path) -> None:
    """Alembic costs ~11 MB for the agent's life; an up-to-date store needs none of it."""
    code = (
        "import sys\n"
        "from infermeter.store import migrate\n"
        "from infermeter.store.engine import open_engine\n"
        f"e = open_engine('sqlite:///{tmp_path / 'x.db'}')\n"
        "assert migrate.needs_upgrade(e)\n"
        "assert 'alembic' not in sys.modules\n"
        "migrate.upgrade(e)\n"
        "assert not migrate.needs_upgrade(e)\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"
