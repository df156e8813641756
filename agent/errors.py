"""Errors the CLI turns into one line on stderr and exit code 2.

Anything raised as an ``InfermeterError`` is the user's to fix (a bad key, an
unreachable database, a second agent on one file); every other exception is
a bug and keeps its traceback.
"""

from __future__ import annotations


class InfermeterError(Exception):
    """A problem the user can fix; its message is one line naming it."""


class ConfigError(InfermeterError):
    pass


class StoreError(InfermeterError):
    pass


class StoreLockedError(StoreError):
    pass
