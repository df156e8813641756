"""Reading a recorded trace whole, or saying exactly where it is not.

A replay that believes a damaged trace stores a host with energy silently
missing (a GPU file that stops parsing halfway, a NaN that poisons a sum).
So every file a replay reads is read through one of these readers: each line
is parsed and checked (numbers finite and in range, times not going back), a
line that fails becomes a ``TraceProblem`` naming the file, the line and
what is wrong, and the rest of the file is still read. ``infermeter replay``
asks every plugin for its files' problems before it writes anything
(``infermeter_replay_check``) and refuses the trace on the first one; with
``--partial`` the same readers hand the replay the readable rows and the
problems are recorded as the trace's gaps, with the stretch of recorded time
each one leaves out.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infermeter.errors import InfermeterError


@dataclass(frozen=True, slots=True)
class TraceProblem:
    """One place in a trace that cannot be read, and the recorded time it leaves out.

    ``line`` is 1-based. ``t_from``/``t_to`` are the times of the good rows
    around it (None: from the start, or to the end, of the file); a problem
    that makes the whole file unusable has ``whole_file`` set.
    """

    path: Path
    line: int
    what: str
    t_from: float | None = None
    t_to: float | None = None
    whole_file: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"

    @property
    def missing(self) -> str:
        """The recorded time a replay without this line lacks, in words."""
        if self.whole_file:
            return "the whole file"
        if self.t_from is not None and self.t_to is not None:
            return f"{self.t_from:.3f} to {self.t_to:.3f} ({self.t_to - self.t_from:.3f} s)"
        if self.t_from is not None:
            return f"after {self.t_from:.3f} (to the end of the file)"
        if self.t_to is not None:
            return f"before {self.t_to:.3f} (from the start of the file)"
        return "no recorded time (the line has none)"

    def payload(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "line": self.line,
            "what": self.what,
            "t_from": self.t_from,
            "t_to": self.t_to,
            "whole_file": self.whole_file,
        }


class TraceError(InfermeterError):
    """A trace that cannot be read whole: its first problem, as one line."""

    def __init__(self, problem: TraceProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class BadValue(ValueError):
    """What is wrong with one line; the reader adds the file and line.

    ``args[0]`` is the message; a second argument, when given, is the text of
    the offending token, for finding its line in a whole-file document.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def show(value: Any, limit: int = 60) -> str:
    """A value as a short repr: control characters escaped, long garbage cut."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _no_constant(name: str) -> Any:
    raise BadValue(f"{name} is not a number", name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadValue(f"{text} is not a finite number", text)
    return value


def json_value(text: str) -> Any:
    """Parse JSON text, refusing NaN, Infinity and numbers that overflow to them."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise BadValue(f"not JSON (column {e.colno}: {e.msg})") from None


def number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
) -> float:
    """``value`` (a number, or the text of a CSV cell) as a finite number in [low, high].

    BadValue naming ``name`` and showing the value as it was written otherwise.
    """
    raw = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadValue(f"{name}: {show(raw)} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"{name}: {show(raw)} is not a number")
    if not math.isfinite(value):
        raise BadValue(f"{name}: {show(raw)} is not a finite number")
    if integer and value != int(value):
        raise BadValue(f"{name}: {show(raw)} is not a whole number")
    if low is not None and value < low:
        raise BadValue(f"{name}: {show(raw)} is below {low:g}")
    if high is not None and value > high:
        raise BadValue(f"{name}: {show(raw)} is above {high:g}")
    return float(value)


def whole(value: Any, name: str, low: float | None = 0, high: float | None = None) -> int:
    """A whole number (an int, or a float without fraction) in [low, high]."""
    return int(number(value, name, low, high, integer=True))


def text(value: Any, name: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise BadValue(f"{name}: {show(value)} is not a {'' if empty else 'non-empty '}string")
    return value


def mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadValue(f"{name}: expected an object, found {type(value).__name__}")
    return value


def sequence(value: Any, name: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise BadValue(f"{name}: expected a list, found {type(value).__name__}")
    if length is not None and len(value) != length:
        raise BadValue(f"{name}: expected {length} items, found {len(value)}")
    return value


# Consecutive rows of a recording are fractions of a second apart; rows this far
# from the rest of their file are a corrupt time, not a pause.
MAX_GAP_S = 3600.0


class LineReader:
    """Reads one line-oriented trace file, keeping the good rows' times and the problems.

    ``rows(parse)`` yields ``parse(number, text)`` for every line that parses;
    ``parse`` raises ``BadValue`` (or ValueError, KeyError, TypeError) for a
    line it refuses and returns ``(t, row)`` where ``t`` is the line's time
    (None when it has none). Times must not go backwards: the longest run of
    lines in time order is kept, so one corrupt time is the one line named
    (a time far ahead does not make every later line "go back"). With
    ``max_gap_s``, rows more than that from the rest of the file (the
    largest stretch without such a gap) are problems too: one corrupt time
    must not stretch a replay over years. After ``rows``, ``problems`` holds
    each bad line with the times of the good lines around it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._bad: list[tuple[int, str]] = []
        self._whole: TraceProblem | None = None
        self._lines: list[int] = []  # line numbers of good rows with a time
        self._times: list[float] = []

    def fail_file(self, line: int, what: str) -> None:
        """The file cannot be used at all (missing, not text, a bad header)."""
        self._whole = TraceProblem(self.path, line, what, whole_file=True)

    def lines(self) -> Iterator[tuple[int, str, bool]]:
        """(number, text, last line without a newline) of every non-blank line."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            self.fail_file(1, f"cannot be read ({e.strerror or e})")
            return
        raw = data.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        for i, chunk in enumerate(raw):
            number = i + 1
            try:
                line = chunk.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as e:
                self._bad.append((number, f"not UTF-8 text (byte {e.start + 1})"))
                continue
            if line.strip():
                yield number, line, i == len(raw) - 1 and not data.endswith(b"\n")

    def rows(
        self,
        parse: Callable[[int, str], tuple[float | None, Any]],
        header: Callable[[str], None] | None = None,
        max_gap_s: float | None = None,
    ) -> list[Any]:
        """The parsed rows; ``header`` checks the first line, and a bad header fails the file."""
        parsed: list[tuple[int, float | None, Any]] = []
        lines = self.lines()
        if header is not None:
            number, line, _ = next(lines, (1, "", True))
            try:
                header(line)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                self.fail_file(number, "empty file: no header line" if not line else _what(e))
                return []
        for number, line, unterminated in lines:
            try:
                t, row = parse(number, line)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                what = _what(e)
                self._bad.append(
                    (number, f"truncated last line ({what})" if unterminated else what)
                )
                continue
            parsed.append((number, t, row))
        timed = [(number, t) for number, t, _ in parsed if t is not None]
        dropped = self._out_of_order(timed, max_gap_s)
        kept = [(n, t) for n, t in timed if n not in dropped]
        self._lines = [n for n, _ in kept]
        self._times = [t for _, t in kept]
        self._bad.sort()
        return [row for number, _, row in parsed if number not in dropped]

    def _out_of_order(
        self, timed: list[tuple[int, float]], max_gap_s: float | None
    ) -> dict[int, str]:
        """Lines whose time is not in order with the rest (longest non-decreasing run kept)."""
        keep = _longest_in_order([t for _, t in timed])
        dropped: dict[int, str] = {}
        kept = [timed[i] for i in keep]
        if max_gap_s is not None and kept:
            stretches: list[list[tuple[int, float]]] = [[kept[0]]]
            for a, b in itertools.pairwise(kept):
                if b[1] - a[1] > max_gap_s:
                    stretches.append([])
                stretches[-1].append(b)
            main = max(stretches, key=len)
            for stretch in stretches:
                if stretch is not main:
                    for n, t in stretch:
                        away = min(abs(t - main[0][1]), abs(t - main[-1][1]))
                        dropped[n] = f"time {t!r} is {away:.0f} s away from the rest of the file"
            kept = main
        kept_t = [t for _, t in kept]
        kept_n = [n for n, _ in kept]
        chosen = set(kept_n)
        for n, t in timed:
            if n in chosen or n in dropped:
                continue
            i = bisect.bisect_left(kept_n, n)
            if i > 0 and t < kept_t[i - 1]:
                dropped[n] = f"time goes backwards ({t!r} after {kept_t[i - 1]!r})"
            elif i < len(kept_t):
                dropped[n] = f"time jumps ahead ({t!r} before {kept_t[i]!r})"
            else:
                dropped[n] = f"time out of order ({t!r})"
        self._bad.extend(dropped.items())
        return dropped

    @property
    def problems(self) -> list[TraceProblem]:
        if self._whole is not None:
            return [self._whole]
        out = []
        for number, what in self._bad:
            i = bisect.bisect_left(self._lines, number)
            t_from = self._times[i - 1] if i > 0 else None
            t_to = self._times[i] if i < len(self._times) else None
            out.append(TraceProblem(self.path, number, what, t_from, t_to))
        return out


def _longest_in_order(values: list[float]) -> list[int]:
    """Indices of a longest non-decreasing subsequence (patience sorting, O(n log n))."""
    tails: list[float] = []  # smallest tail value of a run of each length
    tail_at: list[int] = []  # index of that tail
    before: list[int] = [-1] * len(values)
    for i, v in enumerate(values):
        k = bisect.bisect_right(tails, v)
        if k > 0:
            before[i] = tail_at[k - 1]
        if k == len(tails):
            tails.append(v)
            tail_at.append(i)
        else:
            tails[k] = v
            tail_at[k] = i
    out: list[int] = []
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        out.append(i)
        i = before[i]
    return out[::-1]


def read_lines(
    path: Path,
    parse: Callable[[int, str], tuple[float | None, Any]],
    header: Callable[[str], None] | None = None,
    max_gap_s: float | None = None,
    optional: bool = False,
) -> tuple[list[Any], list[TraceProblem]]:
    """A line-oriented trace file's readable rows and its problems, in one call.

    The one reader of every such file, the core's and each plugin's: see
    ``LineReader.rows`` for ``parse``, ``header`` and ``max_gap_s``. With
    ``optional`` a file that is not there is a trace without it (no rows, no
    problem); otherwise it is a problem, a file that cannot be read.
    """
    if optional and not path.is_file():
        return [], []
    reader = LineReader(path)
    rows = reader.rows(parse, header, max_gap_s)
    return rows, reader.problems


def _what(e: Exception) -> str:
    if isinstance(e, BadValue):
        return str(e.args[0])
    if isinstance(e, KeyError):
        return f"missing {e.args[0]!r}"
    if isinstance(e, IndexError):
        return "too few items"
    return f"{type(e).__name__}: {e}"


_REQUIRED: Any = object()


def load_document(path: Path, absent: Any = _REQUIRED) -> tuple[Any, list[TraceProblem]]:
    """A whole-file JSON document, or None and the problem (at the line JSON names).

    With ``absent``, a file that is not there reads as ``absent`` with no
    problem (a trace without it); without it, that is a problem too.
    """
    if absent is not _REQUIRED and not path.is_file():
        return absent, []
    label = path
    try:
        data = path.read_bytes().decode("utf-8")
    except OSError as e:
        return None, [
            TraceProblem(label, 1, f"cannot be read ({e.strerror or e})", whole_file=True)
        ]
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        return None, [TraceProblem(label, line, "not UTF-8 text", whole_file=True)]
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite_float), []
    except json.JSONDecodeError as e:
        what = f"not JSON (column {e.colno}: {e.msg})"
        if e.pos >= len(data.rstrip()):
            what = f"truncated ({e.msg})"
        return None, [TraceProblem(label, e.lineno, what, whole_file=True)]
    except BadValue as e:  # NaN, Infinity or an overflowing number: at its line
        token = str(e.args[1]) if len(e.args) > 1 else ""
        line = next((n for n, x in enumerate(data.splitlines(), 1) if token and token in x), 1)
        return None, [TraceProblem(label, line, str(e.args[0]), whole_file=True)]


def key_line(path: Path, key: str, nth: int = 0) -> int:
    """The line of the ``nth`` occurrence of ``"key"`` in a JSON file (1 when not found).

    A value of the right JSON syntax but the wrong kind is named at the line
    its key is on, which is where an editor should go.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return 1
    needle, seen = f'"{key}"', 0
    for number, line in enumerate(lines, 1):
        count = line.count(needle)
        if seen + count > nth:
            return number
        seen += count
    return 1


def first(problems: list[TraceProblem]) -> TraceProblem | None:
    """The problem to refuse a trace with: the first file's (by name), first line."""
    return min(problems, key=lambda p: (str(p.path), p.line), default=None)
