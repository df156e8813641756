"""The PostgreSQL role untrusted SQL runs as: it may read the store and nothing else.

``infermeter db grant-reader`` calls :func:`grant_reader` with the store's
(owner's) URL. It creates the role, or brings an existing one back to reading
only, and it can be run again at any time (after an upgrade added a table, or
after someone changed the role) to the same end state. What ``infermeter
sql`` then checks before every query (:func:`infermeter.store.readonly.check_reader`)
is what this makes true:

- LOGIN (``sql`` logs in as it; a ``SET ROLE`` could be reset by the query),
  and no SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS;
- no membership, direct or through another role, in a superuser or in the
  server roles (:data:`infermeter.store.readonly.SERVER_ROLES`): those run
  programs, read and write the server's files, signal other sessions;
- CONNECT on the database, USAGE on the store's schema, SELECT on its tables
  and views and nothing more on them, and SELECT on the tables the store's
  owner creates later (default privileges);
- ``statement_timeout`` and ``default_transaction_read_only`` as the role's
  defaults, so a BI tool that logs in as it is bounded too (``sql`` sets its
  own at log-in), and, when a superuser runs this, ``temp_file_limit``.

A role that is a superuser or owns a store table is refused rather than
demoted: it is somebody's, not ours to take apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from infermeter.errors import StoreError
from infermeter.safe_text import printable
from infermeter.store.engine import open_engine
from infermeter.store.readonly import SERVER_ROLES, Limits, UnsafeRole, connect_reader

_RELATIONS = "('r', 'p', 'v', 'm', 'f')"  # tables, partitioned tables, views, matviews, foreign


@dataclass(frozen=True, slots=True)
class Grant:
    """What grant_reader did, for the one line the CLI prints."""

    role: str
    created: bool
    database: str
    schema: str
    readable: int  # tables and views of the schema the role may SELECT
    revoked: tuple[str, ...]  # memberships taken away
    login_problem: str | None  # why logging in as the role to check it failed, if it did


def grant_reader(url: str, limits: Limits) -> Grant:
    """Create or update ``limits.reader_role`` on the store at ``url`` to read it only."""
    from psycopg import sql

    role = limits.reader_role
    if not role:
        raise StoreError("sql.reader_role is empty: name the role to create (--role)")
    if make_url(url).get_backend_name() != "postgresql":
        raise StoreError(
            "grant-reader is for PostgreSQL stores; on SQLite `infermeter sql` opens the "
            "file read-only and needs no role"
        )
    limits.check()
    engine = open_engine(url)
    try:
        with engine.begin() as sa_conn:
            raw: Any = sa_conn.connection.driver_connection
            with raw.cursor() as cur:

                def run(statement: sql.Composable) -> None:
                    cur.execute(statement)

                cur.execute(
                    "SELECT current_database(), current_schema(), "
                    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
                )
                database, schema, admin_is_super = cur.fetchone()
                if schema is None:
                    raise StoreError("the store's connection has no current schema")
                q = sql.Identifier(role)
                cur.execute(
                    "SELECT rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, "
                    "rolbypassrls FROM pg_roles WHERE rolname = %s",
                    (role,),
                )
                found = cur.fetchone()
                if found is None:
                    run(
                        sql.SQL(
                            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOREPLICATION NOBYPASSRLS"
                        ).format(q)
                    )
                else:
                    is_super, login, createdb, createrole, replication, bypassrls = found
                    if is_super:
                        raise StoreError(
                            f"role {printable(role)} is a superuser; grant-reader will not "
                            "demote it: choose another sql.reader_role (--role)"
                        )
                    # Only the attributes that are wrong: changing some needs superuser.
                    wrong = [
                        clause
                        for clause, bad in (
                            ("LOGIN", not login),
                            ("NOCREATEDB", createdb),
                            ("NOCREATEROLE", createrole),
                            ("NOREPLICATION", replication),
                            ("NOBYPASSRLS", bypassrls),
                        )
                        if bad
                    ]
                    if wrong:
                        run(sql.SQL("ALTER ROLE {} " + " ".join(wrong)).format(q))
                cur.execute(
                    "SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    f"AND c.relkind IN {_RELATIONS} AND pg_has_role(%s, c.relowner, 'MEMBER')",
                    (schema, role),
                )
                owned = cur.fetchone()[0]
                if owned:
                    raise StoreError(
                        f"role {printable(role)} owns {printable(owned)}: it can write them, "
                        "and grant-reader will not take them away; choose another "
                        "sql.reader_role (--role)"
                    )
                # Direct memberships that lead to a superuser or a server role.
                cur.execute(
                    """SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                    WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %(role)s)
                      AND (g.rolsuper OR g.rolname = ANY(%(server)s) OR EXISTS (
                        SELECT 1 FROM pg_roles d WHERE (d.rolsuper OR d.rolname = ANY(%(server)s))
                          AND pg_has_role(g.oid, d.oid, 'MEMBER')))
                    ORDER BY g.rolname""",
                    {"role": role, "server": list(SERVER_ROLES)},
                )
                revoked = tuple(r[0] for r in cur.fetchall())
                for granted in revoked:
                    run(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(granted), q))
                s = sql.Identifier(schema)
                run(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(database), q
                    )
                )
                run(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, q))
                run(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(s, q))
                run(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, q))
                run(
                    sql.SQL(
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
                    ).format(s, q)
                )
                settings: list[tuple[str, str]] = [
                    ("statement_timeout", str(limits.timeout_ms)),
                    ("default_transaction_read_only", "on"),
                ]
                if admin_is_super:  # a superuser-only setting
                    settings.append(("temp_file_limit", f"{limits.max_memory_mb}MB"))
                for name, value in settings:
                    run(
                        sql.SQL("ALTER ROLE {} SET {} = {}").format(
                            q, sql.Identifier(name), sql.Literal(value)
                        )
                    )
                cur.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    f"WHERE n.nspname = %s AND c.relkind IN {_RELATIONS} "
                    "AND has_table_privilege(%s, c.oid, 'SELECT')",
                    (schema, role),
                )
                readable = int(cur.fetchone()[0])
    finally:
        engine.dispose()
    return Grant(
        role, found is None, database, schema, readable, revoked, _login_check(url, limits)
    )


def _login_check(url: str, limits: Limits) -> str | None:
    """Log in as the role and run sql's own check: None when it passes.

    A role still unsafe (a membership someone else granted, a table privilege
    another grantor gave) is an error; not being able to log in (no password
    yet) is only reported: the grant itself is done.
    """
    try:
        conn = connect_reader(url, limits)
    except UnsafeRole as e:
        raise StoreError(
            f"grant-reader could not make the role read-only: sql would still run as {e.problem}"
        ) from None
    except StoreError as e:
        return str(e)
    conn.close()
    return None
