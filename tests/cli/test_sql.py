"""`infermeter sql`: read-only queries on a real SQLite file and the real PostgreSQL.

On PostgreSQL, `sql` logs in as a reader role; each store here makes one with
`infermeter db grant-reader` and names it in a config file, as a deployment
does (tests/support/pg_reader.py: a role of its own per test, dropped afterwards).
The attacks of issue 10 and the limits are in tests/store/test_readonly.py.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from support import infermeter_cmd
from support.pg_reader import reader_role, sql_config

from infermeter.export.chargeback import VIEW_NAMES
from infermeter.store.engine import open_engine, sqlite_path
from infermeter.store.readonly import ONE_STATEMENT_MESSAGE, READ_ONLY_MESSAGE


def im(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*infermeter_cmd(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def use_reader(env: dict[str, str], url: str, role: str, config: Path) -> None:
    """Make ``role`` with grant-reader and let every later command of ``env`` use it."""
    env["INFERMETER_CONFIG"] = str(sql_config(config, role))
    r = im(env, "--db", url, "db", "grant-reader")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def store(serving_db_url: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    db_url = serving_db_url
    if not db_url.startswith("postgresql"):
        yield db_url
        return
    with reader_role(db_url) as role:
        use_reader(cli_env, db_url, role, tmp_path / "reader.toml")
        yield db_url


def snapshot(url: str) -> tuple[Any, ...]:
    """Everything a write could have changed, in a comparable form."""
    engine = open_engine(url)
    with engine.connect() as conn:
        sums = conn.execute(
            text(
                "SELECT (SELECT COUNT(*) FROM usage_shares), (SELECT SUM(energy_j) FROM "
                "usage_shares), (SELECT COUNT(*) FROM requests), (SELECT SUM(energy_cost) "
                "FROM requests), (SELECT COUNT(*) FROM hosts), (SELECT COUNT(*) FROM "
                "usage_hourly), (SELECT MAX(id) FROM requests)"
            )
        ).one()
        names = inspect(conn)
        tables = tuple(sorted(names.get_table_names()))
        views = tuple(sorted(names.get_view_names()))
    engine.dispose()
    return tuple(sums), tables, views


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_query_prints_a_table_csv_and_json(store: str, cli_env: dict[str, str]) -> None:
    q = "SELECT model, requests, p50_cost FROM v_request_cost_by_model ORDER BY model"
    table = im(cli_env, "--db", store, "sql", q)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["model", "requests", "p50_cost"]
    assert [line.split()[0] for line in lines[1:4]] == ["encoder", "mlp", "resnet50"]
    assert lines[-1].strip() == "3 rows"

    as_csv = im(cli_env, "--db", store, "sql", "--csv", q)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["model", "requests", "p50_cost"]
    assert [r[0] for r in rows[1:]] == ["encoder", "mlp", "resnet50"]
    assert all(int(r[1]) > 1000 and float(r[2]) > 0 for r in rows[1:])

    as_json = im(cli_env, "--db", store, "sql", "--json", q)
    assert as_json.returncode == 0, as_json.stderr
    objects = json.loads(as_json.stdout)
    assert [o["model"] for o in objects] == ["encoder", "mlp", "resnet50"]
    assert all(isinstance(o["requests"], int) and isinstance(o["p50_cost"], float) for o in objects)
    assert [str(o["requests"]) for o in objects] == [r[1] for r in rows[1:]]


def test_nulls_are_shown_as_null(store: str, cli_env: dict[str, str]) -> None:
    q = "SELECT NULL AS missing, 1 AS one"
    assert im(cli_env, "--db", store, "sql", q).stdout.splitlines()[1].split() == ["NULL", "1"]
    assert im(cli_env, "--db", store, "sql", "--csv", q).stdout.splitlines()[1] == ",1"
    assert json.loads(im(cli_env, "--db", store, "sql", "--json", q).stdout) == [
        {"missing": None, "one": 1}
    ]


WRITES = (
    "DELETE FROM usage_shares",
    "UPDATE requests SET energy_cost = 0",
    "INSERT INTO hosts (name, first_seen, last_seen) VALUES ('intruder', 0, 0)",
    "DROP VIEW v_usage",
    "DROP TABLE requests",
    "CREATE TABLE intruder (a INTEGER)",
    "ALTER TABLE hosts ADD COLUMN intruder INTEGER",
)
# Two statements in one: the second must never run.
SMUGGLED = (
    "SELECT 1; DELETE FROM usage_shares",
    "COMMIT; DELETE FROM usage_shares",
    "SET TRANSACTION READ WRITE; DELETE FROM requests",
)


def test_writes_are_refused_and_change_nothing(store: str, cli_env: dict[str, str]) -> None:
    before = snapshot(store)
    assert before[0][0] > 0 and before[0][2] > 0
    assert set(VIEW_NAMES) <= set(before[2])
    for statement in WRITES:
        r = im(cli_env, "--db", store, "sql", statement)
        assert r.returncode == 2, (statement, r.stdout, r.stderr)
        assert one_line(r) == f"infermeter: error: {READ_ONLY_MESSAGE}", statement
    for statement in SMUGGLED:
        r = im(cli_env, "--db", store, "sql", statement)
        assert r.returncode == 2, (statement, r.stdout, r.stderr)
        line = one_line(r)
        assert line.startswith("infermeter: error: "), statement
        if store.startswith("postgresql"):  # SQLite may refuse the first statement first
            assert line == f"infermeter: error: {ONE_STATEMENT_MESSAGE}", statement
    assert snapshot(store) == before


def test_postgresql_data_modifying_cte_is_refused(
    serving_pg_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    pg_url = serving_pg_url
    with reader_role(pg_url) as role:
        use_reader(cli_env, pg_url, role, tmp_path / "reader.toml")
        before = snapshot(pg_url)
        q = "WITH gone AS (DELETE FROM requests RETURNING id) SELECT COUNT(*) FROM gone"
        r = im(cli_env, "--db", pg_url, "sql", q)
        assert r.returncode == 2
        assert one_line(r) == f"infermeter: error: {READ_ONLY_MESSAGE}"
        assert snapshot(pg_url) == before


def test_sqlite_attach_and_vacuum_into_write_no_file(
    serving_sqlite_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    sqlite_url = serving_sqlite_url
    for statement in (
        f"ATTACH '{tmp_path / 'attached.db'}' AS other",
        f"VACUUM INTO '{tmp_path / 'copy.db'}'",
        "PRAGMA journal_mode = DELETE",
    ):
        r = im(cli_env, "--db", sqlite_url, "sql", statement)
        assert r.returncode == 2, (statement, r.stdout)
        assert one_line(r) == f"infermeter: error: {READ_ONLY_MESSAGE}", statement
    assert not (tmp_path / "attached.db").exists()
    assert not (tmp_path / "copy.db").exists()
    info = im(cli_env, "--db", sqlite_url, "sql", "--csv", "PRAGMA table_info(v_usage)")
    assert info.returncode == 0, info.stderr
    assert "energy_kwh" in info.stdout


def test_bad_query_is_one_line(store: str, cli_env: dict[str, str]) -> None:
    for q in ("SELEC 1", "SELECT * FROM no_such_table", "SELECT no_such_column FROM hosts"):
        r = im(cli_env, "--db", store, "sql", q)
        assert r.returncode == 2, q
        assert one_line(r).startswith("infermeter: error: query failed: "), q
    r = im(cli_env, "--db", store, "sql", "   ")
    assert r.returncode == 2 and one_line(r) == "infermeter: error: no query given"


def test_missing_sqlite_store_is_not_created(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "absent.db"
    r = im(cli_env, "--db", f"sqlite:///{db}", "sql", "SELECT 1")
    assert r.returncode == 2
    assert one_line(r) == f"infermeter: error: no store at {db}"
    assert not db.exists()


def test_csv_and_json_together_is_a_usage_error(store: str, cli_env: dict[str, str]) -> None:
    r = im(cli_env, "--db", store, "sql", "--csv", "--json", "SELECT 1")
    assert r.returncode == 2
    assert "choose one of --csv and --json" in r.stderr


# A model name as an instrumented process could send it: a terminal escape that
# clears the screen, a bidi override, and rich markup.
HOSTILE = "\x1b[2Jevil\u202e[bold red]x[/bold red]"


def test_table_shows_stored_labels_escaped_csv_and_json_keep_them(
    serving_sqlite_url: str, cli_env: dict[str, str]
) -> None:
    sqlite_url = serving_sqlite_url
    path = sqlite_path(sqlite_url)
    assert path is not None
    with sqlite3.connect(path) as conn:  # the label as the agent would have stored it
        conn.execute("UPDATE models SET name = ? WHERE name = 'mlp'", (HOSTILE,))
    conn.close()
    q = "SELECT name AS \"[b]n\x1b[0m\" FROM models WHERE name LIKE '%evil%'"

    table = im(cli_env, "--db", sqlite_url, "sql", q)
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    header, cell = (line.rstrip() for line in table.stdout.splitlines()[:2])
    assert header == "[b]n\\e[0m"  # the column name is a label too
    assert cell == "\\e[2Jevil\\u202e[bold red]x[/bold red]"  # markup printed, not applied

    as_csv = im(cli_env, "--db", sqlite_url, "sql", "--csv", q)
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["[b]n\x1b[0m"], [HOSTILE]]
    as_json = im(cli_env, "--db", sqlite_url, "sql", "--json", q)
    assert json.loads(as_json.stdout) == [{"[b]n\x1b[0m": HOSTILE}]
