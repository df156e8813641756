"""`infermeter db` against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

from support import run_cli
from support.pg import admin_rows
from support.pg_reader import reader_role

from infermeter.store import migrate


def test_upgrade_current_history_downgrade(db_url: str, cli_env: dict[str, str]) -> None:
    head = migrate.head_revision()
    r = run_cli(cli_env, "--db", db_url, "db", "current")
    assert r.returncode == 0 and r.stdout.startswith("empty (behind"), r.stderr
    r = run_cli(cli_env, "--db", db_url, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"empty -> {head}")
    assert run_cli(cli_env, "--db", db_url, "db", "current").stdout.strip() == f"{head} (head)"
    hist = run_cli(cli_env, "--db", db_url, "db", "history").stdout
    lines = hist.splitlines()
    assert lines[-1].startswith("<base> -> 0001") and lines[-1].endswith(", initial schema")
    assert f"-> {head} (head) (current)," in lines[0]
    r = run_cli(cli_env, "--db", db_url, "db", "downgrade", "base")
    assert r.returncode == 0 and r.stdout.strip().endswith(f"{head} -> empty")


def test_url_from_environment(tmp_path: Path, cli_env: dict[str, str]) -> None:
    db = tmp_path / "env.db"
    env = {**cli_env, "INFERMETER_DB": f"sqlite:///{db}"}
    assert run_cli(env, "db", "upgrade").returncode == 0
    assert db.exists()


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    env = {**cli_env, "INFERMETER_DATA_DIR": str(data)}
    r = run_cli(env, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert (data / "infermeter.db").is_file()
    assert str(data / "infermeter.db") in r.stdout


def test_bad_url_is_one_line(cli_env: dict[str, str]) -> None:
    r = run_cli(cli_env, "--db", "not a url", "db", "current")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "infermeter: error: database URL 'not a url' is not a valid SQLAlchemy URL"
    )


def role_state(url: str, role: str) -> dict[str, list[tuple[object, ...]]]:
    """Everything grant-reader sets: attributes, defaults, memberships, table rights."""
    return {
        "attributes": admin_rows(
            url,
            "SELECT rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, "
            f"rolbypassrls, array_to_string(rolconfig, ' ') FROM pg_roles WHERE rolname = '{role}'",
        ),
        "members_of": admin_rows(
            url,
            f"SELECT rolname FROM pg_roles WHERE pg_has_role('{role}', oid, 'MEMBER') "
            f"AND rolname <> '{role}'",
        ),
        "tables": admin_rows(
            url,
            f"SELECT c.relname, has_table_privilege('{role}', c.oid, 'SELECT'), "
            f"has_table_privilege('{role}', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') ORDER BY 1",
        ),
        "defaults": admin_rows(url, "SELECT array_to_string(defaclacl, ' ') FROM pg_default_acl"),
    }


def test_grant_reader_is_idempotent_and_covers_later_tables(
    pg_url: str, cli_env: dict[str, str]
) -> None:
    assert run_cli(cli_env, "--db", pg_url, "db", "upgrade").returncode == 0
    (n_relations,) = admin_rows(
        pg_url,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v')",
    )
    database = pg_url.rsplit("/", 1)[1]
    with reader_role(pg_url) as role:
        first = run_cli(cli_env, "--db", pg_url, "db", "grant-reader", "--role", role)
        assert first.returncode == 0, first.stderr
        tail = (
            f"may read {n_relations[0]} tables and views of {database}.public and nothing "
            "else; statement timeout 10 s"
        )
        assert first.stdout.strip() == f"{role} (created) {tail}"
        state = role_state(pg_url, role)
        assert state["attributes"] == [
            (
                False, True, False, False, False, False,
                "statement_timeout=10000 default_transaction_read_only=on temp_file_limit=256MB",
            )
        ]  # fmt: skip
        assert state["members_of"] == []
        tables = state["tables"]
        assert len(tables) == n_relations[0] and all(r[1:] == (True, False) for r in tables)
        assert state["defaults"] == [(f"{role}=r/postgres",)]

        again = run_cli(cli_env, "--db", pg_url, "db", "grant-reader", "--role", role)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"{role} (updated) {tail}"
        assert role_state(pg_url, role) == state

        # A table the store's owner creates later (a future migration) is readable too.
        admin_rows(pg_url, "CREATE TABLE later (a integer)")
        admin_rows(pg_url, "INSERT INTO later VALUES (7)")
        r = run_cli(cli_env, "--db", pg_url, "sql", "--role", role, "--csv", "SELECT a FROM later")
        assert r.returncode == 0 and r.stdout.split() == ["a", "7"], r.stderr


def test_grant_reader_refuses_roles_it_would_have_to_demote(
    pg_url: str, cli_env: dict[str, str]
) -> None:
    assert run_cli(cli_env, "--db", pg_url, "db", "upgrade").returncode == 0
    r = run_cli(cli_env, "--db", pg_url, "db", "grant-reader", "--role", "postgres")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "infermeter: error: role postgres is a superuser; grant-reader will not demote it: "
        "choose another sql.reader_role (--role)"
    )
    assert admin_rows(pg_url, "SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'") == [
        (True,)
    ]
    with reader_role(pg_url, "im_owner") as owner:
        try:
            admin_rows(pg_url, f'CREATE ROLE "{owner}" LOGIN')
            admin_rows(pg_url, f'ALTER TABLE hosts OWNER TO "{owner}"')
            r = run_cli(cli_env, "--db", pg_url, "db", "grant-reader", "--role", owner)
            assert r.returncode == 2
            assert r.stderr.strip() == (
                f"infermeter: error: role {owner} owns hosts: it can write them, and grant-reader "
                "will not take them away; choose another sql.reader_role (--role)"
            )
            owners = admin_rows(
                pg_url, "SELECT tableowner FROM pg_tables WHERE tablename = 'hosts'"
            )
            assert owners == [(owner,)]
        finally:
            admin_rows(pg_url, "ALTER TABLE hosts OWNER TO postgres")


def test_grant_reader_on_sqlite_is_one_line(sqlite_url: str, cli_env: dict[str, str]) -> None:
    assert run_cli(cli_env, "--db", sqlite_url, "db", "upgrade").returncode == 0
    r = run_cli(cli_env, "--db", sqlite_url, "db", "grant-reader")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "infermeter: error: grant-reader is for PostgreSQL stores; on SQLite `infermeter sql` "
        "opens the file read-only and needs no role"
    )
