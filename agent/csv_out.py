"""CSV rows that every reader splits back into the very strings we stored.

The machine outputs (``report --csv``, ``export focus``) keep labels
verbatim, so a model name may carry a comma, a quote, a newline or a lone
carriage return. Python 3.11's csv writer quotes a field only for the
characters of its own line terminator: with ``lineterminator="\\n"`` a field
holding "\\r" goes out bare, and a reader (or a spreadsheet) ends the row
there. So each row is written with "\\r\\n", which quotes both, and then ends
in "\\n", the line end these outputs have always had: rows without either
character come out byte for byte as before. A lone surrogate, which UTF-8
cannot carry, becomes U+FFFD instead of an exception halfway through an
export.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import IO

_SURROGATE = re.compile("[\ud800-\udfff]")


class RowWriter:
    """``csv.writer``'s writerow and writerows onto ``out``, each row ending in "\\n"."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._line = io.StringIO()
        self._csv = csv.writer(self._line, lineterminator="\r\n")

    def writerow(self, row: Iterable[object]) -> None:
        line = self._line
        line.seek(0)
        line.truncate()
        self._csv.writerow(row)
        text = line.getvalue()[:-2]  # the "\r\n" that ends the row, never one inside quotes
        if not text.isascii():  # most rows are: they skip the search
            text = _SURROGATE.sub("\ufffd", text)
        self._out.write(text + "\n")

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)
