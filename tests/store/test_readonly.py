"""Issue 10, case 2: `infermeter sql` reads the store and nothing more, within bounds.

The issue's author showed that a ``READ ONLY`` transaction does not stop a
PostgreSQL superuser: ``COPY ... TO PROGRAM`` ran a shell command (and through
it deleted store rows), ``COPY ... TO 'file'`` wrote a file, ``pg_read_file``,
``pg_ls_dir``, ``pg_reload_conf()``, ``pg_terminate_backend`` and
``CHECKPOINT`` all ran; ``pg_sleep(30)`` ran 31 s and a recursive CTE on
SQLite grew to 2.1 GB. Each is replayed here through the real CLI against the
real PostgreSQL server (as the reader role ``db grant-reader`` makes) and a real
SQLite file: each is one line, exit code 2, and leaves no trace.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from support import infermeter_cmd
from support.pg import admin_rows
from support.pg_reader import reader_role, sql_config, unique_role
from support.replayed import ReplayedStores
from support.waiting import wait_until

from infermeter.export.chargeback import VIEW_NAMES
from infermeter.store.readonly import (
    GRANT_HINT,
    ONE_STATEMENT_MESSAGE,
    READ_ONLY_MESSAGE,
    reader_conninfo,
)

TIMEOUT_LINE = (
    "infermeter: error: query stopped after {s} s: it ran past the timeout "
    "(sql.timeout_s, --timeout)"
)
MEMORY_LINE = (
    "infermeter: error: query stopped: it needed more than {mb} MiB (sql.max_memory_mb); "
    "nothing printed"
)
ROWS_LINE = (
    "infermeter: error: query returns more than {n} rows (sql.max_rows, --max-rows): "
    "add a LIMIT or raise the cap; nothing printed"
)


def isolated_env(home: Path) -> dict[str, str]:
    """Like conftest's cli_env, for a module: nothing of the user's config leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.update(
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        XDG_DATA_HOME=str(home / "xdg-data"),
        HOME=str(home),
    )
    return env


def im(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*infermeter_cmd(), *args], env=env, capture_output=True, text=True, timeout=180
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@dataclass(frozen=True)
class PgStore:
    url: str
    role: str  # made by `db grant-reader`, named in the config file
    config: Path
    env: dict[str, str]

    def sql(self, *args: str) -> subprocess.CompletedProcess[str]:
        return im(self.env, "--config", str(self.config), "--db", self.url, "sql", *args)

    def admin(self, statement: str) -> list[tuple[object, ...]]:
        return admin_rows(self.url, statement)

    def snapshot(self) -> list[tuple[object, ...]]:
        """What a write could have changed: row counts and sums of the stored tables."""
        return self.admin(
            "SELECT (SELECT count(*) FROM requests), (SELECT sum(energy_j) FROM requests), "
            "(SELECT count(*) FROM usage_shares), (SELECT count(*) FROM usage_hourly), "
            "(SELECT count(*) FROM hosts), (SELECT count(*) FROM pg_tables "
            "WHERE schemaname = 'public')"
        )


@pytest.fixture(scope="module")
def pg(
    tmp_path_factory: pytest.TempPathFactory, template_stores: ReplayedStores
) -> Iterator[PgStore]:
    home = tmp_path_factory.mktemp("sql-pg")
    env = isolated_env(home)
    with template_stores.postgresql() as url, reader_role(url) as role:
        config = sql_config(home / "reader.toml", role)
        r = im(env, "--config", str(config), "--db", url, "db", "grant-reader")
        assert r.returncode == 0, r.stderr
        yield PgStore(url, role, config, env)


@pytest.fixture
def world_writable() -> Iterator[Path]:
    """A folder the PostgreSQL server's user may write to, for the files an attack makes."""
    folder = Path(tempfile.mkdtemp(prefix="infermeter-sql-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----- PostgreSQL: the attacks ----------------------------------------------------------


def test_copy_to_program_ran_under_read_only_and_is_refused_now(
    pg: PgStore, world_writable: Path
) -> None:
    # The hole, shown first: a superuser in a READ ONLY transaction runs a program.
    control = world_writable / "control"
    engine = create_engine(pg.url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql(f"COPY (SELECT 1) TO PROGRAM 'touch {control}'")
        conn.rollback()
    engine.dispose()
    assert control.exists()

    before = pg.snapshot()
    assert before[0][0] > 0  # rows the program below would delete
    marker = world_writable / "marker"
    db = make_url(pg.url).database
    program = f'touch {marker}; psql -h 127.0.0.1 -U postgres -d {db} -c "DELETE FROM requests"'
    line = one_line(pg.sql(f"COPY (SELECT 1) TO PROGRAM '{program}'"))
    assert line.startswith("infermeter: error: not permitted: must be superuser or have ")
    assert "pg_execute_server_program" in line
    assert not marker.exists()
    assert pg.snapshot() == before


def test_server_files_signals_and_checkpoint_are_refused(pg: PgStore, world_writable: Path) -> None:
    copied = world_writable / "copied.csv"
    exported = world_writable / "exported"
    victim = psycopg.connect(make_url(pg.url).set(drivername="postgresql").render_as_string(False))
    before = pg.snapshot()
    attacks = {
        f"COPY requests TO '{copied}'": "pg_write_server_files",
        f"COPY (SELECT * FROM hosts) TO '{copied}'": "pg_write_server_files",
        "SELECT pg_read_file('/etc/passwd')": "permission denied for function pg_read_file",
        "SELECT pg_ls_dir('.')": "permission denied for function pg_ls_dir",
        "SELECT pg_reload_conf()": "permission denied for function pg_reload_conf",
        f"SELECT pg_terminate_backend({victim.info.backend_pid})": "terminate",
        "CHECKPOINT": "CHECKPOINT",
        "SELECT lo_import('/etc/passwd')": "permission denied for function lo_import",
        f"SELECT lo_export(0, '{exported}')": "permission denied for function lo_export",
        "SET ROLE postgres": 'permission denied to set role "postgres"',
        "SELECT set_config('role', 'postgres', false)": 'permission denied to set role "postgres"',
    }
    try:
        for attack, reason in attacks.items():
            r = pg.sql(attack)
            line = one_line(r)
            assert line.startswith("infermeter: error: not permitted: "), (attack, line)
            assert reason in line, (attack, line)
            assert r.stdout == "", attack
        assert victim.execute("SELECT 1").fetchone() == (1,)  # not terminated
    finally:
        victim.close()
    assert not copied.exists() and not exported.exists()
    assert pg.snapshot() == before


def test_writes_and_second_statements_are_refused(pg: PgStore) -> None:
    before = pg.snapshot()
    for write in (
        "DELETE FROM requests",
        "WITH gone AS (DELETE FROM requests RETURNING id) SELECT count(*) FROM gone",
        "CREATE TEMP TABLE intruder (a int)",
        "GRANT pg_execute_server_program TO CURRENT_USER",
    ):
        line = one_line(pg.sql(write))
        assert line in (
            f"infermeter: error: {READ_ONLY_MESSAGE}",
            # GRANT of a server role is refused for want of the right before read-only
            "infermeter: error: not permitted: permission denied to grant role "
            '"pg_execute_server_program" (sql runs as a role that may only read)',
        ), (write, line)
    for smuggled in (
        "SET statement_timeout = 0; SELECT pg_sleep(30)",
        "COMMIT; DELETE FROM requests",
        "SET TRANSACTION READ WRITE; DELETE FROM requests",
    ):
        assert one_line(pg.sql(smuggled)) == f"infermeter: error: {ONE_STATEMENT_MESSAGE}"
    assert pg.snapshot() == before


def test_pg_sleep_is_stopped_by_the_timeout(pg: PgStore, tmp_path: Path) -> None:
    config = sql_config(tmp_path / "fast.toml", pg.role, timeout_s=1.0)
    base = ["--config", str(config), "--db", pg.url, "sql"]
    line = one_line(im(pg.env, *base, "SELECT pg_sleep(30)"))
    assert line == TIMEOUT_LINE.format(s=1)
    # Within its one statement, a query cannot lift its own timeout.
    lifted = "SELECT set_config('statement_timeout', '0', false), pg_sleep(30)"
    assert one_line(im(pg.env, *base, lifted)) == TIMEOUT_LINE.format(s=1)
    # The option wins over the config key.
    assert one_line(im(pg.env, *base, "--timeout", "2", "SELECT pg_sleep(30)")) == (
        TIMEOUT_LINE.format(s=2)
    )
    # And nothing of those queries is left running on the server.
    active = f"SELECT pid FROM pg_stat_activity WHERE usename = '{pg.role}' AND state = 'active'"
    wait_until(lambda: not pg.admin(active), "the timed-out query to end", poll_s=0.2)
    ok = im(pg.env, *base, "--timeout", "60", "--csv", "SELECT 1 AS slept FROM pg_sleep(0.1)")
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["slept", "1"], ok.stderr


def test_chargeback_views_read_as_the_reader(pg: PgStore) -> None:
    for view in VIEW_NAMES:
        (expected,) = pg.admin(f"SELECT count(*) FROM {view}")
        r = pg.sql("--json", f"SELECT count(*) AS n FROM {view}")
        assert r.returncode == 0, (view, r.stderr)
        assert json.loads(r.stdout) == [{"n": expected[0]}], view
    (energy,) = pg.admin("SELECT sum(energy_kwh) FROM v_usage")
    r = pg.sql("--json", "SELECT sum(energy_kwh) AS kwh FROM v_usage")
    assert r.returncode == 0 and energy[0] > 0, r.stderr
    assert json.loads(r.stdout) == [{"kwh": energy[0]}]
    r = pg.sql("SELECT * FROM hosts WHERE false")  # no row: the columns still print
    assert r.returncode == 0 and r.stdout.split() == [
        "id",
        "name",
        "first_seen",
        "last_seen",
        "0",
        "rows",
    ]


def test_json_output_stays_json(pg: PgStore) -> None:
    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    q = "SELECT 'NaN'::float AS a, 'Infinity'::float AS b, '-Infinity'::numeric AS c, 1.5 AS d"
    r = pg.sql("--json", q)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout, parse_constant=strict) == [
        {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5}
    ]


def test_row_and_memory_caps(pg: PgStore, tmp_path: Path) -> None:
    eleven = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 11) "
    eleven += "SELECT x FROM r"
    assert one_line(pg.sql("--max-rows", "10", eleven)) == ROWS_LINE.format(n=10)
    r = pg.sql("--max-rows", "11", "--csv", eleven)
    assert r.returncode == 0 and r.stdout.split() == ["x", *map(str, range(1, 12))]
    # Each value is 1 MiB of text: 32 of them are past a 16 MiB cap, 8 are not.
    config = sql_config(tmp_path / "small.toml", pg.role, max_memory_mb=16)
    base = ["--config", str(config), "--db", pg.url, "sql", "--csv"]
    mib = "SELECT repeat('x', 1048576) FROM generate_series(1, {n})"
    assert len(im(pg.env, *base, mib.format(n=8)).stdout) > 8 * 1048576
    assert one_line(im(pg.env, *base, mib.format(n=32))) == MEMORY_LINE.format(mb=16)


# ----- PostgreSQL: the role -----------------------------------------------------------


def test_superuser_is_refused(pg: PgStore) -> None:
    admin = make_url(pg.url).username
    assert pg.admin(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{admin}'") == [(True,)]
    expected = f"infermeter: error: sql would run as superuser {admin}; {GRANT_HINT}"
    assert one_line(pg.sql("--role", str(admin), "SELECT 1")) == expected
    assert one_line(pg.sql("--role", "", "SELECT 1")) == expected  # the URL's own user


def test_missing_role_is_named(pg: PgStore) -> None:
    role = unique_role("im_absent")
    assert one_line(pg.sql("--role", role, "SELECT 1")) == (
        f"infermeter: error: sql connects to PostgreSQL as role {role}, which does not "
        "exist; create it with `infermeter db grant-reader`"
    )


def test_roles_with_server_rights_are_refused_until_granted_again(pg: PgStore) -> None:
    base = ["--db", pg.url]
    with reader_role(pg.url) as role, reader_role(pg.url, "im_group") as group:
        made = im(pg.env, *base, "db", "grant-reader", "--role", role)
        assert made.returncode == 0, made.stderr
        assert pg.sql("--role", role, "SELECT 1").returncode == 0
        for server_role in (
            "pg_execute_server_program",
            "pg_read_server_files",
            "pg_write_server_files",
        ):
            pg.admin(f'GRANT {server_role} TO "{role}"')
            assert one_line(pg.sql("--role", role, "SELECT 1")) == (
                f"infermeter: error: sql would run as role {role}, a member of "
                f"{server_role}; {GRANT_HINT}"
            )
            pg.admin(f'REVOKE {server_role} FROM "{role}"')
        # Through a group it does not inherit from: SET ROLE would still reach it.
        pg.admin(f'CREATE ROLE "{group}" NOLOGIN')
        pg.admin(f'GRANT pg_execute_server_program TO "{group}"')
        pg.admin(f'ALTER ROLE "{role}" NOINHERIT')
        pg.admin(f'GRANT "{group}" TO "{role}"')
        pg.admin(f'GRANT INSERT ON hosts TO "{role}"')
        line = one_line(pg.sql("--role", role, "SELECT 1"))
        assert f"a member of pg_execute_server_program; {GRANT_HINT}" in line
        again = im(pg.env, *base, "db", "grant-reader", "--role", role)
        assert again.returncode == 0, again.stderr
        assert again.stdout.rstrip().endswith(f"; revoked {group}")
        assert pg.sql("--role", role, "SELECT 1").returncode == 0
        assert pg.admin(
            f"SELECT has_table_privilege('{role}', 'hosts', 'INSERT'), "
            f"pg_has_role('{role}', '{group}', 'MEMBER')"
        ) == [(False, False)]
        pg.admin(f'GRANT UPDATE ON requests TO "{role}"')
        assert one_line(pg.sql("--role", role, "SELECT 1")) == (
            f"infermeter: error: sql would run as role {role}, which may write requests; "
            f"{GRANT_HINT}"
        )


def test_the_owners_password_never_goes_to_the_reader() -> None:
    # The store URL's password is its owner's: logging in as the reader drops it.
    owner = "postgresql+psycopg://owner:s3cret@db:5433/store?sslmode=require"
    assert reader_conninfo(owner, "reader") == "postgresql://reader@db:5433/store?sslmode=require"
    mine = "postgresql+psycopg://reader:r%40d@db/store"  # a URL of the reader's own
    assert reader_conninfo(mine, "reader") == "postgresql://reader:r%40d@db/store"
    assert reader_conninfo(owner, "") == "postgresql://owner:s3cret@db:5433/store?sslmode=require"


# ----- SQLite -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite(
    tmp_path_factory: pytest.TempPathFactory, template_stores: ReplayedStores
) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("sql-lite")
    env = isolated_env(home)
    db = home / "store.db"
    template_stores.sqlite(db)
    return db, env


def file_state(db: Path) -> tuple[int, str, str]:
    """The store file's mtime and hash, and its write-ahead log's content hash.

    A reader may create an empty log (SQLite does, for WAL readers): no content,
    no change, so a missing log and an empty one hash alike.
    """
    wal = db.with_name(db.name + "-wal")
    return (
        db.stat().st_mtime_ns,
        hashlib.sha256(db.read_bytes()).hexdigest(),
        hashlib.sha256(wal.read_bytes() if wal.exists() else b"").hexdigest(),
    )


def run_measured(env: dict[str, str], *args: str) -> tuple[int, str, int]:
    """Run the CLI; its exit code, stderr, and its peak resident memory in KiB (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*infermeter_cmd(), *args], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        return proc.returncode, err.read().decode(), usage.ru_maxrss


RUNAWAY_COUNT = (
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
)
RUNAWAY_MEMORY = (
    # every number, sorted: the sorter holds them all
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r ORDER BY x",
    # 1 MB blobs kept distinct by UNION: its index holds them all
    "WITH RECURSIVE r(x, s) AS (SELECT 1, randomblob(1000000) "
    "UNION SELECT x + 1, randomblob(1000000) FROM r) SELECT count(*) FROM r",
    # a string that doubles every row
    "WITH RECURSIVE r(x, s) AS (SELECT 1, 'x' UNION ALL SELECT x + 1, s || s FROM r) "
    "SELECT max(length(s)) FROM r",
)


def test_sqlite_runaway_cte_stops_at_the_timeout(
    lite: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    db, env = lite
    config = sql_config(tmp_path / "fast.toml", "unused", timeout_s=1.0)
    r = im(env, "--config", str(config), "--db", f"sqlite:///{db}", "sql", RUNAWAY_COUNT)
    assert one_line(r) == TIMEOUT_LINE.format(s=1)


def test_sqlite_runaway_ctes_stop_at_the_memory_cap(
    lite: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    db, env = lite
    cap_mb = 32
    # A timeout long enough that only the memory cap can stop these queries.
    config = sql_config(tmp_path / "small.toml", "unused", max_memory_mb=cap_mb, timeout_s=120.0)
    base = ["--config", str(config), "--db", f"sqlite:///{db}", "sql"]
    rc, err, baseline_kib = run_measured(env, *base, "SELECT 1")
    assert rc == 0, err
    for query in RUNAWAY_MEMORY:
        rc, err, peak_kib = run_measured(env, *base, query)
        assert (rc, err.strip()) == (2, MEMORY_LINE.format(mb=cap_mb)), query
        # SQLite's heap stays under the cap; the process's peak may reach about twice
        # it while a buffer is reallocated (measured: +65 MiB at 32 MiB). Uncapped,
        # these grow by hundreds of MiB a second until stopped.
        assert peak_kib - baseline_kib < 4 * cap_mb * 1024, (query, peak_kib, baseline_kib)


def test_sqlite_refusals_leave_the_file_unchanged(
    lite: tuple[Path, dict[str, str]], world_writable: Path
) -> None:
    db, env = lite
    url = f"sqlite:///{db}"
    before = file_state(db)
    refused = {
        "DELETE FROM requests": READ_ONLY_MESSAGE,
        "UPDATE hosts SET name = 'x'": READ_ONLY_MESSAGE,
        "DROP VIEW v_usage": READ_ONLY_MESSAGE,
        "CREATE TEMP TABLE intruder (a)": READ_ONLY_MESSAGE,
        f"ATTACH '{world_writable / 'attached.db'}' AS other": READ_ONLY_MESSAGE,
        f"VACUUM INTO '{world_writable / 'copy.db'}'": READ_ONLY_MESSAGE,
        "PRAGMA query_only = OFF": READ_ONLY_MESSAGE,
        "PRAGMA hard_heap_limit = 0": READ_ONLY_MESSAGE,  # the cap cannot be lifted
        "PRAGMA wal_checkpoint(TRUNCATE)": READ_ONLY_MESSAGE,
        "SELECT load_extension('/nonexistent/evil')": (
            "not permitted: infermeter sql does not call load_extension()"
        ),
        "SELECT 1; DELETE FROM requests": ONE_STATEMENT_MESSAGE,
    }
    for statement, message in refused.items():
        assert one_line(im(env, "--db", url, "sql", statement)) == (
            f"infermeter: error: {message}"
        ), statement
    assert file_state(db) == before
    assert list(world_writable.iterdir()) == []
    eleven = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 11) "
    eleven += "SELECT x FROM r"
    assert one_line(im(env, "--db", url, "sql", "--max-rows", "10", eleven)) == (
        ROWS_LINE.format(n=10)
    )
    rows = im(env, "--db", url, "sql", "--csv", "--max-rows", "11", eleven)
    assert list(csv.reader(io.StringIO(rows.stdout)))[1:] == [[str(i)] for i in range(1, 12)]


def test_limits_that_bound_nothing_are_refused(lite: tuple[Path, dict[str, str]]) -> None:
    db, env = lite
    url = f"sqlite:///{db}"
    assert one_line(im(env, "--db", url, "sql", "--timeout", "0", "SELECT 1")) == (
        "infermeter: error: sql timeout must be more than 0 seconds, not 0"
    )
    assert one_line(im(env, "--db", url, "sql", "--max-rows", "0", "SELECT 1")) == (
        "infermeter: error: sql.max_rows must be at least 1, not 0"
    )
