"""csv_out.RowWriter: CSV that gives back the exact stored strings.

Python 3.11's csv writer with ``lineterminator="\\n"`` writes a field
holding a lone CR unquoted, and every reader ends the row there; a model
name may hold one.
"""

from __future__ import annotations

import csv
import io

from infermeter.csv_out import RowWriter

TITLE = "m\x1b]0;pwned\x07t"
MARKUP = "[bold red]x[/]"
CSVISH = 'q"a,b\rc'  # a quote, a comma and a lone CR


def test_csv_rows_round_trip_cr_lf_quotes_and_stay_byte_identical_otherwise() -> None:
    rows = [["plain", "1.5", ""], [CSVISH, "a\rb", "c\nd"], [TITLE, MARKUP, "\ud800"]]
    out = io.StringIO()
    RowWriter(out).writerows(rows)
    back = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert back[:2] == rows[:2]
    assert back[2] == [TITLE, MARKUP, "\ufffd"]  # a lone surrogate cannot be UTF-8
    out.getvalue().encode()  # and so it encodes
    # Without CR or LF the bytes are csv.writer's with "\n" line ends, as before.
    plain = io.StringIO()
    ordinary = [rows[0], [TITLE, MARKUP, 'q"a,b']]
    csv.writer(plain, lineterminator="\n").writerows(ordinary)
    again = io.StringIO()
    RowWriter(again).writerows(ordinary)
    assert again.getvalue() == plain.getvalue()
