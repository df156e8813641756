"""The span datagram: what the in-process SDK sends and the agent accepts.

Both ends import this module, so the format and its limits live in one place.
A datagram is compact UTF-8 JSON::

    {"v": 1, "d": <dropped>, "s": [<span>, ...]}

``v`` is the format version, ``d`` the number of spans the sender dropped
since its previous datagram that got through (so the agent learns about an
outage when it comes back), and each span is an array in ``FIELDS`` order::

    [pid, model, t0, t1, items, tokens_in, tokens_out, request_id, tenant,
     {tag: value}, framework, device, dtype, parameters(, parts)]

A step span (one engine step shared by several requests, continuous
batching) has a fifteenth field, its parts: an array of at most
``MAX_PARTS`` ``[request_id, tenant, prefill_tokens, decode_tokens]``. A
span without parts is sent with fourteen fields, exactly as before, so an
agent of either age reads what an SDK of either age sends about model calls;
only a step span needs an agent that knows parts.

Arrays rather than objects keep a span near 100 bytes, so one datagram
(``MAX_DATAGRAM``) carries hundreds. JSON rather than a binary struct because
the agent must validate every field anyway and ``json`` is C-fast in both
processes. The receiver trusts nothing: ``decode`` checks types, finite
numbers, ``t1 >= t0`` and that counts are in range, and refuses a span
that fails (with the reason), or the whole datagram when its frame is bad.

Strings are made to fit the store rather than refused, since a tenant one
character too long must not cost the call: a lone surrogate (which no UTF-8
store can hold) and NUL (which PostgreSQL's text cannot) become U+FFFD, and
a string longer than its column is cut to it. This is the one place spans
are validated, so every limit is the store's: ``MAX_STR`` is the
VARCHAR(255) of model names, tenants and request ids, ``MAX_NAME`` the
VARCHAR(32) of a model's framework and dtype, ``MAX_COUNT`` the INTEGER of
items and tokens. ``decode`` counts the strings it changed. ``encode_batch``
cleans and checks the same way, so what the SDK sends decodes unchanged.
The limits are chosen so that every valid span without parts fits one
datagram; a step span whose parts' strings make it larger than a datagram is
refused by ``span_to_wire`` (say so with shorter request ids, or fewer parts
per step).

The payload's ``pid`` is informative only: the agent replaces it with the
pid the kernel vouches for (SO_PASSCRED), see ``receiver.py``.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infermeter.records import MAX_COUNT, Span, SpanPart

VERSION = 1
MAX_DATAGRAM = 60 * 1024  # bytes; under the 64 KiB a default wmem always allows
MAX_SPANS = 4096  # per datagram
# Strings (characters) are cut to these, the widths of the columns they go in.
MAX_STR = 255  # model, request_id, tenant (VARCHAR(255)); tag values (JSON)
MAX_SHORT = 64  # device, tag keys (not stored / JSON)
MAX_NAME = 32  # framework, dtype (models.framework and models.dtype are VARCHAR(32))
MAX_TAGS = 16
MAX_PARTS = 256  # requests sharing one step span
# Numbers outside these refuse the span: no real call has them, and a sum of
# them would overflow the store's columns.
MAX_PARAMETERS = 2**53 - 1  # a model's parameters (BIGINT; exact as a JSON number)
MAX_DROPPED = 2**63 - 1  # a sender's drop count (kept in memory only)
MAX_PID = 2**31 - 1

FIELDS = (
    "pid",
    "model",
    "t0",
    "t1",
    "items",
    "tokens_in",
    "tokens_out",
    "request_id",
    "tenant",
    "tags",
    "framework",
    "device",
    "dtype",
    "parameters",
)
OPTIONAL_FIELDS = ("parts",)  # sent only when not empty

ENV_SOCKET = "INFERMETER_SOCKET"
SYSTEM_SOCKET = "/run/infermeter/spans.sock"

_HEAD = b'{"v":%d,"d":%d,"s":['
_TAIL = b"]}"
# The head with the widest dropped count, plus the tail: what a datagram
# costs besides its spans.
_OVERHEAD = len(_HEAD % (VERSION, MAX_DROPPED)) + len(_TAIL)
_SPAN_BUDGET = MAX_DATAGRAM - _OVERHEAD  # the largest span a datagram carries


def default_socket_path() -> str:
    """Where the agent listens and the SDK sends, unless configured.

    ``$INFERMETER_SOCKET`` wins on both ends. Otherwise the system agent's
    ``/run/infermeter/spans.sock`` for root, or for anyone who can see it (an
    application running as a user, next to a system agent); else the user's
    runtime directory, so a developer can run both ends unprivileged.
    """
    env = os.environ.get(ENV_SOCKET)
    if env:
        return env
    euid = os.geteuid()
    if euid == 0 or os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "infermeter" if runtime else Path(f"/tmp/infermeter-{euid}")
    return str(base / "spans.sock")


# ----- validation, shared by both directions ----------------------------------

# What no store can hold: lone surrogates (not UTF-8) and NUL (PostgreSQL text).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class _Cleaner:
    """Checks one span's fields, fixing its strings and counting what it fixed."""

    __slots__ = ("changed",)

    def __init__(self) -> None:
        self.changed = 0

    def text(self, value: Any, name: str, limit: int, optional: bool = True) -> str | None:
        """``value`` as the store can hold it; ValueError if it is not a string."""
        if value is None and optional:
            return None
        if type(value) is not str:
            raise ValueError(f"{name} must be a string, not {type(value).__name__}")
        if len(value) <= limit and _UNSTORABLE.search(value) is None:
            return value
        cleaned = _UNSTORABLE.sub("\ufffd", value[:limit])
        if cleaned != value:
            self.changed += 1
        return cleaned

    def tags(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValueError(f"tags must be an object, not {type(value).__name__}")
        if len(value) > MAX_TAGS:
            raise ValueError(f"more than {MAX_TAGS} tags")
        out: dict[str, str] = {}
        for k, v in value.items():
            key = self.text(k, "tag key", MAX_SHORT, optional=False)
            if not key:
                raise ValueError("empty tag key")
            if key in out:  # two keys that differ only in what was replaced or cut
                self.changed += 1
            text = self.text(v, f"tag {key!r}", MAX_STR, optional=False)
            assert text is not None
            out[key] = text
        return out


def _count(value: Any, name: str, limit: int = MAX_COUNT, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int:  # bool is not a count
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{name} out of range 0..{limit}: {value}")
    return value


def _time(value: Any, name: str) -> float:
    if type(value) is not float and type(value) is not int:
        raise ValueError(f"{name} must be a number, not {type(value).__name__}")
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{name} must be finite and >= 0, not {value!r}")
    return t


def _clean_span(a: Any, cleaner: _Cleaner) -> list[Any]:
    """The span array ``a`` (FIELDS order) with its strings made storable.

    Raises ValueError, saying why, when a field cannot be fixed: a wrong
    type, a time that is not finite or runs backwards, a count out of range.
    """
    if type(a) is not list or not len(FIELDS) <= len(a) <= len(FIELDS) + len(OPTIONAL_FIELDS):
        raise ValueError(
            f"a span must be an array of {len(FIELDS)} fields "
            f"({len(FIELDS) + len(OPTIONAL_FIELDS)} with parts)"
        )
    _count(a[0], "pid", MAX_PID, optional=False)
    model = cleaner.text(a[1], "model", MAX_STR, optional=False)
    if not model:
        raise ValueError("empty model")
    t0 = _time(a[2], "t0")
    t1 = _time(a[3], "t1")
    if t1 < t0:
        raise ValueError(f"t1 < t0 ({t1!r} < {t0!r})")
    _count(a[4], "items", optional=False)
    _count(a[5], "tokens_in")
    _count(a[6], "tokens_out")
    _count(a[13], "parameters", MAX_PARAMETERS)
    return [
        a[0],
        model,
        a[2],
        a[3],
        a[4],
        a[5],
        a[6],
        cleaner.text(a[7], "request_id", MAX_STR),
        cleaner.text(a[8], "tenant", MAX_STR),
        cleaner.tags(a[9]),
        cleaner.text(a[10], "framework", MAX_NAME),
        cleaner.text(a[11], "device", MAX_SHORT),
        cleaner.text(a[12], "dtype", MAX_NAME),
        a[13],
        *([_clean_parts(a[14], cleaner)] if len(a) > len(FIELDS) else []),
    ]


def _clean_parts(value: Any, cleaner: _Cleaner) -> list[list[Any]]:
    """A step span's parts, each ``[request_id, tenant, prefill, decode]``, cleaned."""
    if type(value) is not list:
        raise ValueError(f"parts must be an array, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_PARTS:
        raise ValueError(f"a step span must have 1 to {MAX_PARTS} parts, not {len(value)}")
    out: list[list[Any]] = []
    for p in value:
        if type(p) is not list or len(p) != 4:
            raise ValueError("a part must be an array of 4 fields")
        _count(p[2], "prefill tokens", optional=False)
        _count(p[3], "decode tokens", optional=False)
        out.append(
            [
                cleaner.text(p[0], "part request_id", MAX_STR),
                cleaner.text(p[1], "part tenant", MAX_STR),
                p[2],
                p[3],
            ]
        )
    return out


def _span(a: list[Any], pid: int | None) -> Span:
    """The Span of a cleaned array; ``pid`` replaces the payload's."""
    return Span(
        a[0] if pid is None else pid,
        a[1],
        float(a[2]),
        float(a[3]),
        a[4],
        a[5],
        a[6],
        a[7],
        a[8],
        a[9],
        a[10],
        a[11],
        a[12],
        a[13],
        parts=tuple(SpanPart(*p) for p in a[14]) if len(a) > len(FIELDS) else (),
    )


# ----- encoding ----------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _as_time(x: Any) -> Any:
    """numpy scalars and int times become floats; anything else is left to the check."""
    if type(x) is float:
        return x
    if isinstance(x, bool) or not hasattr(type(x), "__float__"):
        return x
    return float(x)


def _as_count(x: Any) -> Any:
    """numpy integers become ints (they have __index__); floats stay and are refused."""
    if type(x) is int or x is None:
        return x
    if isinstance(x, bool) or x is None or not hasattr(type(x), "__index__"):
        return x
    return operator.index(x)


def _as_str(x: Any) -> Any:
    """A str subclass (an enum member) becomes a plain str."""
    if x is None or type(x) is str:
        return x
    return str.__str__(x) if isinstance(x, str) else x


def span_to_wire(span: Span) -> bytes:
    """One span's array as JSON bytes; ValueError if the agent would refuse it.

    Numbers from numpy and str subclasses are converted, not refused: the
    instrumentation hands over what the runtime gave it. Strings are cleaned
    as ``decode`` cleans them (replaced, cut), so the agent stores what the
    application would see decoded here, and counts no change of its own.
    """
    tags = span.tags
    a = [
        _as_count(span.pid),
        _as_str(span.model),
        _as_time(span.t0),
        _as_time(span.t1),
        _as_count(span.items),
        _as_count(span.tokens_in),
        _as_count(span.tokens_out),
        _as_str(span.request_id),
        _as_str(span.tenant),
        {_as_str(k): _as_str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else tags,
        _as_str(span.framework),
        _as_str(span.device),
        _as_str(span.dtype),
        _as_count(span.parameters),
    ]
    parts = span.parts
    if parts:
        a.append(
            [
                [
                    _as_str(p.request_id),
                    _as_str(p.tenant),
                    _as_count(p.prefill_tokens),
                    _as_count(p.decode_tokens),
                ]
                for p in parts
            ]
            if isinstance(parts, Sequence)
            else parts
        )
    data = _ENCODER.encode(_clean_span(a, _Cleaner())).encode("utf-8")
    if len(data) > _SPAN_BUDGET:
        raise ValueError(f"a span of {len(data)} bytes does not fit a datagram")
    return data


def pack(fragments: Sequence[bytes], dropped: int, start: int = 0) -> tuple[bytes, int]:
    """One datagram of ``fragments[start:]`` (as many as fit) carrying ``dropped``.

    Returns the datagram and how many fragments it holds. With no fragments
    left it still returns a datagram: one that only reports ``dropped``.
    """
    if type(dropped) is not int or not 0 <= dropped <= MAX_DROPPED:
        raise ValueError(f"dropped out of range: {dropped!r}")
    budget = _SPAN_BUDGET
    end = start
    size = 0
    while end < len(fragments) and end - start < MAX_SPANS:
        cost = len(fragments[end]) + (1 if end > start else 0)
        if size + cost > budget:
            break
        size += cost
        end += 1
    if end == start and start < len(fragments):
        raise ValueError("a span larger than a datagram")  # span_to_wire's limits prevent it
    body = b",".join(fragments[start:end])
    return (_HEAD % (VERSION, dropped)) + body + _TAIL, end - start


def encode_batch(spans: Iterable[Span], dropped: int = 0) -> list[bytes]:
    """Spans as datagrams of at most MAX_DATAGRAM bytes; the first carries ``dropped``.

    No spans and nothing dropped is no datagram at all. Raises ValueError on a
    span the receiver would refuse (the emitter encodes span by span instead,
    to drop and count only the bad one); strings are cleaned, not refused.
    """
    fragments = [span_to_wire(s) for s in spans]
    out: list[bytes] = []
    i = 0
    while i < len(fragments) or (not out and dropped):
        data, n = pack(fragments, dropped if not out else 0, i)
        out.append(data)
        i += n
    return out


# ----- decoding ----------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in an object")
    return obj


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one datagram holds, as the agent takes it."""

    spans: list[Span]
    dropped: int  # what the sender says it dropped before this datagram
    changed: int  # strings of the accepted spans replaced or cut to fit the store
    refused: tuple[str, ...]  # why each refused span was refused


def decode(data: bytes, pid: int | None = None) -> Decoded:
    """The spans of one datagram, each cleaned or refused on its own.

    A bad frame (not JSON, wrong keys, version, too many spans) raises
    ValueError saying what is wrong; a span that cannot be fixed is left out
    with its reason in ``refused``, so it costs no other span of its
    datagram. ``pid``, when given, is stored on every span instead of the
    payload's (the receiver passes the sender's kernel-verified pid).
    """
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"datagram of {len(data)} bytes is over {MAX_DATAGRAM}")
    try:
        doc = json.loads(
            data.decode("utf-8"),
            parse_constant=_no_constants,
            object_pairs_hook=_unique_object,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if type(doc) is not dict or doc.keys() != {"v", "d", "s"}:
        raise ValueError('a datagram must be an object with exactly "v", "d" and "s"')
    if type(doc["v"]) is not int or doc["v"] != VERSION:
        raise ValueError(f"unsupported version {doc['v']!r}")
    dropped = _count(doc["d"], "dropped", MAX_DROPPED, optional=False)
    assert dropped is not None
    items = doc["s"]
    if type(items) is not list:
        raise ValueError('"s" must be an array')
    if len(items) > MAX_SPANS:
        raise ValueError(f"more than {MAX_SPANS} spans")
    spans: list[Span] = []
    refused: list[str] = []
    changed = 0
    for a in items:
        cleaner = _Cleaner()
        try:
            cleaned = _clean_span(a, cleaner)
        except ValueError as e:
            refused.append(str(e))
            continue
        changed += cleaner.changed
        spans.append(_span(cleaned, pid))
    return Decoded(spans, dropped, changed, tuple(refused))


def decode_batch(data: bytes, pid: int | None = None) -> tuple[list[Span], int]:
    """(spans, dropped) from one datagram, or ValueError if any part is refused.

    The strict form of ``decode``, for what must round-trip whole (the SDK's
    own datagrams, tests); strings are still cleaned, not refused.
    """
    decoded = decode(data, pid)
    if decoded.refused:
        raise ValueError(decoded.refused[0])
    return decoded.spans, decoded.dropped
