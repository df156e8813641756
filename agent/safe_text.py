"""Stored labels made safe for a terminal.

Model names, tenants, tags and command lines come from the inference
processes, which we do not trust: an ESC sequence in a model name would
recolour, clear or retitle the operator's terminal, and ``[bold]x[/]``
would be read as rich markup, so two different names could print alike.
Every command that prints stored text passes it through here. Machine
outputs (CSV, JSON) keep the text verbatim: their own quoting keeps them
valid.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# C0 and C1 controls, DEL, and the Unicode format and separator controls that
# reorder or hide text (bidi overrides and marks, the Arabic letter mark among
# them, zero-width joiners, soft hyphens, line separators, interlinear
# annotations, tag characters).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _visible(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object) -> str:
    """``value`` as text with every control character shown as a visible escape.

    Lone surrogates (which a terminal cannot encode) become U+FFFD.
    """
    text = value if isinstance(value, str) else str(value)
    return _SURROGATE.sub("\ufffd", _UNSAFE.sub(_visible, text))


def label(value: object, style: str = "") -> Text:
    """A rich Text of ``value``: printable, and never interpreted as markup."""
    return Text(printable(value), style=style)


def markup_safe(value: object) -> str:
    """``value`` printable and escaped for a rich markup string."""
    return escape(printable(value))
