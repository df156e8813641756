"""The effective configuration: defaults, a TOML file, environment, options.

Every key is declared (by the core here, by plugins through
``infermeter_config_options``) with its default and type, so a typo or a
wrong type in a file is an error naming the key, and ``infermeter config
show`` can say where each value came from.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from infermeter.discover.redact import DEFAULT_PATTERNS, check_patterns
from infermeter.errors import ConfigError

ENV_CONFIG = "INFERMETER_CONFIG"
ENV_DB = "INFERMETER_DB"


@dataclass(frozen=True, slots=True)
class Option:
    """One config key: ``[section] key = default``."""

    section: str
    key: str
    default: Any
    help: str
    type: type | tuple[type, ...] | None = None  # None: the default's type
    choices: tuple[Any, ...] | None = None
    # Further validation: returns what is wrong with a value, or None.
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def accepts(self, value: Any) -> bool:
        expected = self.type if self.type is not None else type(self.default)
        if (
            isinstance(value, bool)
            and expected is not bool
            and not (isinstance(expected, tuple) and bool in expected)
        ):
            return False  # TOML true is not the number 1
        if expected is float and isinstance(value, int):
            return True
        if isinstance(expected, tuple) and float in expected and isinstance(value, int):
            return True
        return isinstance(value, expected)


def above(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    """An Option ``check``: the value must be > ``low`` (and <= ``high`` when given).

    For a number the code divides by or scales with, where 0 would fail later
    and far from the config (a ZeroDivisionError in a recommender): the bad
    value is one error naming its key when the config is read.
    """

    def check(value: Any) -> str | None:
        if value <= low:
            return f"must be > {low}, not {value!r}"
        if high is not None and value > high:
            return f"must be <= {high}, not {value!r}"
        return None

    return check


def at_least(low: float) -> Callable[[Any], str | None]:
    """An Option ``check``: the value must be >= ``low`` (a count, a queue length)."""

    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low}, not {value!r}"

    return check


CORE_OPTIONS: tuple[Option, ...] = (
    Option("agent", "host", "", "Host name stored with every row; empty: this machine's name."),
    Option("agent", "tick_s", 1.0, "Seconds between ticks (discover, read meters, attribute)."),
    Option("agent", "flush_s", 10.0, "Seconds between flushes of attributed shares to the store."),
    Option("agent", "rollup_s", 300.0, "Seconds between updates of the hourly rollups."),
    Option("agent", "retention_s", 3600.0, "Seconds between runs of the retention job."),
    Option("agent", "recommend_s", 3600.0, "Seconds between runs of the recommenders."),
    Option(
        "agent",
        "buffer_max_shares",
        200_000,
        "Shares held in memory while the store is away; "
        "beyond it the oldest are dropped and counted.",
    ),
    Option(
        "agent",
        "span_lag_s",
        2.0,
        "Seconds a flush leaves unattributed so that the "
        "spans ending in them can arrive from the inference processes.",
    ),
    Option(
        "agent",
        "log_level",
        "info",
        "debug | info | warning | error.",
        choices=("debug", "info", "warning", "error"),
    ),
    Option(
        "store",
        "url",
        "",
        f"SQLAlchemy URL; empty: SQLite in the data directory. Overridden by ${ENV_DB} and --db.",
    ),
    Option("store", "retention_days", 90, "Days of per-interval shares kept; rollups are kept."),
    Option(
        "store",
        "spool_dir",
        "",
        "Where a final flush that cannot reach the store leaves its batches, written "
        "first by the next start; empty: the data directory.",
    ),
    Option(
        "agent",
        "buffer_max_calls",
        200_000,
        "Model calls held in unwritten batches while the store is away; "
        "beyond it the oldest batches are dropped and counted.",
    ),
    Option(
        "agent",
        "ledger_max_spans",
        500_000,
        "Spans held in memory waiting for their intervals to be attributed; "
        "beyond it the oldest are dropped and counted.",
    ),
    Option(
        "agent",
        "span_horizon_s",
        3600.0,
        "A span that ends more than this many seconds after now, or started more "
        "than this long before the oldest interval still held, is refused and counted.",
    ),
    Option(
        "agent",
        "redact_patterns",
        list(DEFAULT_PATTERNS),
        "Regular expressions over command-line words: what the second group (else the "
        "only group, else the whole match) matches is stored as *** (a flag's value in "
        "the next word is redacted too).",
        list,
        check=check_patterns,
    ),
    Option("sql", "timeout_s", 10.0, "Seconds a `sql` query may run before it is stopped."),
    Option("sql", "max_rows", 100_000, "Rows `sql` prints at most; beyond them it stops."),
    Option(
        "sql",
        "max_memory_mb",
        256,
        "Memory (MiB) a `sql` query may use in SQLite's cache and temporary store.",
    ),
    Option(
        "sql",
        "reader_role",
        "infermeter_reader",
        "PostgreSQL role `sql` runs as: one that can only read "
        "(`infermeter db grant-reader` creates it).",
    ),
    Option(
        "plugins", "disabled", [], "Plugin names (as `infermeter plugins` lists) not to load.", list
    ),
)

_VALID_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Config:
    """Effective values keyed ``section.key``, with where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    options: Mapping[str, Option]
    path: Path | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def section(self, section: str) -> dict[str, Any]:
        prefix = section + "."
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    @property
    def host(self) -> str:
        return str(self.values["agent.host"]) or socket.gethostname()

    @property
    def store_url(self) -> str:
        return str(self.values["store.url"]) or default_sqlite_url()


ENV_DATA_DIR = "INFERMETER_DATA_DIR"


def data_dir() -> Path:
    """Where the embedded store lives: /var/lib/infermeter for root, else per user.

    ``$INFERMETER_DATA_DIR`` moves it (packaging, containers, tests).
    """
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/infermeter")
    return Path(platformdirs.user_data_dir("infermeter", appauthor=False))


def default_sqlite_url() -> str:
    return f"sqlite:///{data_dir() / 'infermeter.db'}"


def default_config_paths() -> list[Path]:
    """Searched in order when neither --config nor $INFERMETER_CONFIG is given."""
    return [
        Path(platformdirs.user_config_dir("infermeter", appauthor=False)) / "config.toml",
        Path("/etc/infermeter/config.toml"),
    ]


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """Return the file to read and how it was chosen. An explicit one must exist."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} (--config) does not exist")
        return path, "--config"
    if environ.get(ENV_CONFIG):
        path = Path(environ[ENV_CONFIG])
        if not path.is_file():
            raise ConfigError(f"config file {path} (${ENV_CONFIG}) does not exist")
        return path, f"${ENV_CONFIG}"
    for path in default_config_paths():
        if path.is_file():
            return path, "default location"
    return None, ""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None


def build_config(
    options: Iterable[Option],
    file_values: Mapping[str, Any] | None = None,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults < file < environment < command-line overrides, checking each key."""
    declared: dict[str, Option] = {}
    for opt in options:
        declared[opt.name] = opt
    values = {name: opt.default for name, opt in declared.items()}
    sources = dict.fromkeys(declared, "default")
    where = str(path) if path else "config"

    for section, table in (file_values or {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: `{section}` must be a [section] table")
        for key, value in table.items():
            name = f"{section}.{key}"
            _set(declared, values, sources, name, value, f"file {where}")

    env = environ if environ is not None else os.environ
    if env.get(ENV_DB):
        _set(declared, values, sources, "store.url", env[ENV_DB], f"${ENV_DB}")
    for name, value in (overrides or {}).items():
        if value is not None:
            _set(declared, values, sources, name, value, _flag_for(name))

    _check_values(values)
    return Config(values=values, sources=sources, options=declared, path=path)


def load_config(
    options: Sequence[Option],
    explicit_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    env = environ if environ is not None else os.environ
    path, _how = find_config_file(explicit_path, env)
    file_values = read_toml(path) if path else {}
    return build_config(options, file_values, path, env, overrides)


def _flag_for(name: str) -> str:
    return {"store.url": "--db"}.get(name, f"option {name}")


def _set(
    declared: Mapping[str, Option],
    values: dict[str, Any],
    sources: dict[str, str],
    name: str,
    value: Any,
    source: str,
) -> None:
    opt = declared.get(name)
    if opt is None:
        raise ConfigError(f"unknown config key `{name}` in {source}")
    if not opt.accepts(value):
        want = opt.type if opt.type is not None else type(opt.default)
        want_name = (
            " or ".join(t.__name__ for t in want) if isinstance(want, tuple) else want.__name__
        )
        raise ConfigError(
            f"config key `{name}` in {source} must be {want_name}, not {type(value).__name__} "
            f"({value!r})"
        )
    if opt.choices is not None and value not in opt.choices:
        allowed = ", ".join(repr(c) for c in opt.choices)
        raise ConfigError(
            f"config key `{name}` in {source} must be one of {allowed}, not {value!r}"
        )
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            raise ConfigError(f"config key `{name}` in {source}: {problem}")
    if isinstance(opt.default, float) and isinstance(value, int):
        value = float(value)
    values[name] = value
    sources[name] = source


def _check_values(values: Mapping[str, Any]) -> None:
    for name in (
        "agent.tick_s",
        "agent.flush_s",
        "agent.rollup_s",
        "agent.retention_s",
        "agent.recommend_s",
    ):
        if values[name] <= 0:
            raise ConfigError(f"config key `{name}` must be > 0, not {values[name]}")
    if values["agent.flush_s"] < values["agent.tick_s"]:
        raise ConfigError("config key `agent.flush_s` must be >= `agent.tick_s`")
    if values["agent.log_level"] not in _VALID_LOG_LEVELS:
        raise ConfigError(
            f"config key `agent.log_level` must be one of {', '.join(_VALID_LOG_LEVELS)}, "
            f"not {values['agent.log_level']!r}"
        )
    if values["store.retention_days"] < 1:
        raise ConfigError("config key `store.retention_days` must be >= 1")
