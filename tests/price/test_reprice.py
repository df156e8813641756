"""`infermeter reprice`: stored rows priced again with a changed card, on both databases."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from support import FIXTURES, infermeter_cmd

from infermeter.config import build_config
from infermeter.hookspecs import hookimpl
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_from_config
from infermeter.price.reprice import reprice
from infermeter.records import Price
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
V2 = {
    "prices": {
        "version": "v2",
        "electricity_per_kwh": 0.26,
        "devices": {"H100": {"cloud_hourly": 4.5}},
    }
}
V2_TOML = """
[prices]
version = "v2"
electricity_per_kwh = 0.26

[prices.devices.H100]
cloud_hourly = 4.5
"""


def im(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*infermeter_cmd(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def rows(engine: Engine, sql: str) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r[0]: r[1:] for r in conn.execute(text(sql))}


SHARES = (
    "SELECT s.id, s.energy_cost, s.capacity_cost, s.carbon_g, c.version, d.kind, s.t0, s.t1 "
    "FROM usage_shares s JOIN devices d ON d.id = s.device_id "
    "LEFT JOIN price_cards c ON c.id = s.price_card_id"
)
CALLS = (
    "SELECT r.id, r.energy_cost, r.capacity_cost, r.carbon_g, c.version, m.name, r.t0 "
    "FROM requests r JOIN models m ON m.id = r.model_id "
    "LEFT JOIN price_cards c ON c.id = r.price_card_id"
)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12)


def totals(engine: Engine, table: str) -> tuple[float, float, float]:
    with engine.connect() as conn:
        r = conn.execute(
            text(f"SELECT SUM(energy_cost), SUM(capacity_cost), SUM(carbon_g) FROM {table}")
        ).one()
    return float(r[0]), float(r[1]), float(r[2])


def test_reprice_with_a_new_card(
    serving_db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    db_url = serving_db_url  # h100-serving replayed with the example card
    engine = open_engine(db_url)
    shares_before = rows(engine, SHARES)
    calls_before = rows(engine, CALLS)
    hourly_before = totals(engine, "usage_hourly")
    assert {r[3] for r in shares_before.values()} == {"example-2026-11"}
    assert {r[4] for r in shares_before.values()} == {"gpu", "cpu"}
    config = tmp_path / "v2.toml"
    config.write_text(V2_TOML)

    r = im(cli_env, "--config", str(config), "--db", db_url, "reprice", "--since", "2026-11-01")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # piped: no progress bar
    lines = r.stdout.splitlines()
    n = len(shares_before) + len(calls_before)
    assert lines[0].startswith(
        f"repriced {len(shares_before)} shares and {len(calls_before)} calls from "
        "2026-11-01T00:00:00Z to now on h100-serving with card v2"
    )
    assert lines[0].endswith(f"(rows were priced by: example-2026-11 x{n})")
    assert "hourly rollups rebuilt for 1 hours" in lines

    shares = rows(engine, SHARES)
    for i, (energy, capacity, carbon, version, kind, *_) in shares.items():
        old = shares_before[i]
        assert version == "v2"
        assert close(energy, 2 * old[0])  # electricity 0.13 -> 0.26
        assert close(capacity, old[1] * (1.5 if kind == "gpu" else 1.0))  # H100 3.0 -> 4.5
        assert close(carbon, old[2])
    calls = rows(engine, CALLS)
    assert calls.keys() == calls_before.keys()
    for i, (energy, capacity, carbon, version, model, _) in calls.items():
        old = calls_before[i]
        assert version == "v2"
        assert close(energy, 2 * old[0]) and close(carbon, old[2])
        ratio = capacity / old[1]
        if model == "mlp":  # on the CPU only: its capacity did not change
            assert close(ratio, 1.0), i
        else:  # GPU and CPU time: between the two changes
            assert 1.0 < ratio <= 1.5 + 1e-12, (i, ratio)
    hourly = totals(engine, "usage_hourly")
    assert close(hourly[0], 2 * hourly_before[0]) and close(hourly[2], hourly_before[2])
    for got, want in zip(hourly, totals(engine, "usage_shares"), strict=True):
        assert math.isclose(got, want, rel_tol=1e-9)
    with engine.connect() as conn:  # the request rollups follow the calls
        rolled = conn.execute(
            text("SELECT SUM(energy_cost) FROM request_hourly WHERE grain = 'host'")
        ).scalar_one()
    assert math.isclose(rolled, totals(engine, "requests")[0], rel_tol=1e-9)

    # Again with the same card: nothing moves.
    r = im(cli_env, "--config", str(config), "--db", db_url, "reprice", "--since", "2026-11-01")
    assert r.returncode == 0 and f"(rows were priced by: v2 x{n})" in r.stdout
    assert rows(engine, SHARES) == shares and rows(engine, CALLS) == calls
    engine.dispose()


def test_a_card_changed_under_its_version_is_refused(
    serving_db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    db_url = serving_db_url  # h100-serving replayed with the example card
    engine = open_engine(db_url)
    before = (rows(engine, SHARES), rows(engine, CALLS), totals(engine, "usage_hourly"))
    config = tmp_path / "same-version.toml"
    config.write_text('[prices]\nversion = "example-2026-11"\nelectricity_per_kwh = 0.5\n')
    r = im(cli_env, "--config", str(config), "--db", db_url, "reprice", "--since", "7d")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "infermeter: error: price card 'example-2026-11' is stored with other prices; "
        "give the changed card a new prices.version"
    ]
    assert (rows(engine, SHARES), rows(engine, CALLS), totals(engine, "usage_hourly")) == before
    engine.dispose()


def test_bad_since_is_one_line(sqlite_url: str, cli_env: dict[str, str]) -> None:
    r = im(cli_env, "--db", sqlite_url, "reprice", "--since", "last tuesday")
    assert r.returncode == 2
    # click's usage error (the time grammar of infermeter.cli._time, shared by every
    # command): the usage, then one line naming the option, the value and the forms.
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '--since': 'last tuesday' is not a time: give a duration "
        "ago (90m, 24h, 7d, 2w) or ISO 8601 (2026-11-27T06:00, UTC unless it has an offset) "
        "or epoch seconds"
    )


def test_since_leaves_earlier_rows_alone(serving_sqlite_url: str) -> None:
    sqlite_url = serving_sqlite_url  # h100-serving replayed with the example card
    engine = open_engine(sqlite_url)
    shares_before = rows(engine, SHARES)
    calls_before = rows(engine, CALLS)
    times = sorted(r[5] for r in shares_before.values())
    since = times[len(times) // 2]
    pm = make_plugin_manager()
    card = card_from_config(build_config(pm.config_options(), V2, environ={}))
    result = reprice(engine, card, pm, since)
    shares = rows(engine, SHARES)
    untouched = [i for i, r in shares_before.items() if r[6] <= since]
    touched = [i for i, r in shares_before.items() if r[6] > since]
    assert untouched and touched and result.shares == len(touched)
    assert all(shares[i] == shares_before[i] for i in untouched)
    assert all(
        shares[i][3] == "v2" and close(shares[i][0], 2 * shares_before[i][0]) for i in touched
    )
    calls = rows(engine, CALLS)
    early = [i for i, r in calls_before.items() if r[5] < since]
    late = [i for i, r in calls_before.items() if r[5] >= since]
    assert early and late and result.calls == len(late)
    assert all(calls[i] == calls_before[i] for i in early)
    assert all(calls[i][3] == "v2" for i in late)
    engine.dispose()


class FlatPrices:
    """A pricing plugin: every share costs the same, whatever the card says."""

    @hookimpl
    def infermeter_price(self, share: Any, device: Any, card: Any, window_j: float) -> Price:
        return Price(1.0, 2.0, 3.0)


def test_pricing_plugins_win_as_at_flush(serving_db_url: str) -> None:
    db_url = serving_db_url  # h100-serving replayed with the example card
    engine = open_engine(db_url)
    pm = make_plugin_manager()
    pm.register(FlatPrices(), name="flat-prices")
    card = card_from_config(build_config(pm.config_options(), V2, environ={}))
    result = reprice(engine, card, pm, 0.0)
    shares = rows(engine, SHARES)
    assert result.shares == len(shares) > 0
    assert {r[:4] for r in shares.values()} == {(1.0, 2.0, 3.0, "v2")}
    calls = rows(engine, CALLS)  # calls take their capacity from the plugin's share prices
    assert all(r[1] is not None and r[1] > 0 and r[3] == "v2" for r in calls.values())
    with engine.connect() as conn:
        hourly = conn.execute(text("SELECT SUM(energy_cost), COUNT(*) FROM usage_shares")).one()
    assert totals(engine, "usage_hourly")[0] == hourly[0] == float(hourly[1])
    engine.dispose()


def test_an_hour_with_pruned_shares_keeps_its_rollup(serving_sqlite_url: str) -> None:
    sqlite_url = serving_sqlite_url  # h100-serving replayed with the example card
    engine = open_engine(sqlite_url)
    with engine.connect() as conn:
        first, last = conn.execute(text("SELECT MIN(t1), MAX(t1) FROM usage_shares")).one()
    hourly_before = totals(engine, "usage_hourly")
    Store(engine, "h100-serving").prune((first + last) / 2)  # retention took the hour's start
    pm = make_plugin_manager()
    card = card_from_config(build_config(pm.config_options(), V2, environ={}))
    result = reprice(engine, card, pm, 0.0)
    hour = math.floor(first / 3600) * 3600
    assert result.shares > 0 and result.hours_kept == [hour] and result.hours_rolled_up == 0
    assert totals(engine, "usage_hourly") == hourly_before  # not rebuilt from half an hour
    assert {r[3] for r in rows(engine, SHARES).values()} == {"v2"}
    engine.dispose()


def test_an_empty_store_has_nothing_to_reprice(sqlite_url: str, cli_env: dict[str, str]) -> None:
    assert im(cli_env, "--db", sqlite_url, "db", "upgrade").returncode == 0
    r = im(cli_env, "--db", sqlite_url, "reprice", "--since", "2026-11-01T06:00")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "nothing to reprice from 2026-11-01T06:00:00Z to now\n"
