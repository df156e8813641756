"""The CLI's one time grammar (infermeter.cli._time), through the real commands.

``report --since/--from/--to`` and ``reprice --since/--until`` run in-process
with click's CliRunner against a real, migrated SQLite store; ``recommend
--window`` is checked for its refusals. Each expected instant is written out
as the UTC calendar time it stands for, so a reader can check it by hand.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from infermeter.cli import cli
from infermeter.cli._time import Duration, parse_duration, parse_point
from infermeter.store import migrate
from infermeter.store.engine import open_engine

CARD_TOML = """
[prices]
version = "v1"
electricity_per_kwh = 0.13
"""


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A real SQLite store at the head schema, holding nothing (the report says so)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = open_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("INFERMETER_CONFIG", "INFERMETER_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return CliRunner()


def report_range(runner: CliRunner, store: str, *args: str) -> tuple[float, float]:
    done = runner.invoke(cli, ["--db", store, "report", "--json", *args])
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    return body["range"]["from_s"], body["range"]["to_s"]


def refused(done: Result, option: str, value: str, forms: str) -> None:
    """Click's usage error: exit 2, and one error line naming the option, value and forms."""
    assert done.exit_code == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: Invalid value for '{option}': {value!r} is not {forms}"], done.stderr
    assert not done.stdout


# ----- the grammar -----------------------------------------------------------------------


def test_every_duration_form() -> None:
    # 90 minutes = 5400 s; a day 86400 s; a week 7 x 86400 = 604800 s.
    assert parse_duration("90m") == Duration(5400.0, "m")
    assert parse_duration("24h") == Duration(86400.0, "h")
    assert parse_duration("7d") == Duration(604800.0, "d")
    assert parse_duration("2w") == Duration(1209600.0, "w")
    assert parse_duration("30s") == Duration(30.0, "s")
    assert parse_duration("3600") == Duration(3600.0, "s")  # plain seconds
    assert parse_duration(" 1.5h ") == Duration(5400.0, "h")
    for bad in ("yesterday", "24 hours", "0h", "0", "-1h", "", "h", "3y"):
        assert parse_duration(bad) is None, bad


def test_every_point_form() -> None:
    noon = utc(2026, 11, 1, 12, 30)
    assert parse_point("2026-11-01T12:30") == noon  # no zone: UTC
    assert parse_point("2026-11-01T12:30:00Z") == noon
    assert parse_point("2026-11-01T13:30:00+01:00") == noon
    assert parse_point("2026-11-01") == utc(2026, 11, 1)
    assert parse_point("1795750000") == 1795750000.0  # epoch seconds
    assert parse_point("1795750000.5") == 1795750000.5
    for bad in ("yesterday", "2026-13-01", "", "nan", "inf", "24h"):
        assert parse_point(bad) is None, bad


def ago(text: str) -> Duration:
    parsed = parse_duration(text)
    assert parsed is not None, text
    return parsed


def test_hours_days_and_weeks_start_on_the_hour() -> None:
    end = utc(2026, 11, 27, 10, 20, 30)
    assert ago("24h").start_before(end) == utc(2026, 11, 26, 10)
    assert ago("7d").start_before(end) == utc(2026, 11, 20, 10)
    assert ago("1w").start_before(end) == utc(2026, 11, 20, 10)
    # Minutes and seconds stay exact to the second: 10:20:30 - 90 min = 08:50:30.
    assert ago("90m").start_before(end) == utc(2026, 11, 27, 8, 50, 30)
    assert ago("30s").start_before(end) == end - 30
    assert ago("600").start_before(end) == end - 600


# ----- report --since/--from/--to ---------------------------------------------------------


def test_report_reads_every_form(runner: CliRunner, store: str) -> None:
    to = "2026-11-27T10:20:30Z"
    end = utc(2026, 11, 27, 10, 20, 30)
    # --since in hours, days or weeks: on the hour; in minutes or seconds: exact.
    assert report_range(runner, store, "--since", "24h", "--to", to) == (
        utc(2026, 11, 26, 10),
        end,
    )
    assert report_range(runner, store, "--since", "7d", "--to", to)[0] == utc(2026, 11, 20, 10)
    assert report_range(runner, store, "--since", "2w", "--to", to)[0] == utc(2026, 11, 13, 10)
    assert report_range(runner, store, "--since", "90m", "--to", to)[0] == utc(
        2026, 11, 27, 8, 50, 30
    )
    assert report_range(runner, store, "--since", "45", "--to", to)[0] == end - 45
    # --from/--to: ISO with no zone (UTC), with Z, with an offset, and epoch seconds.
    start, stop = report_range(
        runner, store, "--from", "2026-11-27T05:00", "--to", "2026-11-27T08:00+02:00"
    )
    assert (start, stop) == (utc(2026, 11, 27, 5), utc(2026, 11, 27, 6))
    assert report_range(runner, store, "--from", "1795750000", "--to", "2026-11-27T06:00Z") == (
        1795750000.0,
        utc(2026, 11, 27, 6),
    )


@pytest.mark.parametrize(
    ("option", "value", "forms"),
    [
        ("--since", "yesterday", "a duration: give 90m, 24h, 7d, 2w or seconds"),
        ("--since", "0h", "a duration: give 90m, 24h, 7d, 2w or seconds"),
        ("--since", "2026-11-01", "a duration: give 90m, 24h, 7d, 2w or seconds"),
        (
            "--from",
            "2026-13-01",
            "a time: give ISO 8601 (2026-11-27T06:00, UTC unless it has an offset) "
            "or epoch seconds",
        ),
        (
            "--to",
            "24h",
            "a time: give ISO 8601 (2026-11-27T06:00, UTC unless it has an offset) "
            "or epoch seconds",
        ),
    ],
)
def test_report_refuses_a_bad_value(
    runner: CliRunner, store: str, option: str, value: str, forms: str
) -> None:
    refused(runner.invoke(cli, ["--db", store, "report", option, value]), option, value, forms)


# ----- reprice --since/--until ------------------------------------------------------------


def reprice_span(runner: CliRunner, store: str, config: Path, *args: str) -> tuple[str, str]:
    done = runner.invoke(cli, ["--config", str(config), "--db", store, "reprice", *args])
    assert done.exit_code == 0, done.output
    m = re.fullmatch(r"nothing to reprice from (\S+) to (\S+)\n", done.stdout)
    assert m, done.stdout
    return m.group(1), m.group(2)


def test_reprice_reads_every_form(runner: CliRunner, store: str, tmp_path: Path) -> None:
    config = tmp_path / "card.toml"
    config.write_text(CARD_TOML)
    assert reprice_span(
        runner, store, config, "--since", "2026-11-01", "--until", "2026-11-02T01:00+01:00"
    ) == ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    # 1795750000 s after the epoch is 2026-11-27T03:26:40Z (1795750000 // 86400 = 20784 days
    # = 2026-11-27, remainder 12400 s = 03:26:40); 3600 s later is 04:26:40.
    assert reprice_span(
        runner, store, config, "--since", "1795750000", "--until", "1795753600"
    ) == (
        "2026-11-27T03:26:40Z",
        "2026-11-27T04:26:40Z",
    )
    # A duration ago counts back from now exactly (no rounding to the hour): 2w = 14 days.
    before = time.time()
    since, until = reprice_span(runner, store, config, "--since", "2w")
    after = time.time()
    got = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert int(before - 14 * 86400) <= got <= after - 14 * 86400 and until == "now"


def test_reprice_refuses_a_bad_value(runner: CliRunner, store: str) -> None:
    forms = (
        "a time: give a duration ago (90m, 24h, 7d, 2w) or ISO 8601 "
        "(2026-11-27T06:00, UTC unless it has an offset) or epoch seconds"
    )
    for option, value in (("--since", "last tuesday"), ("--since", "0d"), ("--until", "soon")):
        args = ["--db", store, "reprice", "--since", "7d", option, value]
        if option == "--since":
            args = ["--db", store, "reprice", option, value]
        refused(runner.invoke(cli, args), option, value, forms)


# ----- recommend --window -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "a week", "7days"])
def test_recommend_refuses_a_bad_window(runner: CliRunner, store: str, value: str) -> None:
    done = runner.invoke(cli, ["--db", store, "recommend", "--window", value])
    refused(done, "--window", value, "a duration: give 90m, 24h, 7d, 2w or seconds")
