"""`infermeter db` against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import infermeter_cmd

from infermeter.store import migrate


def im(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*infermeter_cmd(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_upgrade_current_history_downgrade(db_url: str, cli_env: dict[str, str]) -> None:
    head = migrate.head_revision()
    r = im(cli_env, "--db", db_url, "db", "current")
    assert r.returncode == 0 and r.stdout.startswith("empty (behind"), r.stderr
    r = im(cli_env, "--db", db_url, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"empty -> {head}")
    assert im(cli_env, "--db", db_url, "db", "current").stdout.strip() == f"{head} (head)"
    hist = im(cli_env, "--db", db_url, "db", "history").stdout
    lines = hist.splitlines()
    assert lines[-1].startswith("<base> -> 0001") and lines[-1].endswith(", initial schema")
    assert f"-> {head} (head) (current)," in lines[0]
    r = im(cli_env, "--db", db_url, "db", "downgrade", "base")
    assert r.returncode == 0 and r.stdout.strip().endswith(f"{head} -> empty")


def test_url_from_environment(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "env.db"
    env = {**cli_env, "INFERMETER_DB": f"sqlite:///{db}"}
    assert im(env, "db", "upgrade").returncode == 0
    assert db.exists()


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    env = {**cli_env, "INFERMETER_DATA_DIR": str(data)}
    r = im(env, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert (data / "infermeter.db").is_file()
    assert str(data / "infermeter.db") in r.stdout


def test_bad_url_is_one_line(cli_env: dict[str, str]) -> None:
    r = im(cli_env, "--db", "not a url", "db", "current")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "infermeter: error: database URL 'not a url' is not a valid SQLAlchemy URL"
    )
