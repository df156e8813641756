"""``infermeter report``: the totals are the stored costs, whatever the grouping.

The H100 recordings are replayed with the example price card through the
real CLI; the report's totals must equal the sum of the stored shares'
costs to the cent, with and without --share-idle, on SQLite and PostgreSQL.
A synthetic store of several hours (tests/support/synthetic_store.py) takes the
report through its rollups, whose answers must equal those read from the
raw rows.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import delete, func, insert, select, text
from support import FIXTURES, ROOT, infermeter_cmd, synthetic_store
from support.replayed import ReplayedStores

from infermeter.cli.report import render, sig
from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.report.build import GROUPINGS, build_report
from infermeter.report.render import CSV_COLUMNS, csv_rows, report_json
from infermeter.sidecar.agent import Agent
from infermeter.store import histogram as cost_histogram
from infermeter.store import migrate, schema
from infermeter.store.engine import open_engine
from infermeter.store.models import (
    AgentState,
    RecommendationRow,
    RequestHourly,
    RequestRow,
    UsageHourly,
    UsageShare,
)
from infermeter.store.request_rollup import DAILY_KEY, complete_until, rollup_store
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"
# Both recordings lie inside this range.
FROM, TO = "1795750000", "1795770000"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*infermeter_cmd(), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def replayed(recordings_db_url: str) -> str:
    """Both H100 recordings replayed, with the example card, into a store of its own."""
    return recordings_db_url


@pytest.fixture(scope="module")
def replayed_sqlite(
    tmp_path_factory: pytest.TempPathFactory,
    synthetic_plugin_path: Path,
    template_stores: ReplayedStores,
) -> tuple[str, dict[str, str]]:
    """One replayed SQLite store shared by the tests that only read it through the CLI."""
    home = tmp_path_factory.mktemp("replayed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.update(PYTHONPATH=str(synthetic_plugin_path), HOME=str(home))
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    url = template_stores.sqlite(home / "store.db", (SERVING, ENCODER))
    return url, env


def stored_costs(url: str) -> dict[str, float]:
    engine = open_engine(url)
    with engine.connect() as conn:
        s = UsageShare
        row = conn.execute(
            select(
                func.sum(s.energy_j),
                func.sum(s.energy_cost),
                func.sum(s.capacity_cost),
                func.sum(s.carbon_g),
                func.count(),
                func.count(s.energy_cost),
                func.count(s.capacity_cost),
            )
        ).one()
    engine.dispose()
    assert row[4] > 0 and row[4] == row[5] == row[6], "the example card prices every share"
    return {"kwh": row[0] / 3.6e6, "energy": row[1], "capacity": row[2], "carbon": row[3]}


def test_replayed_totals_are_the_stored_costs_to_the_cent(
    replayed: str, cli_env: dict[str, str]
) -> None:
    stored = stored_costs(replayed)
    assert stored["energy"] + stored["capacity"] > 0.01  # cents are a real test here
    for extra in ([], ["--share-idle"]):
        for by in ("model", "tenant", "device"):
            done = run_cli(
                cli_env, "--db", replayed, "report", "--from", FROM, "--to", TO, "--by", by,
                "--json", *extra,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            out = json.loads(done.stdout)
            t = out["totals"]["costs"]
            cost = t["cost"]["value"]
            assert round(cost, 2) == round(stored["energy"] + stored["capacity"], 2)
            assert cost == pytest.approx(stored["energy"] + stored["capacity"], rel=1e-9)
            assert t["energy_cost"]["value"] == pytest.approx(stored["energy"], rel=1e-9)
            assert t["capacity_cost"]["value"] == pytest.approx(stored["capacity"], rel=1e-9)
            assert t["carbon_g"]["value"] == pytest.approx(stored["carbon"], rel=1e-9)
            assert t["energy_kwh"] == pytest.approx(stored["kwh"], rel=1e-9)
            # The groups add up to the totals, idle spread or not.
            groups = out["groups"]
            assert sum(g["costs"]["cost"]["value"] for g in groups) == pytest.approx(cost, rel=1e-9)
            assert sum(g["costs"]["energy_kwh"] for g in groups) == pytest.approx(
                stored["kwh"], rel=1e-9
            )
            kinds = {g["kind"] for g in groups}
            if by == "device":
                assert kinds == {"group"}
            elif extra:
                assert "idle" not in kinds and "keepwarm" not in kinds  # every hour was used
            else:
                assert {"idle", "keepwarm"} <= kinds


def test_replayed_report_names_the_models_and_counts_every_call(replayed: str) -> None:
    engine = open_engine(replayed)
    report = build_report(engine, float(FROM), float(TO), "model")
    with engine.connect() as conn:
        calls = conn.execute(select(func.count()).select_from(RequestRow)).scalar_one()
        by_model = dict(
            conn.execute(
                text(
                    "SELECT m.name, count(*) FROM requests r JOIN models m ON m.id = r.model_id "
                    "GROUP BY m.name"
                )
            ).all()
        )
        # Agent.rollup (run by replay) filled the request rollup too.
        rolled = conn.execute(
            select(func.sum(RequestHourly.requests)).where(RequestHourly.grain == "host")
        ).scalar_one()
    engine.dispose()
    got = {g.label: g for g in report.groups if g.kind == "group"}
    assert {"resnet50", "encoder", "mlp"} <= set(got)
    assert report.total_requests.requests == calls == rolled  # no request ids: a call each
    for name, n in by_model.items():
        assert got[name].requests is not None and got[name].requests.requests == n
        assert got[name].methods and got[name].bases
    assert report.methods["measured"] > 0.9  # the H100's counter
    assert set(report.bases) >= {"sm-util", "cpu-seconds", "baseline"}


def comparable(report_data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report_data.items() if k not in ("read", "generated_at")}


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats to 1e-9 relative: rollups and raw rows add in another order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), where
    else:
        assert a == b, where


@pytest.fixture
def synthetic(db_url: str) -> synthetic_store.Synthetic:
    return synthetic_store.build(db_url)


def test_rollups_give_what_the_raw_rows_give(synthetic: synthetic_store.Synthetic) -> None:
    engine = open_engine(synthetic.url)
    # Edges inside hours at both ends: raw rows there, rollups in between.
    lo, hi = synthetic.t_start + 600, synthetic.t_end - 900
    for by in GROUPINGS:
        for share_idle in (False, True):
            fast = build_report(engine, lo, hi, by, share_idle, use_rollups=True, now=0)
            slow = build_report(engine, lo, hi, by, share_idle, use_rollups=False, now=0)
            assert fast.rollup_hours == 4 and slow.rollup_hours == 0
            assert_close(comparable(report_json(fast)), comparable(report_json(slow)), by)
            assert fast.total_requests.requests > 1000
    engine.dispose()


def test_a_partial_last_hour_is_read_from_its_rollup(
    synthetic: synthetic_store.Synthetic,
) -> None:
    """Rolled up to 50 minutes into an hour: that hour's rollup rows cover [hour, cut)."""
    engine = open_engine(synthetic.url)
    cut = synthetic.t_end - 1800  # a flush boundary, 50 minutes into its hour
    assert cut % 3600 == 3000
    store = Store(engine, synthetic_store.HOST)
    rollup_store(store, synthetic.t_start, cut)
    store.close()
    lo, hi = synthetic.t_start + 600, synthetic.t_end
    first_whole = lo - lo % 3600 + 3600
    for by in GROUPINGS:
        fast = build_report(engine, lo, hi, by, use_rollups=True, now=0)
        slow = build_report(engine, lo, hi, by, use_rollups=False, now=0)
        # Three whole hours and the partial one; raw rows only outside them.
        assert fast.rollup_hours == 4
        assert fast.raw_ranges == ((lo, first_whole), (cut, hi))
        assert_close(comparable(report_json(fast)), comparable(report_json(slow)), by)
    # A range that ends before the cut reads the partial hour raw, not its rollup.
    early = build_report(engine, lo, cut - 60, "model", use_rollups=True, now=0)
    assert early.rollup_hours == 3
    assert early.raw_ranges == ((lo, first_whole), (cut - 3000, cut - 60))
    engine.dispose()


def test_the_agent_rolls_up_only_to_where_rows_are_final(
    synthetic: synthetic_store.Synthetic,
) -> None:
    """Rows of the last span lag + two flushes may still come: the rollups stop before them."""
    engine = open_engine(synthetic.url)
    pm = make_plugin_manager()
    config = build_config(
        pm.config_options(),
        {"agent": {"host": synthetic_store.HOST, "span_lag_s": 60.0, "flush_s": 60.0}},
        environ={},
    )
    agent = Agent(config, pm, store=Store(engine, synthetic_store.HOST))
    now = synthetic.t_end
    agent.rollup(now)
    cut = now - 180.0  # 60 s of span lag and two 60 s flushes
    with engine.connect() as conn:
        assert list(complete_until(conn).values()) == [cut]
        last_hour = cut - cut % 3600
        rolled, raw = (
            conn.execute(select(func.sum(table.energy_j)).where(when >= last_hour)).scalar_one()
            for table, when in (
                (UsageHourly, UsageHourly.hour),
                (UsageShare, UsageShare.t0),
            )
        )
        before_cut = conn.execute(
            select(func.sum(UsageShare.energy_j)).where(
                UsageShare.t0 >= last_hour, UsageShare.t0 < cut
            )
        ).scalar_one()
    assert rolled == pytest.approx(before_cut) and rolled < raw
    lo = synthetic.t_start + 600
    fast = build_report(engine, lo, now, "tenant", now=0)
    slow = build_report(engine, lo, now, "tenant", use_rollups=False, now=0)
    assert fast.raw_ranges[-1] == (cut, now)
    assert_close(comparable(report_json(fast)), comparable(report_json(slow)), "tenant")
    # The last rollup, after the final flush, goes all the way.
    agent.rollup(now, final=True)
    with engine.connect() as conn:
        assert list(complete_until(conn).values()) == [now]
    agent.close()
    engine.dispose()


def test_whole_days_are_read_from_the_daily_rollup(db_url: str) -> None:
    """Over days, requests come from request_daily; the figures are the raw rows' all the same."""
    days = synthetic_store.build(db_url, hours=54, window_s=600.0)
    engine = open_engine(days.url)
    lo, hi = days.t_start + 600, days.t_end - 900  # one whole UTC day inside, hours around it
    for by in ("model", "tenant", "target", "host"):
        fast = build_report(engine, lo, hi, by, use_rollups=True, now=0)
        slow = build_report(engine, lo, hi, by, use_rollups=False, now=0)
        assert fast.rollup_days == 1 and slow.rollup_days == 0
        assert_close(comparable(report_json(fast)), comparable(report_json(slow)), by)
    count_daily = select(func.count()).select_from(schema.request_daily)
    with engine.connect() as conn:
        daily_rows = conn.execute(count_daily).scalar_one()
    assert daily_rows > 0
    # A store from before request_daily: no daily rows and no daily state. The
    # report reads hours meanwhile; the agent's next rollup backfills every day.
    with engine.begin() as conn:
        conn.execute(delete(schema.request_daily))
        conn.execute(delete(AgentState).where(AgentState.key == DAILY_KEY))
    before = build_report(engine, lo, hi, "tenant", now=0)
    assert before.rollup_days == 0
    store = Store(engine, synthetic_store.HOST)
    rollup_store(store, days.t_end - 3600, days.t_end)
    store.close()
    with engine.connect() as conn:
        assert conn.execute(count_daily).scalar_one() == daily_rows
    after = build_report(engine, lo, hi, "tenant", now=0)
    assert after.rollup_days == 1
    assert_close(comparable(report_json(after)), comparable(report_json(before)), "backfill")
    engine.dispose()


def test_rollup_is_idempotent_and_later_rows_are_counted(
    synthetic: synthetic_store.Synthetic,
) -> None:
    engine = open_engine(synthetic.url)
    lo, hi = synthetic.t_start, synthetic.t_end
    before = report_json(build_report(engine, lo, hi, "tenant", now=0))
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(RequestHourly)).scalar_one()
    store = Store(engine, synthetic_store.HOST)
    rollup_store(store, lo, hi)  # again, over hours already rolled up
    rollup_store(store, lo, hi)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RequestHourly)).scalar_one() == rows
    assert_close(
        comparable(report_json(build_report(engine, lo, hi, "tenant", now=0))), comparable(before)
    )
    # A late call in a rolled-up hour: the next rollup of that hour counts it.
    with engine.begin() as conn:
        some = conn.execute(select(RequestRow).limit(1)).one()
        conn.execute(
            insert(RequestRow).values(
                target_id=some.target_id,
                model_id=some.model_id,
                request_id=None,
                t0=some.t0 + 0.001,
                t1=some.t0 + 0.002,
                items=3,
                tenant="acme",
                tags={},
                energy_j=1.0,
                method="measured",
                energy_cost=1.0,
                capacity_cost=0.0,
                carbon_g=1.0,
            )
        )
    rollup_store(store, some.t0, hi)
    after = build_report(engine, lo, hi, "tenant", now=0)
    acme = next(g for g in after.groups if g.key == "acme")
    acme_before = next(g for g in before["groups"] if g["key"] == "acme")
    assert acme.requests is not None
    assert acme.requests.requests == acme_before["requests"]["requests"] + 1
    assert acme.requests.items == acme_before["requests"]["items"] + 3
    engine.dispose()


def exact_costs(url: str, lo: float, hi: float) -> dict[str | None, list[float]]:
    """Per tenant, the cost of every request: calls summed per (hour, request id)."""
    engine = open_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                RequestRow.id,
                RequestRow.t0,
                RequestRow.tenant,
                RequestRow.request_id,
                RequestRow.energy_cost,
                RequestRow.capacity_cost,
            ).where(RequestRow.t0 >= lo, RequestRow.t0 < hi)
        ).all()
    engine.dispose()
    units: dict[tuple[Any, ...], float | None] = {}
    for r in rows:
        unit = (r.tenant, math.floor(r.t0 / 3600), r.request_id or f"call {r.id}")
        cost = (
            None
            if r.energy_cost is None or r.capacity_cost is None
            else r.energy_cost + r.capacity_cost
        )
        prev = units.get(unit, 0.0)
        units[unit] = None if prev is None or cost is None else prev + cost
    out: dict[str | None, list[float]] = defaultdict(list)
    for (tenant, _h, _id), cost in units.items():
        if cost is not None:
            out[tenant].append(cost)
    return out


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_percentiles_are_within_the_stated_resolution(
    synthetic: synthetic_store.Synthetic,
) -> None:
    lo, hi = synthetic.t_start + 600, synthetic.t_end - 900
    engine = open_engine(synthetic.url)
    report = build_report(engine, lo, hi, "tenant")
    engine.dispose()
    exact = exact_costs(synthetic.url, lo, hi)
    checked = 0
    for g in (g for g in report.groups if g.kind == "group"):
        assert g.requests is not None
        costs = exact[g.key]
        assert g.requests.requests - g.requests.unpriced == len(costs)
        for q, got in ((0.5, g.requests.cost_p50), (0.95, g.requests.cost_p95)):
            want = nearest_rank(costs, q)
            assert got is not None
            assert abs(got / want - 1) <= cost_histogram.RESOLUTION + 1e-12, (g.key, q)
            checked += 1
    assert checked == 4  # acme and globex, p50 and p95
    assert report.total_requests.unpriced > 0  # beta's calls without a capacity price


def test_share_idle_spreads_each_device_hour_by_active_energy(
    synthetic: synthetic_store.Synthetic,
) -> None:
    lo, hi = synthetic.t_start, synthetic.t_end
    engine = open_engine(synthetic.url)
    plain = build_report(engine, lo, hi, "model")
    shared = build_report(engine, lo, hi, "model", share_idle=True)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.device_id, s.t0, s.bucket, m.name, s.energy_j, "
                "s.energy_cost + coalesce(s.capacity_cost, 0) FROM usage_shares s "
                "LEFT JOIN models m ON m.id = s.model_id"
            )
        ).all()
    engine.dispose()
    pool: dict[tuple[int, int], float] = defaultdict(float)
    active: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for device, t0, bucket, model, energy, cost in rows:
        dh = (device, math.floor(t0 / 3600))
        if bucket in ("idle", "keepwarm"):
            pool[dh] += cost
        elif bucket == "active":
            active[dh][model] += energy
    want: dict[str, float] = defaultdict(float)
    unused = 0.0
    for dh, cost in pool.items():
        users = active.get(dh)
        if not users:
            unused += cost
            continue
        for model, energy in users.items():
            want[model] += cost * energy / sum(users.values())
    by_label = {g.label: g for g in shared.groups}
    for model in ("alpha", "beta"):
        spread = by_label[model].costs
        assert _value(spread.idle_cost) + _value(spread.keepwarm_cost) == pytest.approx(
            want[model], rel=1e-9
        )
        plain_g = next(g for g in plain.groups if g.label == model)
        assert _value(spread.cost) == pytest.approx(
            _value(plain_g.costs.cost) + want[model], rel=1e-9
        )
    # The quiet hour's GPU idle had nobody to go to: it stays idle.
    assert unused > 0
    assert _value(by_label["(idle)"].costs.cost) == pytest.approx(unused, rel=1e-9)
    assert "(keep-warm)" not in by_label
    assert _value(shared.totals.cost) == pytest.approx(_value(plain.totals.cost), rel=1e-12)


def _value(a: Any) -> float:
    assert a.value is not None
    return float(a.value)


def test_unpriced_is_never_zero(db_url: str, tmp_path: Path) -> None:
    synthetic = synthetic_store.build(db_url, hours=2, priced=False)
    engine = open_engine(synthetic.url)
    report = build_report(engine, synthetic.t_start, synthetic.t_end, "model")
    engine.dispose()
    assert report.totals.energy_kwh > 0
    assert report.totals.cost.value is None and report.totals.cost.unpriced_kwh > 0
    assert report.totals.carbon_g.value is None
    data = report_json(report)
    assert data["totals"]["costs"]["cost"] == {
        "value": None,
        "unpriced_kwh": pytest.approx(report.totals.energy_kwh),
    }
    text_out = rendered(report)
    assert "unpriced" in text_out
    assert not re.search(r"\$0(\s|$)", text_out)
    per_group = [row[CSV_COLUMNS.index("cost")] for row in csv_rows(report)]
    assert per_group and all(c == "unpriced" for c in per_group)


def test_partly_priced_figures_say_what_they_leave_out(
    synthetic: synthetic_store.Synthetic,
) -> None:
    engine = open_engine(synthetic.url)
    report = build_report(engine, synthetic.t_start, synthetic.t_end, "device")
    engine.dispose()
    cpu = next(g for g in report.groups if "CPU" in g.label)
    gpu = next(g for g in report.groups if "H100" in g.label)
    assert cpu.costs.capacity_cost.value is None  # no rate for that CPU on the card
    assert cpu.costs.energy_cost.value is not None and cpu.costs.energy_cost.value > 0
    assert cpu.costs.cost.unpriced_kwh == pytest.approx(cpu.costs.energy_kwh)
    assert gpu.costs.cost.unpriced_kwh == 0
    assert report.totals.capacity_cost.unpriced_kwh == pytest.approx(cpu.costs.energy_kwh)
    out = rendered(report)
    cpu_line = next(line for line in out.splitlines() if line.startswith("synthetic CPU"))
    assert "*" in cpu_line and "leaves out" in out
    assert report_json(report)["groups"][1]["costs"]["capacity_cost"]["value"] is None


def rendered(report: Any, width: int = 80) -> str:
    buf = io.StringIO()
    Console(width=width, file=buf).print(render(report))
    return buf.getvalue()


def test_text_fits_80_columns(synthetic: synthetic_store.Synthetic) -> None:
    engine = open_engine(synthetic.url)
    for by in GROUPINGS:
        for share_idle in (False, True):
            report = build_report(engine, synthetic.t_start, synthetic.t_end, by, share_idle)
            out = rendered(report)
            assert max(len(line) for line in out.splitlines()) <= 80, by
            assert f"Cost by {by}" in out and "Top recommendations" in out
            assert "\x1b[" not in out
            if by == "model":
                assert "alpha" in out and "beta" in out
                assert ("(idle)" in out) is True  # the quiet hour stays idle in both modes
    engine.dispose()


def test_cli_text_is_plain_when_piped_and_names_the_models(
    replayed_sqlite: tuple[str, dict[str, str]],
) -> None:
    url, env = replayed_sqlite
    done = run_cli(env, "--db", url, "report", "--from", FROM, "--to", TO)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in ("resnet50", "encoder", "mlp", "(idle)", "(keep-warm)", "example-2026-11"):
        assert name in out
    assert "none open" in out


def test_recommendations_open_ones_ranked_by_savings(db_url: str) -> None:
    synthetic = synthetic_store.build(db_url, hours=1)
    engine = open_engine(synthetic.url)
    rows = [
        ("batch", "model", "alpha", 120.0, "open"),
        ("release-idle", "device", "GPU-synthetic-0", 900.0, "open"),
        ("quantize", "model", "beta", 5000.0, "dismissed"),
        ("move-to-cpu", "model", "beta", 30.0, "open"),
    ]
    with engine.begin() as conn:
        for i, (kind, subject_kind, subject, usd, status) in enumerate(rows):
            conn.execute(
                insert(RecommendationRow).values(
                    stable_id=f"id{i}",
                    kind=kind,
                    subject_kind=subject_kind,
                    subject=subject,
                    evidence={},
                    savings_usd_month=usd,
                    savings_usd_low=usd / 2,
                    savings_usd_high=usd * 2,
                    savings_kwh_month=usd * 3,
                    savings_kgco2e_month=usd,
                    confidence="medium",
                    confidence_reason="test",
                    how_to_apply=f"do {kind}",
                    status=status,
                    first_seen=0.0,
                    last_seen=0.0,
                )
            )
    report = build_report(engine, synthetic.t_start, synthetic.t_end, top_recommendations=2)
    engine.dispose()
    assert [r.kind for r in report.recommendations] == ["release-idle", "batch"]
    out = rendered(report)
    assert "1. release-idle" in out and "2. batch" in out and "quantize" not in out


def json_paths(value: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            out |= json_paths(v, k)
    elif isinstance(value, list):
        for v in value:
            out |= json_paths(v, prefix)
    return out


def test_json_is_versioned_and_every_field_documented(
    synthetic: synthetic_store.Synthetic,
) -> None:
    engine = open_engine(synthetic.url)
    data = report_json(build_report(engine, synthetic.t_start, synthetic.t_end, "tenant"))
    engine.dispose()
    assert data["schema"] == "infermeter.report" and data["version"] == 1
    doc = (ROOT / "docs" / "report.json.md").read_text()
    missing = sorted(k for k in json_paths(data) if f"`{k}`" not in doc)
    assert not missing, f"docs/report.json.md does not document {missing}"
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_csv_has_one_row_per_group(replayed_sqlite: tuple[str, dict[str, str]]) -> None:
    url, env = replayed_sqlite
    done = run_cli(env, "--db", url, "report", "--from", FROM, "--to", TO, "--csv")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    labels = [line.split(",")[2] for line in lines[1:]]
    assert "resnet50" in labels and "(idle)" in labels


def test_bad_options_are_one_line(sqlite_url: str, cli_env: dict[str, str]) -> None:
    empty = run_cli(cli_env, "--db", sqlite_url, "report")
    assert empty.returncode == 2 and "is empty" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    both = run_cli(cli_env, "--db", sqlite_url, "report", "--since", "1h", "--from", "0")
    assert both.returncode == 2 and "not both" in both.stderr
    bad = run_cli(cli_env, "--db", sqlite_url, "report", "--since", "yesterday")
    assert bad.returncode == 2 and "duration" in bad.stderr
    engine = open_engine(sqlite_url)
    migrate.upgrade(engine, "0002")
    engine.dispose()
    old = run_cli(cli_env, "--db", sqlite_url, "report")
    assert old.returncode == 2 and "db upgrade" in old.stderr


def test_an_empty_range_says_what_the_store_holds(
    replayed_sqlite: tuple[str, dict[str, str]],
) -> None:
    url, env = replayed_sqlite
    done = run_cli(env, "--db", url, "report", "--from", "2020-01-01", "--to", "2020-01-02")
    assert done.returncode == 0, done.stderr
    assert "No data in this range" in done.stdout and "2026-11-27" in done.stdout


def test_sig() -> None:
    # The time grammar's own tests are in tests/cli/test_time.py.
    assert sig(0.000123) == "1.23e-4" and sig(12345.6) == "12,346" and sig(0.5) == "0.5"


def test_the_report_command_loads_neither_the_orm_nor_alembic(
    replayed_sqlite: tuple[str, dict[str, str]],
) -> None:
    """Half of a report's second is start-up: the report path reads Core tables only."""
    url, env = replayed_sqlite
    script = (
        "import sys\n"
        "from infermeter.cli import main\n"
        f"sys.argv = ['infermeter', '--db', {url!r}, 'report', '--from', {FROM!r}, "
        f"'--to', {TO!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('sqlalchemy.orm', 'alembic', 'psutil', 'pynvml', 'apscheduler')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "print('LOADED', ' '.join(loaded), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "resnet50" in done.stdout  # it did report
    assert done.stderr.strip().splitlines()[-1] == "LOADED"


def test_per_token_figures_divide_the_groups_energy_and_cost_by_its_requests_tokens(
    synthetic: synthetic_store.Synthetic,
) -> None:
    """The truth: tokens summed here from the raw calls, each request's once (the
    largest any call of it carries, per model and tenant, per hour as the rollup
    groups), then the group's own energy and cost over them."""
    engine = open_engine(synthetic.url)
    report = build_report(engine, synthetic.t_start, synthetic.t_end, "model", now=0)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.name, r.tenant, r.request_id, r.id, CAST(r.t0 / 3600 AS INTEGER), "
                "r.tokens_in, r.tokens_out FROM requests r JOIN models m ON m.id = r.model_id"
            )
        ).all()
    engine.dispose()
    per_request: dict[tuple[Any, ...], int] = {}
    for model, tenant, request_id, call_id, hour, t_in, _ in rows:
        key = (model, tenant, hour, request_id if request_id is not None else f"#{call_id}")
        per_request[key] = max(per_request.get(key, 0), t_in or 0)
    tokens_in: dict[str, int] = defaultdict(int)
    for (model, *_), t_in in per_request.items():
        tokens_in[model] += t_in
    got = {g.label: g for g in report.groups if g.kind == "group"}
    alpha, beta = got["alpha"], got["beta"]
    assert alpha.requests is not None and alpha.requests.tokens_in == tokens_in["alpha"] > 0
    energy_j = alpha.costs.energy_kwh * 3.6e6
    assert alpha.j_per_token == pytest.approx(energy_j / tokens_in["alpha"], rel=1e-9)
    cost = alpha.costs.cost.value
    assert cost is not None and alpha.cost_per_1m_tokens_in is not None
    assert alpha.cost_per_1m_tokens_in.value == pytest.approx(
        cost * 1e6 / tokens_in["alpha"], rel=1e-9
    )
    assert alpha.cost_per_1m_tokens_out is None  # no output tokens: no price per one
    assert beta.j_per_token is None and beta.cost_per_1m_tokens_in is None  # no tokens
    doc = report_json(report)["groups"]
    a = next(g for g in doc if g["label"] == "alpha")
    assert a["j_per_token"] == alpha.j_per_token
    assert a["cost_per_1m_tokens_in"]["value"] == alpha.cost_per_1m_tokens_in.value
    row = next(r for r in csv_rows(report) if r[2] == "alpha")
    assert row[CSV_COLUMNS.index("j_per_token")] == repr(alpha.j_per_token)
    text_out = rendered(report, width=140)
    assert "J/token" in text_out and "per 1M in" in text_out
