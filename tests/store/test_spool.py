"""The spool: what a final flush cannot write survives the agent, and nothing is lost silently.

The store that goes away is a private PostgreSQL server (tests/support/private_pg.py)
stopped under a running agent, as a database that crashes or is switched
off; a store that answers but refuses every write is the same server made
read-only. The agents are real `infermeter run` processes stopped with
SIGTERM. Their meter is the third-party test plugin's constant power, so
every window stored can be checked against ``POWER_W x (t1 - t0)``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support.agent_run import TEST_METER_ONLY, RunningAgent
from support.private_pg import PrivatePostgres, private_postgres
from support.records import FULL_SPAN

from infermeter.config import build_config
from infermeter.errors import StoreError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_from_config
from infermeter.records import (
    Bucket,
    CallEnergy,
    Device,
    DeviceKind,
    DeviceWindowRecord,
    Framework,
    Method,
    Price,
    Reading,
    Share,
    Target,
)
from infermeter.sidecar.agent import Agent
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.spool import read_spool, spool_path, write_spool
from infermeter.store.writer import FlushBatch, Store

POWER_W = 100.0
HOST = "spool-host"


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


# ----- the file ---------------------------------------------------------------------

GPU = Device(
    uid="GPU-1",
    kind=DeviceKind.GPU,
    name="NVIDIA H100 80GB HBM3",
    index=1,
    memory_total_bytes=80 << 30,
    power_limit_w=700.0,
    idle_power_w=70.0,
    compute_capability=(9, 0),
    min_power_limit_w=200.0,
    max_power_limit_w=700.0,
)
TARGET = Target(
    host=HOST,
    pid=416,
    start_time=1000.123456789,
    framework=Framework.TORCH,
    cmdline=("python", "serve.py", "--port", "8000"),
    labels={"model": "resnet50", "team": "vision"},
    how_found="sdk",
)


def full_batch() -> FlushBatch:
    """A batch with every field of every record set to something other than its default."""
    pm = make_plugin_manager()
    config = build_config(
        pm.config_options(),
        {
            "prices": {
                "version": "spool-test",
                "time_of_use": [
                    {"start": "22:00", "end": "06:00", "days": [5, 6], "per_kwh": 0.07}
                ],
            }
        },
        environ={},
    )
    card = card_from_config(config)
    assert card.time_of_use and card.device_rates  # the round trip below covers both
    t0, t1 = 1_800_000_000.1, 1_800_000_010.7
    shares = [
        Share(t0, t1, GPU.uid, Bucket.IDLE, Method.MEASURED, 741.9999, weight_basis="baseline"),
        Share(
            t0,
            t1,
            GPU.uid,
            Bucket.ACTIVE,
            Method.INTEGRATED,
            1234.5678901234,
            target=TARGET.key,
            model="resnet50",
            tenant="acme",
            weight_basis="sm-util",
            drawn_t0=t0 + 2.0,
            drawn_t1=t1,
        ),
    ]
    span = replace(FULL_SPAN, pid=TARGET.pid, t0=t0 + 1, t1=t0 + 1.25, device="cuda:1", seq=2)
    call = CallEnergy(span, TARGET.key, 12.5, Method.INTEGRATED)
    profile = ((t0 + 2.5, 300.0), (t0 + 2.75, 120.25), (t1, 1556.3177))
    window = DeviceWindowRecord(
        GPU.uid, t0, t1, 1976.5677, Method.INTEGRATED, 0.625, 12 << 30, profile
    )
    return FlushBatch(
        shares=shares,
        devices=[GPU],
        targets=[TARGET],
        now=t1 + 2.0,
        baselines={GPU.uid: (70.0, None)},
        calls=[call],
        windows=[window],
        card=card,
        share_prices=[Price(0.001, 0.002, 0.3), Price(None, 0.004, None)],
        call_prices=[Price(0.0005, 0.0001, 0.02)],
    )


def dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = create_engine(url)
    tables = ["hosts", "devices", "targets", "models", "price_cards", "usage_shares"]
    tables += ["device_windows", "requests"]
    with engine.connect() as conn:
        out = {
            t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
            for t in tables
        }
    engine.dispose()
    return out


def test_a_spooled_batch_reads_back_equal_and_stores_the_same_rows(tmp_path: Path) -> None:
    batch = full_batch()
    path = spool_path(tmp_path / "spool", HOST, "sqlite:///x.db")
    write_spool(path, [batch, batch], HOST, "sqlite:///x.db")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    doc = json.loads(path.read_text())  # plain JSON, readable by anyone's tools
    assert (doc["format"], doc["version"], doc["host"]) == ("infermeter-spool", 1, HOST)
    back = read_spool(path)
    assert back == [batch, batch]
    # Stored, the spooled copy gives exactly the rows the original would have.
    urls = []
    for name, b in (("original", batch), ("spooled", back[0])):
        url = f"sqlite:///{tmp_path / name}.db"
        engine = open_engine(url)
        migrate.upgrade(engine)
        assert Store(engine, HOST).write_flush(b) == 2
        engine.dispose()
        urls.append(url)
    original, spooled = (dump(u) for u in urls)
    assert original == spooled
    assert len(original["requests"]) == 1 and len(original["device_windows"]) == 1


def test_each_store_has_its_own_spool_and_the_name_hides_the_password(tmp_path: Path) -> None:
    a = spool_path(tmp_path, HOST, "postgresql://u:secret@db1/im")
    b = spool_path(tmp_path, HOST, "postgresql://u:secret@db2/im")
    assert a != b and a.parent == tmp_path
    assert a == spool_path(tmp_path, HOST, "postgresql://u:other@db1/im")  # hashed redacted
    write_spool(a, [], HOST, "postgresql://u:secret@db1/im")
    assert "secret" not in a.read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "infermeter-spool", "version": 1, "batches": [', "cannot read the spool"),
        ('{"hello": 1}', "is not an infermeter spool"),
        ('{"format": "infermeter-spool", "version": 9, "batches": []}', "version 9"),
        ('{"format": "infermeter-spool", "version": 1, "batches": [{"nope": 1}]}', "damaged"),
    ],
)
def test_an_unreadable_spool_is_one_line_and_stays_as_it_is(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "spool.json"
    path.write_text(content)
    with pytest.raises(StoreError, match=message) as e:
        read_spool(path)
    assert "\n" not in str(e.value)
    assert path.read_text() == content


def test_a_spool_that_cannot_be_written_leaves_nothing_half_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("in the way")
    with pytest.raises(StoreError, match="cannot write the spool"):
        write_spool(blocker / "spool.json", [full_batch()], HOST, "sqlite:///x.db")
    assert blocker.read_text() == "in the way"
    assert os.listdir(tmp_path) == ["not-a-dir"]


# ----- the agent with its store away ---------------------------------------------------


class OneDevice:
    """A meter of ``POWER_W`` on one device, read at the times the test gives."""

    name = "one-device"
    device = Device(uid="dev-0", kind=DeviceKind.GPU, name="Test", idle_power_w=40.0)

    def __init__(self) -> None:
        self.last: float | None = None

    def read(self, now: float, targets: object) -> list[Reading]:
        last, self.last = self.last, now
        if last is None:
            return []
        # Busy: never a quiet window the baseline learner would take for the idle draw.
        energy = POWER_W * (now - last)
        return [Reading(self.device, last, now, energy, Method.MEASURED, busy_fraction=1.0)]

    def close(self) -> None:
        pass


def test_a_failing_store_says_what_it_holds_against_the_bound_and_what_it_dropped(
    pg: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    engine = open_engine(pg.url)
    migrate.upgrade(engine)
    pm = make_plugin_manager()
    pm.set_blocked("core.pricing")
    config = build_config(
        pm.config_options(),
        {"agent": {"host": HOST, "span_lag_s": 0.0, "buffer_max_shares": 5}},
        environ={},
    )
    agent = Agent(
        config,
        pm,
        Store(engine, HOST),
        meters=[OneDevice()],
        targets=lambda _now: {},
        span_sources=[],
    )
    t = 1_800_000_000.0
    agent.tick(t)

    def flush_one(n: int) -> int:
        """One tick and one flush, ``n`` seconds later: one batch of two shares (idle, other)."""
        agent.tick(t + n)
        return agent.flush(t + n)

    assert flush_one(1) == 2
    pg.stop()
    caplog.set_level("INFO", logger="infermeter.sidecar.agent")
    for n in (2, 3, 4):
        caplog.clear()
        assert flush_one(n) == 0
        lines = [r.getMessage() for r in caplog.records]
        # Batches of 2 shares against a bound of 5: the third failure holds 6 > 5,
        # so the oldest batch goes, leaving 2 batches (4 shares).
        held = {2: 1, 3: 2, 4: 2}[n]
        failed = [m for m in lines if m.startswith("flush failed")]
        assert len(failed) == 1 and failed[0].startswith(
            f"flush failed, holding {held} batches ({2 * held} shares, 0 calls; "
            "bounds 5 shares, 200000 calls) for the next: OperationalError"
        ), lines
        # What the bound dropped is said by the buffers' shed log, at once.
        shed = [m for m in lines if m.startswith("agent buffers:")]
        if n == 4:
            assert len(shed) == 1, lines
            assert shed[0].startswith(
                "agent buffers: 1 unwritten batches dropped, oldest first, while the store "
                "is away; 2 shares dropped (bound: 5 held)"
            ), shed
        else:
            assert shed == [], lines
    assert agent.dropped_shares == 2
    pg.start()
    caplog.clear()
    assert flush_one(5) == 6  # the two held batches and this one, 2 shares each
    assert "the store is back: wrote 3 held batches" in caplog.messages
    with engine.connect() as conn:
        windows = conn.execute(text("SELECT t0, t1 FROM usage_shares ORDER BY t0")).all()
    # Stored: [t+0, t+1) before the outage, the lost [t+1, t+2), then t+2 to t+5.
    assert sorted({(r.t0 - t, r.t1 - t) for r in windows}) == [(0, 1), (2, 3), (3, 4), (4, 5)]
    agent.close()
    engine.dispose()


# ----- real agents, signals and a server that goes away ----------------------------------


def write_config(tmp_path: Path, spool_dir: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\ntick_s = 0.1\nflush_s = 0.4\nspan_lag_s = 0.2\n"
        f'rollup_s = 3600\nretention_s = 3600\nrecommend_s = 3600\nhost = "{HOST}"\n'
        f'[store]\nspool_dir = "{spool_dir}"\n'
        f"[synthetic]\ndevices = 2\npower_w = {POWER_W}\nidle_w = 40.0\n" + TEST_METER_ONLY
    )
    return path


Window = tuple[str, float, float, float]  # device uid, t0, t1, energy


def stored_windows(url: str) -> list[Window]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT d.uid, s.t0, max(s.t1), sum(s.energy_j) FROM usage_shares s "
                    "JOIN devices d ON d.id = s.device_id GROUP BY d.uid, s.t0 ORDER BY 1, 2"
                )
            ).all()
    except Exception:
        return []  # not migrated yet, or the server is down
    finally:
        engine.dispose()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def spooled_windows(path: Path) -> list[Window]:
    out: dict[tuple[str, float], list[float]] = {}
    for b in read_spool(path):
        for s in b.shares:
            w = out.setdefault((s.device_uid, s.t0), [s.t1, 0.0])
            w[0] = max(w[0], s.t1)
            w[1] += s.energy_j
    return sorted((uid, t0, t1, e) for (uid, t0), (t1, e) in out.items())


def chains(windows: list[Window]) -> dict[str, list[tuple[float, float]]]:
    """Per device, the runs of windows that follow each other with no gap: (start, end)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for uid, t0, t1, _e in sorted(windows):
        runs = out.setdefault(uid, [])
        if runs and runs[-1][1] == t0:
            runs[-1] = (runs[-1][0], t1)
        else:
            runs.append((t0, t1))
    return out


def assert_conserved(windows: list[Window]) -> None:
    for uid, t0, t1, energy in windows:
        assert energy == pytest.approx(POWER_W * (t1 - t0), rel=1e-9, abs=1e-6), (uid, t0)


def test_the_final_flush_without_its_store_spools_exits_3_and_the_next_start_writes_it(
    tmp_path: Path, cli_env: dict[str, str], pg: PrivatePostgres
) -> None:
    spool_dir = tmp_path / "spool"
    config = write_config(tmp_path, spool_dir)
    spool = spool_path(spool_dir, HOST, pg.url)

    # Run 1: the database goes away under the agent, then the agent is stopped.
    first = RunningAgent(cli_env, config, pg.url, tmp_path / "run1.log")
    first.wait_for(lambda: len(stored_windows(pg.url)) >= 4)
    before = stored_windows(pg.url)
    pg.stop()
    first.wait_for_log("flush failed, holding")
    assert first.stop() == 3
    log = first.text()
    assert f"spooled to {spool}, written by the next start" in log
    assert "the final flush could not write" in log
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    spooled_1 = spooled_windows(spool)
    # Windows the store never took, later than any it had: the ones after the outage.
    assert spooled_1 and not set(spooled_1) & set(before)
    assert max(w[2] for w in spooled_1) > max(w[2] for w in before)
    n_batches_1 = len(read_spool(spool))

    # Run 2: the server is back but refuses every write (read-only): the spool stays,
    # its batches are held with the new ones, and the final flush spools them all.
    pg.start()
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("ALTER DATABASE postgres SET default_transaction_read_only = on"))
    second = RunningAgent(cli_env, config, pg.url, tmp_path / "run2.log")
    second.wait_for_log(f"the store refused {n_batches_1} of the {n_batches_1} batches spooled")
    second.wait_for_log(f"flush failed, holding {n_batches_1 + 1} batches")  # one of its own
    assert second.stop() == 3
    assert stored_windows(pg.url) == before  # nothing written meanwhile
    spooled_2 = spooled_windows(spool)
    assert set(spooled_1) < set(spooled_2)  # run 1's batches are still in it, and run 2's
    n_batches_2 = len(read_spool(spool))

    # Run 3: the store takes writes again; the spool is written before the first tick.
    with admin.connect() as conn:
        conn.execute(text("SET default_transaction_read_only = off"))
        conn.execute(text("ALTER DATABASE postgres RESET default_transaction_read_only"))
    admin.dispose()
    third = RunningAgent(cli_env, config, pg.url, tmp_path / "run3.log")
    third.wait_for(lambda: not spool.exists())
    third.wait_for_log(f"wrote the {n_batches_2} batches spooled in {spool} and deleted it")
    third.wait_for(lambda: len(stored_windows(pg.url)) > len(before) + len(spooled_2))
    assert third.stop() == 0
    assert not spool.exists()

    stored = stored_windows(pg.url)
    assert_conserved(stored)
    assert set(before) <= set(stored) and set(spooled_2) <= set(stored)
    # Per device, three runs of contiguous windows, one per agent run: the outage
    # and the refused writes left no hole, and run 1 is stored up to its stop.
    runs = chains(stored)
    assert set(runs) == {"synthetic-0", "synthetic-1"}
    for uid, spans in runs.items():
        assert len(spans) == 3, (uid, spans)
        ends = [max(t1 for u, _t0, t1, _e in spooled_1 if u == uid)]
        ends.append(max(t1 for u, _t0, t1, _e in spooled_2 if u == uid))
        assert [spans[0][1], spans[1][1]] == ends


def test_exit_4_when_neither_the_store_nor_the_spool_can_take_the_batches(
    tmp_path: Path, cli_env: dict[str, str], pg: PrivatePostgres
) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool folder should be")
    config = write_config(tmp_path, blocker)
    agent = RunningAgent(cli_env, config, pg.url, tmp_path / "run.log")
    agent.wait_for(lambda: len(stored_windows(pg.url)) >= 2)
    pg.stop()
    agent.wait_for_log("flush failed, holding")
    assert agent.stop() == 4
    lost = [line for line in agent.text().splitlines() if "they are lost" in line]
    assert len(lost) == 1 and "cannot write the spool" in lost[0]
    assert blocker.read_text() == "a file where the spool folder should be"
