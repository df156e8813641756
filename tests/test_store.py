"""The store on a real SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from infermeter.errors import StoreError, StoreLockedError
from infermeter.records import Bucket, Device, DeviceKind, Framework, Method, Share, Target
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.lock import StoreLock
from infermeter.store.models import Base, TargetRow, UsageHourly, UsageShare
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


def test_failed_flush_leaves_nothing_behind(db_url: str) -> None:
    store = migrated_store(db_url)
    bad = batch(0.0, 10.0)
    broken = Share(0.0, 10.0, "GPU-unknown", Bucket.IDLE, Method.MEASURED, 5.0)
    with pytest.raises(KeyError):
        store.write_flush(FlushBatch([*bad.shares, broken], bad.devices, bad.targets, 10.0))
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UsageShare)).scalar_one() == 0
    assert store.write_flush(bad) == 3  # and the next flush still works
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
    assert store.prune(3600.0 * 10 + 1200) == 6
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UsageShare)).scalar_one() == 18
        assert conn.execute(select(func.count()).select_from(UsageHourly)).scalar_one() == 6
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
