"""Arbitrary span datagrams through wire -> ledger -> flush -> rollup -> report.

Issue 10's property, on a real SQLite file and on the real PostgreSQL server:
whatever any process writes to the span socket, the agent stays up, every
later well-formed span is stored, what it holds in memory stays within its
configured bounds, and every item it did not store is counted somewhere
(a refused datagram, a refused or shed span, a quarantined row).

The agent is the real one (``Agent`` with the NVML replay meter over the
serving recording, the real receiver's ``handle``, the real store and
rollups). Datagrams are handed to ``SocketReceiver.handle`` with the pid of
a recorded target, which is what ``receive_one`` does after the kernel
names the sender (SO_PASSCRED): the spans then split that target's
recorded GPU energy, so the flush, the split and the pricing all run.

Hostile datagrams are written with ``json.dumps`` (as any process on the
socket may write them), so they carry what the SDK never would: lone
surrogates as ``\\ud800`` escapes, NUL, ESC, strings past every column,
counts past 2**63, times ten thousand years ahead, wrong types, raw bytes.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from support import FIXTURES
from support.pg import PG_ADMIN_URL, fresh_database

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Span
from infermeter.report.build import build_report
from infermeter.sidecar.agent import Agent
from infermeter.sidecar.replay import replay_targets, targets_at
from infermeter.spans.receiver import SocketReceiver
from infermeter.spans.wire import encode_batch
from infermeter.store import migrate, schema
from infermeter.store.engine import open_engine
from infermeter.store.request_rollup import complete_until
from infermeter.store.writer import Store

TRACE = FIXTURES / "h100-serving"
HOST = "pipeline-props"
LEDGER_MAX = 300  # small, so that the bound is reached within an example
QUEUE_MAX = 2_000
HORIZON_S = 600.0
TICKS = 24  # seconds of the recording each example replays
PROBES = 5


# ----- stores made once, copied per example ------------------------------------------


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = open_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def pg_template() -> Iterator[str]:
    """A migrated database each example's is copied from: its name."""
    with fresh_database() as url:
        engine = open_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        name = make_url(url).database
        assert name is not None
        yield name


class Stores:
    """A fresh migrated store per example: a file copy, or CREATE DATABASE ... TEMPLATE."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.template: Any = request.getfixturevalue(
            "sqlite_template" if kind == "sqlite" else "pg_template"
        )
        self._made: list[str] = []

    def fresh(self) -> str:
        name = f"infermeter_ex_{uuid.uuid4().hex[:12]}"
        if self.kind == "sqlite":
            path = self.tmp / f"{name}.db"
            shutil.copyfile(self.template, path)
            return f"sqlite:///{path}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        admin.dispose()
        self._made.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self._made:
            return
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self._made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    s = Stores(request.param, request, tmp_path)
    try:
        yield s
    finally:
        s.drop_all()


# ----- what a hostile process writes ----------------------------------------------------

# Every code point, surrogates and controls included; json.dumps escapes what
# is not ASCII, so a lone surrogate travels as the six characters \ud800.
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF)
HOSTILE_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=20),
    st.sampled_from(["\ud800", "a\x00b", "\x1b[2J\x1b]0;x\x07", "[bold red]x[/]", ""]),
    st.integers(250, 400).map(lambda n: "t" * n),  # past every VARCHAR(255)
)
MAYBE_TEXT = st.one_of(st.none(), HOSTILE_TEXT, st.integers(), st.floats(allow_nan=False))
HOSTILE_COUNT = st.one_of(
    st.integers(0, 64),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -1]),
    st.none(),
    st.floats(allow_nan=False),
    st.booleans(),
    HOSTILE_TEXT,
)
# Offsets from the recording's clock: inside it, around its edges, far away.
OFFSET = st.one_of(
    st.floats(-5.0, TICKS + 5.0, allow_nan=False),
    st.sampled_from([-1e9, 1e6, 3.2e11, 1e15]),
)


# What a field may hold and still be a span (strings are cleaned, not refused).
FIELD_OK: list[st.SearchStrategy[Any]] = [
    st.integers(1, 2**31 - 1),  # pid: replaced by the kernel's anyway
    HOSTILE_TEXT.filter(bool),  # model
    st.none(),  # t0 and t1 are drawn below
    st.none(),
    st.integers(0, 64),  # items
    st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    st.one_of(st.none(), HOSTILE_TEXT),  # request_id
    st.one_of(st.none(), HOSTILE_TEXT),  # tenant
    st.dictionaries(HOSTILE_TEXT.filter(bool), HOSTILE_TEXT, max_size=4),
    st.one_of(st.none(), HOSTILE_TEXT),  # framework
    st.one_of(st.none(), HOSTILE_TEXT),  # device
    st.one_of(st.none(), HOSTILE_TEXT),  # dtype
    st.one_of(st.none(), st.integers(0, 2**40)),  # parameters
]
# What makes it no span: a wrong type, a count past its column, a bad time.
FIELD_BAD = st.one_of(
    st.sampled_from([2**31, 2**63 - 1, 2**64, -1, "1", 1.5, True, [], {}]), st.none()
)


@st.composite
def hostile_span(draw: st.DrawFn, t_start: float) -> Any:
    if draw(st.integers(0, 19)) == 0:  # now and then, not a span at all
        return draw(st.one_of(st.none(), HOSTILE_TEXT, st.lists(st.integers(), max_size=20)))
    a = [draw(f) for f in FIELD_OK]
    t0 = max(t_start + draw(OFFSET), 0.0)
    a[2], a[3] = t0, t0 + draw(st.one_of(st.floats(0.0, 3.0), st.sampled_from([1e12])))
    if draw(st.integers(0, 5)) == 0:  # one field broken
        a[draw(st.integers(0, len(a) - 1))] = draw(FIELD_BAD)
    return a


@st.composite
def hostile_datagram(draw: st.DrawFn, t_start: float) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    spans = draw(st.lists(hostile_span(t_start), max_size=30))
    if kind in (1, 2):  # a flood of well-shaped spans that end inside the horizon
        t0, t1 = t_start + 1.0, t_start + HORIZON_S / 2
        flood = draw(st.integers(0, LEDGER_MAX + 50))  # a datagram holds ~500 of them
        spans += [
            [1, f"flood-{i}", t0, t1, 1, None, None, None, None, {}, None, None, None, None]
            for i in range(flood)
        ]
    dropped = draw(st.one_of(st.integers(0, 10), st.sampled_from([2**63 - 1, 2**64, -1, "x"])))
    return json.dumps({"v": 1, "d": dropped, "s": spans}, allow_nan=True).encode()


# ----- the property -------------------------------------------------------------------------


def probes(pid: int, t0: float = 1.0) -> list[Span]:
    """Well-formed calls, sent after the hostile ones, in the window's last seconds."""
    return [
        Span(pid=pid, model=f"probe-{k}", t0=t0 + k, t1=t0 + k + 0.5, request_id=f"probe-{k}")
        for k in range(PROBES)
    ]


@dataclass
class Outcome:
    stored_probes: set[str]
    stored_calls: int
    quarantined_calls: int


def run_agent(url: str, datagrams: list[bytes], pid: int, t_start: float) -> tuple[Any, ...]:
    pm = make_plugin_manager()
    config = build_config(
        pm.config_options(),
        {
            "agent": {
                "host": HOST,
                "tick_s": 1.0,
                "flush_s": 4.0,
                "span_lag_s": 2.0,
                "ledger_max_spans": LEDGER_MAX,
                "span_horizon_s": HORIZON_S,
            }
        },
        environ={},
    )
    meters = pm.collect("infermeter_replay_meters", trace_dir=TRACE, config=config)
    targets = replay_targets(TRACE, config, pm, HOST)
    engine = open_engine(url)
    sock = Path(f"/tmp/im-props-{uuid.uuid4().hex[:8]}.sock")
    receiver = SocketReceiver(str(sock), max_queue=QUEUE_MAX, start=False)
    agent = Agent(
        config,
        pm,
        Store(engine, HOST),
        meters=meters,
        targets=targets_at(targets),
        span_sources=[receiver],
    )
    accepted = 0
    most_held = 0
    try:
        agent.start()
        agent.tick(t_start)
        for i in range(1, TICKS + 1):
            now = t_start + i
            # The hostile datagrams in the first half, the probes once they are done.
            for data in datagrams[(i - 1) * len(datagrams) // 12 : i * len(datagrams) // 12]:
                accepted += receiver.handle(data, pid)
            if i == TICKS - 9:
                for data in encode_batch(probes(pid, t_start + TICKS - 8)):
                    assert receiver.handle(data, pid)
                    accepted += 1
            assert receiver.stats()["queued"] <= QUEUE_MAX
            agent.tick(now)
            most_held = max(most_held, agent.ledger.stats()["held"])
            if i % 4 == 0:
                agent.flush(now)
        agent.flush(t_start + TICKS, final=True)
        agent.rollup(t_start + TICKS, final=True)
        report = build_report(engine, t_start, t_start + TICKS, "model", now=t_start + TICKS)
        with engine.connect() as conn:
            models = schema.models
            requests = schema.requests
            stored = set(
                conn.execute(
                    select(models.c.name)
                    .join(requests, requests.c.model_id == models.c.id)
                    .where(models.c.name.like("probe-%"))
                ).scalars()
            )
            calls = conn.execute(select(func.count()).select_from(requests)).scalar_one()
            quarantined = conn.execute(
                select(func.count())
                .select_from(schema.quarantine)
                .where(schema.quarantine.c.source == "call")
            ).scalar_one()
            until = complete_until(conn)
        return (
            Outcome(stored, calls, quarantined),
            agent.ledger.stats(),
            receiver.stats(),
            accepted,
            most_held,
            report,
            until,
        )
    finally:
        agent.close()
        receiver.close()
        engine.dispose()


@pytest.mark.slow
def test_any_datagrams_leave_the_agent_up_later_spans_stored_and_every_loss_counted(
    stores: Stores,
) -> None:
    t_start = min(
        float(w[0])
        for w in make_plugin_manager().collect(
            "infermeter_replay_window", flatten=False, trace_dir=TRACE
        )
    )
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), {"agent": {"host": HOST}}, environ={})
    # A recorded target that draws GPU energy in the replayed window.
    pid = replay_targets(TRACE, config, pm, HOST)[0].pid

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(datagrams=st.lists(hostile_datagram(t_start), min_size=1, max_size=24))
    def check(datagrams: list[bytes]) -> None:
        out, ledger, recv, accepted, most_held, report, until = run_agent(
            stores.fresh(), datagrams, pid, t_start
        )
        # Every later well-formed span is stored, whatever came before it.
        assert out.stored_probes == {f"probe-{k}" for k in range(PROBES)}
        # Memory: what the agent holds never passed its configured bounds.
        assert most_held <= LEDGER_MAX
        assert ledger["keys"] <= 2 * LEDGER_MAX + PROBES
        # Every datagram was either taken or refused for a counted reason.
        refused_datagrams = sum(
            recv.get(reason, 0)
            for reason in ("oversize", "malformed", "no_credentials", "ancillary")
        )
        assert accepted == recv["datagrams"]
        assert accepted + refused_datagrams == len(datagrams) + len(encode_batch(probes(1)))
        # Every span the ledger received is accounted for: refused at its door,
        # shed over its bound, still held (ends after the replayed window),
        # completed, or completed with no target to charge.
        refused_spans = sum(v for k, v in ledger.items() if k.startswith("refused_"))
        assert ledger["received"] == (
            refused_spans
            + ledger["shed"]
            + ledger["held"]
            + ledger["completed"]
            + ledger["unattributed"]
        )
        # Every completed call is in the store, or in quarantine with its reason.
        assert ledger["completed"] == out.stored_calls + out.quarantined_calls
        # The rollups reached the end of the window, and the report answers.
        assert list(until.values()) == [t_start + TICKS]
        assert report.total_requests.requests >= PROBES

    check()
