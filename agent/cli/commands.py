"""Registers every command module on the group (one module per command family)."""

from infermeter.cli import (  # noqa: F401
    config_cmd,
    db,
    demo,
    exec_cmd,
    export,
    plugins,
    prices,
    recommend,
    report,
    reprice,
    run,
    sql_cmd,
    top,
    trace,
)
