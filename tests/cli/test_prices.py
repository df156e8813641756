"""``infermeter prices``: the card in effect and each value's source, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_cli

from infermeter.cli.prices import days_text

CARD = """
[prices]
version = "acme-2026-12"
currency = "EUR"
timezone = "Europe/Paris"
electricity_per_kwh = 0.21
time_of_use = [
  {start = "08:00", end = "20:00", days = [0, 1, 2, 3, 4], per_kwh = 0.28},
  {start = "20:00", end = "08:00", per_kwh = 0.15},
]
carbon_g_per_kwh = 0

[prices.devices]
H100 = {cloud_hourly = 3.5}
A100 = {purchase = 15000, years = 4, upkeep_per_year = 1200}
"""


def test_default_card_and_its_sources(cli_env: dict[str, str]) -> None:
    done = run_cli(cli_env, "prices")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in ("example-2026-11", "0.13 USD/kWh", "1.58", "475 gCO2e/kWh", "0.045 USD/vCPU-hour"):
        assert text in out, text
    h100 = next(line for line in out.splitlines() if "/H100/" in line)
    assert "3 USD/hour (cloud price)" in h100 and h100.rstrip().endswith("default")
    assert "none (built-in defaults)" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "\x1b[" not in out


def test_a_config_file_card_names_its_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "card.toml"
    config.write_text(CARD)
    done = run_cli(cli_env, "--config", str(config), "prices")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def line(what: str) -> str:
        return next(x for x in lines if x.startswith(what))

    assert f"config file: {config}" in done.stdout
    assert "0.21 EUR/kWh" in line("electricity") and "config file" in line("electricity")
    periods = [x for x in lines if x.strip().startswith("time of use")]
    assert "Mon-Fri 08:00-20:00: 0.28 EUR/kWh" in periods[0]
    assert "every day 20:00-08:00: 0.15 EUR/kWh" in periods[1]
    assert "unknown: not priced" in line("carbon intensity")
    assert line("PUE").rstrip().endswith("default")  # not in the file: the default
    # 15000 / 4 y + 1200 / y over 8766 h: 0.5647 per hour
    amortised = done.stdout[done.stdout.index("/A100/") :]
    assert "0.5647 EUR/hour (amortised: 15000 over 4 y" in amortised
    assert "3.5 EUR/hour (cloud price)" in line("device /H100/")


def test_json(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "card.toml"
    config.write_text(CARD)
    done = run_cli(cli_env, "--config", str(config), "prices", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["version"] == "acme-2026-12" and data["currency"] == "EUR"
    assert data["carbon_g_per_kwh"] is None  # unknown, never 0
    assert data["time_of_use"][0] == {
        "days": [0, 1, 2, 3, 4],
        "start": "08:00",
        "end": "20:00",
        "per_kwh": 0.28,
    }
    bases = {d["pattern"]: d["basis"] for d in data["devices"]}
    assert bases == {"H100": "cloud", "A100": "amortised"}
    assert data["sources"]["electricity_per_kwh"] == f"file {config}"
    assert data["sources"]["pue"] == "default"


def test_pricing_disabled(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text('[plugins]\ndisabled = ["core.pricing"]\n')
    done = run_cli(cli_env, "--config", str(config), "prices")
    assert done.returncode == 0, done.stderr
    assert "no price card" in done.stdout and "unpriced" in done.stdout


def test_a_bad_card_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[prices]\ntimezone = "Mars/Olympus"\n')
    done = run_cli(cli_env, "--config", str(config), "prices")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "prices.timezone" in done.stderr


def test_days_text() -> None:
    assert days_text(frozenset(range(7))) == "every day"
    assert days_text(frozenset({5, 6})) == "Sat, Sun"
    assert days_text(frozenset({0, 1, 2})) == "Mon-Wed"
    assert days_text(frozenset({0, 2})) == "Mon, Wed"
