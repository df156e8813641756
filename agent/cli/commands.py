"""Imports every command module, registering them all at once (the CLI itself
loads each lazily, see COMMAND_MODULES; tests and doc tools use this)."""

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
    status,
    top,
    trace,
)
