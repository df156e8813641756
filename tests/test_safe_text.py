"""safe_text.printable and the agent's log formatter: what a terminal is shown.

The expected escapes are written out by hand from the rule (ESC is ``\\e``,
BEL ``\\x07``, other controls ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``),
not computed with the code under test.
"""

from __future__ import annotations

import io
import logging
import re

from infermeter.safe_log import PrintableFormatter
from infermeter.safe_text import printable

CLEAR = "m\x1b[2Jclr"
TITLE = "m\x1b]0;pwned\x07t"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_log_lines_escape_controls_and_keep_traceback_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("infermeter.test_safe_text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("target %s\nFAKE forged line", CLEAR)
        try:
            raise ValueError(TITLE)
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING target m\\e[2Jclr\\nFAKE forged line"
    assert lines[1] == "ERROR failed"
    assert lines[2].startswith("Traceback")
    assert lines[-1] == "ValueError: m\\e]0;pwned\\x07t"
    assert not RAW.search(stream.getvalue())


def test_printable_shows_each_hidden_character() -> None:
    """The characters the lead's rule covers, and the ones this case added to it."""
    assert printable("m\x9b2J\x7f") == "m\\x9b2J\\x7f"
    assert printable(TITLE) == "m\\e]0;pwned\\x07t"
    assert printable("a\u061cb") == "a\\u061cb"  # ARABIC LETTER MARK: a bidi control
    assert printable("x\u00ad") == "x\\xad"  # SOFT HYPHEN: invisible mid-word
    assert printable("x\U000e0041") == "x\\U000e0041"  # TAG LATIN CAPITAL A: invisible
    assert printable("a\ud800") == "a\ufffd"
