"""Log lines that cannot drive the terminal they are read on.

The agent logs what it meets: command lines of discovered processes, model
names, plugin errors, all written by programs we do not trust. Run in the
foreground, its stderr is an operator's terminal, so each record's message
and traceback go through ``safe_text.printable`` line by line: an ESC or a
bidi override is shown as an escape, and a newline inside a message cannot
forge a log line of its own (a traceback keeps its lines).
"""

from __future__ import annotations

import logging
from types import TracebackType

from infermeter.safe_text import printable

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class PrintableFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output holds no control character but its line ends."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines(super().formatStack(stack_info))


def _lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))
