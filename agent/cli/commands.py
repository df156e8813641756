"""Registers every command module on the group (one module per command family)."""

from infermeter.cli import config_cmd, db, exec_cmd, plugins, run, trace  # noqa: F401
