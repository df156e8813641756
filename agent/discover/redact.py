"""Secrets out of command lines before the agent keeps them anywhere.

Any local user may read ``/proc/PID/cmdline``, but the agent copies command
lines into places that outlive the process and travel further: the store's
``targets.cmdline``, the traces ``infermeter record`` writes (attached to
bug reports), reports. Servers are routinely started with
``--api-key=sk-...`` or ``HF_TOKEN=hf_... python serve.py``, so every
command line is redacted once, where it enters the agent (discovery, and
the targets a replayed trace names), with ``[agent] redact_patterns``.

How a pattern applies, word by word (``redact_cmdline``):

- Each match in a word has its value group replaced by ``***``: the second
  group, or the only group, or the whole match for a pattern without
  groups. ``.`` also matches a newline, so a value cannot end the match
  early by holding one.
- A word that does not match alone but does when joined to the next word
  by a space (``--api-key sk-123``: the default flag pattern allows ``[= ]``)
  has that next word replaced whole, unless the next word is itself a long
  option (``--port``): argparse and click read it as one, and redacting it
  would hide the command's shape for nothing. A flag at the end of the line
  has no value to redact.
- A word holding whitespace (``sh -c "serve --api-key sk-1"``, a container's
  entry point) is also redacted token by token, the same way.

Redaction is idempotent and never adds or removes a word, so redacting a
command line that was already redacted (a trace replayed) changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from infermeter.errors import ConfigError

if TYPE_CHECKING:
    from infermeter.config import Config

REDACTED = "***"
OPTION = "agent.redact_patterns"

# What ``[agent] redact_patterns`` holds by default: the value after a flag
# naming a key, token, secret or password (``--api-key=v``, ``--hf-token v``);
# the value of a NAME=value word naming one, in any case, with dots or
# dashes (``OPENAI_API_KEY=v``, bare ``TOKEN=v``, ``+db.password=v``
# overrides); the password of a URL (``postgresql://app:pw@db``, the host
# stays). Flags that merely mention tokens lose their value too
# (``--max-tokens 512``, ``--tokenizer x``): a hidden number costs less
# than a leaked key.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"(?i)^(--?[\w.-]*(?:key|token|secret|password|passwd)[\w.-]*)[= ](.+)$",
    r"(?i)^([\w.+~-]*(?:key|token|secret|password|passwd)[\w.-]*)=(.+)$",
    r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@/\s]+)(?=@)",
)

_SPACE = re.compile(r"(\s+)")
_LONG_OPTION = re.compile(r"--[A-Za-z]")


def compile_patterns(raw: object) -> tuple[re.Pattern[str], ...]:
    """The patterns of ``[agent] redact_patterns``, compiled; ConfigError naming a bad one."""
    problem = check_patterns(raw)
    if problem:
        raise ConfigError(f"config key `{OPTION}`: {problem}")
    assert isinstance(raw, (list, tuple))
    return tuple(re.compile(p, re.DOTALL) for p in raw)


def check_patterns(raw: object) -> str | None:
    """What is wrong with a ``redact_patterns`` value, or None (an Option ``check``)."""
    if not isinstance(raw, (list, tuple)):
        return f"must be a list of regular expressions, not {type(raw).__name__}"
    for i, p in enumerate(raw):
        if not isinstance(p, str):
            return f"item {i} must be a string (a regular expression), not {type(p).__name__}"
        try:
            re.compile(p, re.DOTALL)
        except re.error as e:
            return f"item {i} ({p!r}) is not a valid regular expression: {e}"
    return None


_CACHE: dict[str, tuple[re.Pattern[str], ...]] = {}


def patterns_for(config: Config) -> tuple[re.Pattern[str], ...]:
    """The compiled patterns of ``config``; ConfigError when one is not a regex."""
    raw = config[OPTION]
    key = repr(raw)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _CACHE[key] = compile_patterns(raw)
    return cached


def default_patterns() -> tuple[re.Pattern[str], ...]:
    """The compiled defaults of ``[agent] redact_patterns``, for callers without a config."""
    return compile_patterns(DEFAULT_PATTERNS)


def redact_cmdline(words: Iterable[str], patterns: Sequence[re.Pattern[str]]) -> tuple[str, ...]:
    """``words`` with every value the patterns find replaced by ``***``, word for word."""
    return tuple(_redact_words(list(words), patterns))


def _redact_words(words: list[str], patterns: Sequence[re.Pattern[str]]) -> list[str]:
    out = [_redact_word(w, patterns) for w in words]
    for i in range(len(out) - 1):
        tokens = out[i].split()
        flag = tokens[-1] if tokens else out[i]
        value = out[i + 1]
        if value == REDACTED or _LONG_OPTION.match(value):
            continue
        if not _matches_alone(flag, patterns) and _takes_next(flag, value, patterns):
            out[i + 1] = REDACTED
    return out


def _redact_word(word: str, patterns: Sequence[re.Pattern[str]]) -> str:
    for p in patterns:
        word = p.sub(_masked, word)
    if _SPACE.search(word):
        parts = _SPACE.split(word)  # tokens at even indexes, the whitespace between at odd
        tokens = _redact_words(parts[0::2], patterns)
        parts[0::2] = tokens
        word = "".join(parts)
    return word


def _value_group(m: re.Match[str]) -> int:
    groups = m.re.groups
    return 2 if groups >= 2 else groups  # 1: the only group; 0: the whole match


def _masked(m: re.Match[str]) -> str:
    g = _value_group(m)
    start, end = m.span(g)
    if start < 0 or start == end:
        return m.group(0)  # the value group did not take part, or is empty
    base = m.start()
    text = m.group(0)
    return text[: start - base] + REDACTED + text[end - base :]


def _matches_alone(word: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(_has_value(m) for p in patterns for m in p.finditer(word))


def _has_value(m: re.Match[str]) -> bool:
    start, end = m.span(_value_group(m))
    return 0 <= start < end


def _takes_next(flag: str, value: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """Whether some pattern reads ``flag value`` as a flag and ``value`` as its whole value."""
    joined = f"{flag} {value}"
    want = (len(flag) + 1, len(joined))
    return any(m.span(_value_group(m)) == want for p in patterns for m in p.finditer(joined))
