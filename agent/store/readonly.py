"""Untrusted SQL on the store: one statement, read-only, bounded in time, rows and memory.

Every surface that runs SQL someone else wrote (``infermeter sql`` today, an
HTTP or SQL endpoint tomorrow) calls :func:`run_untrusted`; the protection is
here, not in the surface, so a new one cannot forget a part of it.

A read-only transaction alone is not enough: on PostgreSQL a superuser in a
``READ ONLY`` transaction still runs ``COPY ... TO PROGRAM`` (a shell command),
writes files, reads the server's files, reloads its configuration and ends
other sessions. So on PostgreSQL the query runs on a connection of its own,
logged in *as* the reader role (``sql.reader_role``, made by ``infermeter db
grant-reader``): not ``SET ROLE`` from a privileged session, which the query
could ``RESET``. Before the query runs, the role is checked (:func:`check_reader`)
and refused if it is a superuser, can get one's or a server role's rights, or
can write or owns a table of the store. The statement timeout and read-only
mode are given at log-in, and the query is sent in the extended protocol, which
takes one statement only: it cannot unset them for itself (``SET`` would be a
statement of its own), nor commit and write after.

On SQLite the file is opened read-only (``mode=ro`` and ``query_only``), an
authorizer allows reading and nothing else (not ATTACH, which creates a file,
nor a PRAGMA that sets, nor ``load_extension``), a progress handler stops the
query at the timeout, and SQLite's heap is capped. That cap is SQLite's
process-wide hard heap limit and cannot be raised again in the process: a
long-lived server should run each untrusted query in a worker process of its
own, as the CLI does by being one.

On both, at most ``max_rows`` rows and ``max_memory_mb`` of values are fetched;
a query that returns more is refused whole rather than cut short, so a
truncated answer is never mistaken for the whole one.
"""

from __future__ import annotations

import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.engine import URL, make_url

from infermeter.errors import StoreError
from infermeter.safe_text import printable
from infermeter.store.engine import redact, sqlite_path

if TYPE_CHECKING:
    import psycopg

    from infermeter.config import Config


@dataclass(frozen=True, slots=True)
class Limits:
    """What one untrusted query may use (the ``sql.*`` config keys)."""

    timeout_s: float = 10.0
    max_rows: int = 100_000
    max_memory_mb: int = 256
    reader_role: str = "infermeter_reader"

    @classmethod
    def from_config(
        cls,
        config: Config,
        timeout_s: float | None = None,
        max_rows: int | None = None,
        role: str | None = None,
    ) -> Limits:
        """The ``sql.*`` config keys, with a surface's own options (None: unset) over them."""
        return cls(
            timeout_s=float(config["sql.timeout_s"]) if timeout_s is None else timeout_s,
            max_rows=int(config["sql.max_rows"]) if max_rows is None else max_rows,
            max_memory_mb=int(config["sql.max_memory_mb"]),
            reader_role=str(config["sql.reader_role"]) if role is None else role,
        )

    def check(self) -> None:
        """Raise StoreError naming the first limit that bounds nothing."""
        if not self.timeout_s > 0:
            raise StoreError(f"sql timeout must be more than 0 seconds, not {self.timeout_s:g}")
        if self.max_rows < 1:
            raise StoreError(f"sql.max_rows must be at least 1, not {self.max_rows}")
        if self.max_memory_mb < 1:
            raise StoreError(f"sql.max_memory_mb must be at least 1, not {self.max_memory_mb}")

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout_s * 1000))

    @property
    def max_bytes(self) -> int:
        return self.max_memory_mb * 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class ReadOnlyViolation(StoreError):
    """The statement would have changed the store; nothing was changed."""


class NotPermitted(StoreError):
    """The statement needs a right the reader does not have (a file, a program, a signal)."""


class QueryTimeout(StoreError):
    """The statement ran past the timeout and was stopped."""


class ResultTooLarge(StoreError):
    """The statement needed more rows or memory than allowed; nothing is returned."""


class UnsafeRole(StoreError):
    """The PostgreSQL role the query would run as can do more than read."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"sql would run as {problem}; {GRANT_HINT}")
        self.problem = problem


READ_ONLY_MESSAGE = (
    "infermeter sql is read-only: that statement would change the store, and nothing was changed"
)
GRANT_HINT = "run `infermeter db grant-reader` and let sql connect as the role it makes"
ONE_STATEMENT_MESSAGE = "query failed: infermeter sql runs one statement, and that is more than one"


def run_untrusted(url: str, query: str, limits: Limits) -> QueryResult:
    """Run one statement that someone else wrote on the store at ``url``, within ``limits``."""
    limits.check()
    if not query.strip():
        raise StoreError("no query given")
    try:
        backend = make_url(url).get_backend_name()
    except Exception:
        raise StoreError(f"database URL {url!r} is not a valid SQLAlchemy URL") from None
    if backend == "sqlite":
        return _run_sqlite(url, query, limits)
    if backend == "postgresql":
        return _run_postgresql(url, query, limits)
    raise StoreError(f"infermeter sql supports SQLite and PostgreSQL stores, not {backend}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return printable(lines[0] if lines else type(e).__name__)


def _timeout_message(limits: Limits) -> str:
    return (
        f"query stopped after {limits.timeout_s:g} s: it ran past the timeout "
        "(sql.timeout_s, --timeout)"
    )


def _memory_message(limits: Limits) -> str:
    return (
        f"query stopped: it needed more than {limits.max_memory_mb} MiB "
        "(sql.max_memory_mb); nothing printed"
    )


def _rows_message(limits: Limits) -> str:
    return (
        f"query returns more than {limits.max_rows} rows (sql.max_rows, --max-rows): "
        "add a LIMIT or raise the cap; nothing printed"
    )


class _Collector:
    """Rows as they arrive, refusing the result once it passes the row or memory cap."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rows: list[tuple[Any, ...]] = []
        self.bytes = 0

    def add(self, row: Sequence[Any]) -> None:
        if len(self.rows) >= self.limits.max_rows:
            raise ResultTooLarge(_rows_message(self.limits))
        # What the row costs this process, measured on the objects it holds.
        self.bytes += sys.getsizeof(row) + sum(sys.getsizeof(v) for v in row)
        if self.bytes > self.limits.max_bytes:
            raise ResultTooLarge(_memory_message(self.limits))
        self.rows.append(tuple(row))


# ----- SQLite ------------------------------------------------------------------------

_SQLITE_READS = frozenset((sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE))
# Functions a query may not call: they load code or reach outside the store.
_SQLITE_DENIED_FUNCTIONS = frozenset(("load_extension", "fts3_tokenizer"))
# PRAGMAs that only report, with or without an argument (a table's name, a limit).
_SQLITE_REPORTING_PRAGMAS = frozenset(
    (
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    )
)
# PRAGMAs whose value a query may read, never set.
_SQLITE_VALUE_PRAGMAS = frozenset(
    (
        "application_id",
        "collation_list",
        "compile_options",
        "database_list",
        "data_version",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "function_list",
        "journal_mode",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "query_only",
        "schema_version",
        "user_version",
    )
)
_SQLITE_PROGRESS_OPS = 10_000  # VM instructions between two looks at the clock


class _SqliteGuard:
    """The authorizer and progress handler of one query, and what each stopped."""

    def __init__(self, limits: Limits) -> None:
        self.deadline = time.monotonic() + limits.timeout_s
        self.timed_out = False
        self.denied_function: str | None = None

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        if action in _SQLITE_READS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in _SQLITE_DENIED_FUNCTIONS:
                self.denied_function = arg2
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _SQLITE_REPORTING_PRAGMAS or (
                arg2 is None and name in _SQLITE_VALUE_PRAGMAS
            ):
                return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return 1  # non-zero: SQLite stops the statement with SQLITE_INTERRUPT
        return 0


def _is_sqlite_write_refusal(e: sqlite3.Error) -> bool:
    name = getattr(e, "sqlite_errorname", "")
    text = str(e)
    return (
        name.startswith(("SQLITE_READONLY", "SQLITE_AUTH"))
        or "readonly database" in text
        or "not authorized" in text
    )


def _sqlite_failure(e: Exception) -> str:
    if "one statement at a time" in str(e):  # Python refuses a second statement
        return ONE_STATEMENT_MESSAGE
    return f"query failed: {_first_line(e)}"


def _run_sqlite(url: str, query: str, limits: Limits) -> QueryResult:
    path = sqlite_path(url)
    if path is None:
        raise StoreError("infermeter sql needs a store in a file, not an in-memory database")
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} read-only: {_first_line(e)}") from None
    guard = _SqliteGuard(limits)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        # Temporary tables, sorts and the queue of a recursive CTE stay in memory,
        # where the heap limit counts them (in files they would fill the disk).
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA hard_heap_limit = {limits.max_bytes}")
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1 << 20, limits.max_bytes // 4))
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_authorizer(guard.authorize)
        conn.set_progress_handler(guard.progress, _SQLITE_PROGRESS_OPS)
        collected = _Collector(limits)
        try:
            cur = conn.execute(query)
            while batch := cur.fetchmany(1000):
                for row in batch:
                    collected.add(row)
        except MemoryError:  # SQLITE_NOMEM: the heap limit was reached
            raise ResultTooLarge(_memory_message(limits)) from None
        except sqlite3.DataError:  # SQLITE_TOOBIG: a value past the length limit
            raise ResultTooLarge(_memory_message(limits)) from None
        except sqlite3.Error as e:
            if guard.timed_out:
                raise QueryTimeout(_timeout_message(limits)) from None
            if guard.denied_function is not None:
                raise NotPermitted(
                    f"not permitted: infermeter sql does not call "
                    f"{printable(guard.denied_function)}()"
                ) from None
            if _is_sqlite_write_refusal(e):
                raise ReadOnlyViolation(READ_ONLY_MESSAGE) from None
            raise StoreError(_sqlite_failure(e)) from None
        except sqlite3.Warning as e:  # Python 3.11's "one statement at a time"
            raise StoreError(_sqlite_failure(e)) from None
        columns = tuple(d[0] for d in cur.description or ())
        return QueryResult(columns, collected.rows)
    finally:
        conn.rollback()
        conn.close()


# ----- PostgreSQL --------------------------------------------------------------------

# Predefined roles whose rights reach outside the store's tables: the server's
# files and programs (the three named by the issue), every table's data, other
# sessions, checkpoints. Names a server does not have are simply not found.
SERVER_ROLES = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_write_all_data",
    "pg_signal_backend",
    "pg_checkpoint",
)

_ROLE_SQL = """
SELECT r.rolname, r.rolsuper, r.rolcreaterole,
    (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_roles g
     WHERE g.oid <> r.oid AND pg_has_role(r.oid, g.oid, 'MEMBER')
       AND (g.rolsuper OR g.rolname = ANY(%(server_roles)s))),
    (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND (pg_has_role(r.oid, c.relowner, 'MEMBER')
            OR has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')))
FROM pg_roles r WHERE r.rolname = current_user
"""


def role_problem(conn: psycopg.Connection[Any]) -> str | None:
    """What the connection's role can do beyond reading the store, or None: it only reads.

    Membership is checked whether or not it is inherited ('MEMBER'): a role that
    may ``SET ROLE`` to a superuser can get its rights within one statement
    (``set_config('role', ...)``).
    """
    with conn.cursor() as cur:
        cur.execute(_ROLE_SQL, {"server_roles": list(SERVER_ROLES)})
        row = cur.fetchone()
    if row is None:
        return "its role is not in pg_roles"
    name, is_super, create_role, memberships, writable = row
    who = printable(name)
    if is_super:
        return f"superuser {who}"
    if memberships:
        return f"role {who}, a member of {printable(memberships)}"
    if create_role:
        return f"role {who}, which may create roles"
    if writable:
        return f"role {who}, which may write {printable(writable)}"
    return None


def check_reader(conn: psycopg.Connection[Any]) -> None:
    """Raise UnsafeRole, one line, unless the connection's role can only read."""
    problem = role_problem(conn)
    if problem is not None:
        raise UnsafeRole(problem)


def reader_conninfo(url: str, role: str) -> str:
    """The libpq URI that logs in to the store at ``url`` as ``role``.

    The URL's own password is for its own user and is dropped with it; the
    reader's comes from ``$PGPASSWORD`` or ``~/.pgpass`` (or pg_hba lets it
    in). A URL that already names the role is used as it is, password included;
    an empty role means the URL's user.
    """
    u = make_url(url)
    if role and u.username != role:
        # URL.set() keeps what is passed as None: build the URL without the password.
        u = URL.create(
            u.drivername, username=role, host=u.host, port=u.port, database=u.database,
            query=u.query,
        )  # fmt: skip
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def _login_options(limits: Limits) -> str:
    # Given at log-in, these are the session's; the one statement cannot unset them
    # for itself (the timer runs from the statement's start).
    return (
        f"-c statement_timeout={limits.timeout_ms} -c default_transaction_read_only=on "
        f"-c idle_in_transaction_session_timeout={limits.timeout_ms + 60_000}"
    )


def connect_reader(url: str, limits: Limits) -> psycopg.Connection[Any]:
    """A connection logged in as the reader role, checked to only read; one line if not."""
    import psycopg

    role = limits.reader_role or make_url(url).username or ""
    try:
        conn = psycopg.connect(
            reader_conninfo(url, limits.reader_role),
            connect_timeout=5,
            options=_login_options(limits),
            application_name="infermeter sql",
        )
    except psycopg.OperationalError as e:
        reason = _first_line(e)
        if "does not exist" in reason and "role" in reason:
            raise StoreError(
                f"sql connects to PostgreSQL as role {printable(role)}, which does not exist; "
                "create it with `infermeter db grant-reader`"
            ) from None
        if "password" in reason:
            raise StoreError(
                f"cannot log in to {redact(url)} as {printable(role)}: {reason}; give the "
                "role a password in $PGPASSWORD or ~/.pgpass, or a pg_hba.conf rule"
            ) from None
        raise StoreError(
            f"cannot connect to {redact(url)} as {printable(role)}: {reason}"
        ) from None
    try:
        conn.execute("SET TRANSACTION READ ONLY")
        check_reader(conn)
    except BaseException:
        conn.close()
        raise
    return conn


_Rows = Generator[tuple[Any, ...], None, None]  # what stream() returns, closable


def _run_postgresql(url: str, query: str, limits: Limits) -> QueryResult:
    import psycopg
    from psycopg import capabilities

    conn = connect_reader(url, limits)
    collected = _Collector(limits)
    size = 500 if capabilities.has_stream_chunked() else 1
    try:
        with conn.cursor() as cur:
            try:
                # stream() sends the extended protocol's one statement, and
                # fetches rows as they come instead of the whole result at once.
                with closing(cast(_Rows, cur.stream(query, size=size))) as rows:
                    for row in rows:
                        collected.add(row)
                columns = tuple(d.name for d in cur.description or ())
            except psycopg.errors.QueryCanceled as e:
                if "statement timeout" in str(e):
                    raise QueryTimeout(_timeout_message(limits)) from None
                raise StoreError(f"query failed: {_first_line(e)}") from None
            except psycopg.errors.ReadOnlySqlTransaction:
                raise ReadOnlyViolation(READ_ONLY_MESSAGE) from None
            except psycopg.errors.InsufficientPrivilege as e:
                raise NotPermitted(
                    f"not permitted: {_first_line(e)} (sql runs as a role that may only read)"
                ) from None
            except psycopg.errors.OutOfMemory:
                raise ResultTooLarge(_memory_message(limits)) from None
            except psycopg.errors.ConfigurationLimitExceeded as e:  # temp_file_limit
                raise ResultTooLarge(f"query stopped: {_first_line(e)}") from None
            except psycopg.errors.SyntaxError as e:
                if "multiple commands" in str(e):  # the extended protocol's one statement
                    raise StoreError(ONE_STATEMENT_MESSAGE) from None
                raise StoreError(f"query failed: {_first_line(e)}") from None
            except psycopg.ProgrammingError as e:
                if "didn't produce a result" in str(e):  # SET, LISTEN and the like
                    raise StoreError(
                        "query failed: that statement returns no result; sql runs queries"
                    ) from None
                raise StoreError(f"query failed: {_first_line(e)}") from None
            except psycopg.Error as e:
                raise StoreError(f"query failed: {_first_line(e)}") from None
        if not columns:
            columns = _describe(conn, query)
    except StoreError:
        raise
    except Exception as e:  # a lost connection mid-query
        raise StoreError(f"query on {redact(url)} failed: {_first_line(e)}") from None
    finally:
        try:
            conn.rollback()  # never commit: not even a NOTIFY or a large object survives
        finally:
            conn.close()
    return QueryResult(columns, collected.rows)


def _describe(conn: psycopg.Connection[Any], query: str) -> tuple[str, ...]:
    """The columns of a statement that returned no row (stream() gives them only with one).

    Parsing it again as an unnamed prepared statement runs nothing.
    """
    pgconn = conn.pgconn
    encoding = conn.info.encoding
    pgconn.prepare(b"", query.encode(encoding))
    res = pgconn.describe_prepared(b"")
    return tuple((res.fname(i) or b"").decode(encoding) for i in range(res.nfields))
