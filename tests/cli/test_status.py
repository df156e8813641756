"""`infermeter status` as a subprocess, on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_cli

from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.quarantine import quarantine
from infermeter.store.request_rollup import COMPLETE_KEY, FAILED_KEY
from infermeter.store.writer import Store

HOSTILE = "tenant \x1b]0;owned\x07\x1b[2J"  # retitles and clears a terminal


def _store_with_quarantine(url: str) -> None:
    engine = open_engine(url)
    migrate.upgrade(engine)
    store = Store(engine, "h\x1b[31m1")
    with engine.begin() as conn:
        host_id = store.host_id(conn, 1000.0)
        for i in range(4):
            quarantine(conn, host_id, 1000.0 + i, "call", f"DataError: {HOSTILE} #{i}", {"i": i})
        quarantine(conn, host_id, 1100.0, "rollup", "IntegrityError: refused", {"hour": 0.0})
        quarantine(conn, None, 1200.0, "flush", "before the host row", {"devices": []})
    store.set_state(COMPLETE_KEY, 7200.0)
    store.set_state(FAILED_KEY, [3600.0])
    store.set_state("span_sources", {"socket": {"strings_changed": 5, "queued": 2}})
    engine.dispose()


def test_status_prints_each_host_with_stored_text_made_harmless(
    db_url: str, cli_env: dict[str, str]
) -> None:
    _store_with_quarantine(db_url)
    r = run_cli(cli_env, "--db", db_url, "status", "--latest", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "host h\\e[31m1" in out
    assert "failed hours    1 (raw rows kept until they roll up): 1970-01-01 01:00 UTC" in out
    assert "spans socket    strings_changed 5" in out  # "queued" is not a count of anything lost
    assert "quarantine      call 4, rollup 1" in out
    # The two latest reasons of "call", newest first, escaped for the terminal.
    shown = [line for line in out.splitlines() if "DataError" in line]
    assert [line.rsplit("#", 1)[1] for line in shown] == ["3", "2"]
    assert "tenant \\e]0;owned\\x07\\e[2J" in shown[0]
    assert "no host" in out and "before the host row" in out


def test_status_json_keeps_the_text_verbatim(db_url: str, cli_env: dict[str, str]) -> None:
    _store_with_quarantine(db_url)
    r = run_cli(cli_env, "--db", db_url, "status", "--json")
    assert r.returncode == 0, r.stderr
    hosts = json.loads(r.stdout)["hosts"]
    assert [h["host"] for h in hosts] == ["h\x1b[31m1", None]
    host = hosts[0]
    assert host["rollups_complete_until"] == 7200.0
    assert host["rollup_failed_hours"] == [3600.0]
    assert host["span_sources"] == {"socket": {"strings_changed": 5, "queued": 2}}
    call = host["quarantine"][0]
    assert call["source"] == "call" and call["count"] == 4 and len(call["latest"]) == 3
    assert call["latest"][0] == {"at": 1003.0, "reason": f"DataError: {HOSTILE} #3"}
    assert hosts[1]["quarantine"][0]["source"] == "flush"


def test_status_of_a_missing_or_empty_store_is_one_line_and_exit_2(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    missing = tmp_path / "none.db"
    r = run_cli(cli_env, "--db", f"sqlite:///{missing}", "status")
    assert r.returncode == 2
    assert r.stderr.strip() == f"infermeter: error: no store at {missing}"
    assert not missing.exists()  # looking created nothing
    empty = tmp_path / "empty.db"
    empty.touch()
    r = run_cli(cli_env, "--db", f"sqlite:///{empty}", "status")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("infermeter: error: store sqlite:///")
    assert "is empty" in r.stderr
