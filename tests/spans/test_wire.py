"""The span datagram: round trips, splitting, and strict refusal of anything else."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.records import FULL_SPAN

from infermeter.records import Span, SpanPart
from infermeter.spans import wire
from infermeter.spans.wire import (
    MAX_DATAGRAM,
    MAX_NAME,
    MAX_PARTS,
    MAX_SHORT,
    MAX_SPANS,
    MAX_STR,
    MAX_TAGS,
    decode_batch,
    encode_batch,
)

MINIMAL = Span(pid=1, model="m", t0=0.0, t1=0.0)


def _one(data: list[bytes]) -> bytes:
    assert len(data) == 1
    return data[0]


def test_round_trip_keeps_every_field() -> None:
    spans, dropped = decode_batch(_one(encode_batch([FULL_SPAN, MINIMAL], dropped=17)))
    assert spans == [FULL_SPAN, MINIMAL]
    assert dict(spans[0].tags) == dict(FULL_SPAN.tags)
    assert dropped == 17


def test_the_format_is_the_documented_one() -> None:
    doc = json.loads(_one(encode_batch([FULL_SPAN], dropped=3)))
    assert doc["v"] == 1 and doc["d"] == 3
    assert doc["s"][0][: len(wire.FIELDS)] == [
        4242,
        "resnet50",
        FULL_SPAN.t0,
        FULL_SPAN.t1,
        8,
        120,
        33,
        "req-1",
        "acme",
        {"team": "vision", "région": "eu-ouest"},
        "torch",
        "cuda:0",
        "bfloat16",
        25_557_032,
    ]


def test_pid_given_to_decode_replaces_the_payloads() -> None:
    spans, _ = decode_batch(_one(encode_batch([FULL_SPAN])), pid=77)
    assert [s.pid for s in spans] == [77]


def test_dropped_alone_is_one_datagram_and_nothing_is_none() -> None:
    assert decode_batch(_one(encode_batch([], dropped=100_000))) == ([], 100_000)
    assert encode_batch([], dropped=0) == []


def test_a_large_batch_splits_under_the_limit_and_reports_drops_once() -> None:
    fat = Span(
        pid=3,
        model="x" * MAX_STR,
        t0=1.0,
        t1=2.0,
        tags={f"k{i}": "v" * MAX_STR for i in range(MAX_TAGS)},
    )
    spans = [fat] * 40 + [MINIMAL] * (MAX_SPANS + 10)
    datagrams = encode_batch(spans, dropped=9)
    assert len(datagrams) >= 3
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    decoded = [decode_batch(d) for d in datagrams]
    assert [s for batch, _ in decoded for s in batch] == spans
    assert [d for _, d in decoded] == [9] + [0] * (len(datagrams) - 1)


def test_the_largest_valid_span_fits_one_datagram() -> None:
    worst = "\x01" * MAX_STR  # escaped as \u0001: six bytes a character
    span = Span(
        pid=wire.MAX_PID,
        model=worst,
        t0=1e300,
        t1=1e300,
        items=wire.MAX_COUNT,
        tokens_in=wire.MAX_COUNT,
        tokens_out=wire.MAX_COUNT,
        request_id=worst,
        tenant=worst,
        tags={"\x01" * (MAX_SHORT - 2) + f"{i:02}": worst for i in range(MAX_TAGS)},
        framework="\x01" * MAX_NAME,
        device="\x01" * MAX_SHORT,
        dtype="\x01" * MAX_NAME,
        parameters=wire.MAX_PARAMETERS,
    )
    data = _one(encode_batch([span], dropped=wire.MAX_DROPPED))
    assert len(data) <= MAX_DATAGRAM
    assert decode_batch(data) == ([span], wire.MAX_DROPPED)


def test_numpy_numbers_and_str_subclasses_are_converted_not_refused() -> None:
    from infermeter.records import Framework

    runtime_numbers: dict[str, Any] = {
        "t0": np.float64(1.5),
        "t1": np.float32(2.5),
        "items": np.int64(4),
    }
    span = Span(pid=1, model="m", framework=Framework.TORCH, **runtime_numbers)
    (back,), _ = decode_batch(_one(encode_batch([span])))
    assert (back.t0, back.t1, back.items, back.framework) == (1.5, 2.5, 4, "torch")
    assert type(back.items) is int and type(back.framework) is str


@pytest.mark.parametrize(
    ("span", "reason"),
    [
        (Span(pid=1, model="m", t0=2.0, t1=1.0), "t1 < t0"),
        (Span(pid=1, model="m", t0=math.nan, t1=1.0), "finite"),
        (Span(pid=1, model="m", t0=1.0, t1=math.inf), "finite"),
        (Span(pid=1, model="", t0=1.0, t1=1.0), "empty model"),
        (Span(pid=1, model="m", t0=1.0, t1=1.0, items=1.5), "items"),  # type: ignore[arg-type]
        (Span(pid=1, model="m", t0=1.0, t1=1.0, items=True), "items"),
        (Span(pid=1, model="m", t0=1.0, t1=1.0, tokens_in=-1), "tokens_in"),
        (Span(pid=1, model="m", t0=1.0, t1=1.0, tags={"k": 1}), "tag"),  # type: ignore[dict-item]
        (Span(pid=1, model="m", t0=1.0, t1=1.0, tags={"": "v"}), "empty tag key"),
        (
            Span(pid=1, model="m", t0=1.0, t1=1.0, tags={str(i): "v" for i in range(MAX_TAGS + 1)}),
            "tags",
        ),
        # The store's INTEGER holds 2**31 - 1 items; a sum of 2**63 - 1 overflows any.
        (Span(pid=1, model="m", t0=1.0, t1=1.0, items=2**63 - 1), "items out of range"),
        (Span(pid=1, model="m", t0=1.0, t1=1.0, tokens_out=2**31), "tokens_out out of range"),
        (Span(pid=1, model="m", t0=1.0, t1=1.0, parameters=2**53), "parameters out of range"),
    ],
)
def test_encode_refuses_what_the_agent_would_refuse(span: Span, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_batch([span])


def _raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


# ----- strings made to fit the store (issue 10, case 1) ----------------------------


def _crafted(*spans: list[object]) -> bytes:
    """A datagram as a hostile or buggy sender writes it: json.dumps escapes
    a lone surrogate as the six characters \\ud800, which the SDK never sends."""
    return json.dumps({"v": 1, "d": 0, "s": list(spans)}).encode()


def test_decode_replaces_and_cuts_what_the_store_cannot_hold_and_counts_it() -> None:
    long = "t" * 256  # the wire allowed 256, the columns are VARCHAR(255)
    bad = [
        7,
        "m\ud800",
        1.0,
        2.0,
        1,
        None,
        None,
        "r\x00q",
        long,
        {"k\x00": "v\udfff"},
        "f" * 40,
        None,
        "bf16",
        None,
    ]
    decoded = wire.decode(_crafted(bad, GOOD))
    a, b = decoded.spans
    assert (a.model, a.request_id, a.tenant) == ("m\ufffd", "r\ufffdq", "t" * MAX_STR)
    assert dict(a.tags) == {"k\ufffd": "v\ufffd"}
    assert a.framework == "f" * MAX_NAME and a.dtype == "bf16"
    # model, request_id, tenant, tag key, tag value, framework: six strings changed.
    assert decoded.changed == 6 and decoded.refused == ()
    assert b == Span(pid=1, model="m", t0=1.0, t1=2.0)


def test_the_sdk_sends_what_the_agent_would_store() -> None:
    span = Span(
        pid=1,
        model="x\ud83d",  # half of an emoji: a lone surrogate
        t0=1.0,
        t1=2.0,
        request_id="r" * 300,
        tenant="acme\x00",
        tags={"k": "v" * 300},
        dtype="d" * 33,
    )
    (back,), _ = decode_batch(_one(encode_batch([span])))
    assert back == Span(
        pid=1,
        model="x\ufffd",
        t0=1.0,
        t1=2.0,
        request_id="r" * MAX_STR,
        tenant="acme\ufffd",
        tags={"k": "v" * MAX_STR},
        dtype="d" * MAX_NAME,
    )
    # What the SDK sends is already clean: the agent changes nothing more.
    assert wire.decode(_one(encode_batch([span]))).changed == 0


def test_a_span_out_of_range_is_refused_alone() -> None:
    huge = [*GOOD[:4], 2**63 - 1, *GOOD[5:]]
    decoded = wire.decode(_crafted(GOOD, huge, [*GOOD[:4], 2, *GOOD[5:]]))
    assert [s.items for s in decoded.spans] == [1, 2]
    assert decoded.refused == ("items out of range 0..2147483647: 9223372036854775807",)
    with pytest.raises(ValueError, match="items out of range"):
        decode_batch(_crafted(GOOD, huge))  # the strict form refuses the datagram


GOOD = [1, "m", 1.0, 2.0, 1, None, None, None, None, {}, None, None, None, None]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Expecting value"),
        (b"\xff\xfe", "utf-8"),
        (b"[]", "exactly"),
        (_raw({"v": 1, "d": 0}), "exactly"),
        (_raw({"v": 1, "d": 0, "s": [], "x": 1}), "exactly"),
        (b'{"v":1,"d":0,"s":[],"s":[]}', "duplicate"),
        (_raw({"v": 2, "d": 0, "s": []}), "version"),
        (_raw({"v": True, "d": 0, "s": []}), "version"),
        (_raw({"v": 1, "d": -1, "s": []}), "dropped"),
        (_raw({"v": 1, "d": 1.0, "s": []}), "dropped"),
        (_raw({"v": 1, "d": 0, "s": {}}), "array"),
        (_raw({"v": 1, "d": 0, "s": [GOOD[:-1]]}), "14 fields"),
        (_raw({"v": 1, "d": 0, "s": [[*GOOD[:2], 3.0, 2.0, *GOOD[4:]]]}), "t1 < t0"),
        (
            b'{"v":1,"d":0,"s":[[1,"m",NaN,2.0,1,null,null,null,null,{},null,null,null,null]]}',
            "not a number",
        ),
        (
            b'{"v":1,"d":0,"s":[[1,"m",1e999,1e999,1,null,null,null,null,{},null,null,null,null]]}',
            "finite",
        ),
        (_raw({"v": 1, "d": 0, "s": [[*GOOD[:4], "1", *GOOD[5:]]]}), "items"),
        (_raw({"v": 1, "d": 0, "s": [[-5, *GOOD[1:]]]}), "pid"),
        (_raw({"v": 1, "d": 0, "s": [0] * (MAX_SPANS + 1)}), "more than"),
        (b"[" * 100_000, "over"),
        (b"[" * 50_000, "nested"),
        (b'{"v":1,"d":' + b"9" * 5000 + b',"s":[]}', "digits"),
    ],
)
def test_decode_refuses_malformed_datagrams_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_batch(data)


def test_the_good_array_used_above_is_accepted() -> None:
    spans, dropped = decode_batch(_raw({"v": 1, "d": 5, "s": [GOOD]}))
    assert spans == [Span(pid=1, model="m", t0=1.0, t1=2.0)] and dropped == 5


# ----- properties ------------------------------------------------------------------

_text = st.text(max_size=40)
_short = st.text(max_size=12)
_count = st.integers(min_value=0, max_value=wire.MAX_COUNT)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    t0 = draw(st.floats(min_value=0, max_value=4e9, allow_nan=False))
    t1 = t0 + draw(st.floats(min_value=0, max_value=1e4, allow_nan=False))
    return Span(
        pid=draw(st.integers(min_value=0, max_value=wire.MAX_PID)),
        model=draw(st.text(min_size=1, max_size=40)),
        t0=t0,
        t1=t1,
        items=draw(_count),
        tokens_in=draw(st.none() | _count),
        tokens_out=draw(st.none() | _count),
        request_id=draw(st.none() | _text),
        tenant=draw(st.none() | _text),
        tags=draw(st.dictionaries(st.text(min_size=1, max_size=12), _text, max_size=MAX_TAGS)),
        framework=draw(st.none() | _short),
        device=draw(st.none() | _short),
        dtype=draw(st.none() | _short),
        parameters=draw(st.none() | _count),
    )


def _stored(span: Span) -> Span:
    """What the store keeps of a span, written out apart from wire's code:
    NUL and lone surrogates replaced (one character for one), then cut."""

    def fix(text: str | None, limit: int) -> str | None:
        if text is None:
            return None
        return "".join(
            "\ufffd" if ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text
        )[:limit]

    tags: dict[str, str] = {}
    for k, v in span.tags.items():
        key = fix(k, MAX_SHORT)
        assert key is not None
        tags[key] = fix(v, MAX_STR) or ""
    return dataclasses.replace(
        span,
        model=fix(span.model, MAX_STR) or "",
        request_id=fix(span.request_id, MAX_STR),
        tenant=fix(span.tenant, MAX_STR),
        tags=tags,
        framework=fix(span.framework, MAX_NAME),
        device=fix(span.device, MAX_SHORT),
        dtype=fix(span.dtype, MAX_NAME),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(spans(), max_size=30), _count)
def test_decode_inverts_encode(batch: list[Span], dropped: int) -> None:
    datagrams = encode_batch(batch, dropped)
    decoded = [decode_batch(d) for d in datagrams]
    assert [s for b, _ in decoded for s in b] == [_stored(s) for s in batch]
    assert sum(d for _, d in decoded) == dropped
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_nothing_but_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_batch(data)


_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)
_field = _scalar | st.dictionaries(st.text(max_size=4), _scalar, max_size=3)


@settings(max_examples=400, deadline=None)
@given(_json, st.lists(st.lists(_field, min_size=14, max_size=14), max_size=3))
def test_random_json_raises_nothing_but_value_error(junk: object, arrays: list[object]) -> None:
    for doc in (junk, {"v": 1, "d": 0, "s": junk}, {"v": 1, "d": 0, "s": arrays}):
        try:
            spans, _ = decode_batch(json.dumps(doc).encode())
        except ValueError:
            continue
        for s in spans:  # whatever passes is a sane span the store can hold
            assert math.isfinite(s.t0) and s.t1 >= s.t0 >= 0 and s.model
            _assert_storable(s)


def _assert_storable(s: Span) -> None:
    for text, limit in [
        (s.model, MAX_STR),
        (s.request_id, MAX_STR),
        (s.tenant, MAX_STR),
        (s.framework, MAX_NAME),
        (s.dtype, MAX_NAME),
        (s.device, MAX_SHORT),
        *((k, MAX_SHORT) for k in s.tags),
        *((v, MAX_STR) for v in s.tags.values()),
    ]:
        if text is not None:
            assert len(text) <= limit
            text.encode("utf-8")  # no lone surrogate
            assert "\x00" not in text
    for count in (s.items, s.tokens_in, s.tokens_out):
        assert count is None or 0 <= count <= wire.MAX_COUNT


# Any code point, lone surrogates included, in strings up to twice the limit.
_any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=2 * MAX_STR)


@settings(max_examples=300, deadline=None)
@given(_any_text, _any_text, _any_text, st.dictionaries(_any_text, _any_text, max_size=3))
def test_any_string_comes_out_storable_and_as_written_out(
    model: str, tenant: str, request_id: str, tags: dict[str, str]
) -> None:
    doc = [1, model, 1.0, 2.0, 1, None, None, request_id, tenant, tags, None, None, None, None]
    try:
        decoded = wire.decode(json.dumps({"v": 1, "d": 0, "s": [doc]}).encode())
    except ValueError:  # over the datagram size: refused as a whole
        return
    if not model or "" in tags:
        assert decoded.refused and not decoded.spans
        return
    (got,) = decoded.spans
    _assert_storable(got)
    raw = Span(1, model, 1.0, 2.0, 1, None, None, request_id, tenant, tags)
    assert got == _stored(raw)


def test_default_socket_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMETER_SOCKET", "/somewhere/s.sock")
    assert wire.default_socket_path() == "/somewhere/s.sock"
    monkeypatch.delenv("INFERMETER_SOCKET")
    path = Path(wire.default_socket_path())
    assert path.name == "spans.sock" and path.parent.name.startswith("infermeter")


# ----- step spans: parts (continuous batching) ---------------------------------------

STEP = Span(
    pid=5,
    model="llm",
    t0=10.0,
    t1=10.02,
    items=3,
    parts=(
        SpanPart("r1", "acme", prefill_tokens=120, decode_tokens=0),
        SpanPart("r2", None, decode_tokens=1),
        SpanPart(None, "globex", 0, 1),
    ),
)


def test_a_step_span_round_trips_with_its_parts_and_a_plain_span_stays_fourteen_fields() -> None:
    data = _one(encode_batch([STEP, FULL_SPAN]))
    step, plain = json.loads(data)["s"]
    assert len(step) == len(wire.FIELDS) + 1 and len(plain) == len(wire.FIELDS)
    assert step[-1] == [["r1", "acme", 120, 0], ["r2", None, 0, 1], [None, "globex", 0, 1]]
    assert decode_batch(data)[0] == [STEP, FULL_SPAN]


def test_the_parts_are_bounded_and_checked() -> None:
    many = dataclasses.replace(STEP, parts=tuple(SpanPart(f"r{i}") for i in range(MAX_PARTS)))
    assert decode_batch(_one(encode_batch([many])))[0] == [many]
    too_many = dataclasses.replace(many, parts=(*many.parts, SpanPart("one more")))
    with pytest.raises(ValueError, match=f"1 to {MAX_PARTS} parts"):
        encode_batch([too_many])
    base = json.loads(_one(encode_batch([STEP])))["s"][0]
    for parts, reason in (
        ([], "1 to"),
        ({"r": 1}, "parts must be an array"),
        ([["r", None, 1]], "4 fields"),
        ([["r", None, -1, 0]], "prefill tokens out of range"),
        ([["r", None, 0, 1.5]], "decode tokens must be an integer"),
        ([[7, None, 0, 1]], "part request_id must be a string"),
    ):
        decoded = wire.decode(_raw({"v": 1, "d": 0, "s": [[*base[:-1], parts]]}))
        assert decoded.spans == [] and len(decoded.refused) == 1
        assert reason in decoded.refused[0], (parts, decoded.refused)
    with pytest.raises(ValueError, match="14 fields"):
        decode_batch(_raw({"v": 1, "d": 0, "s": [[*base, []]]}))  # sixteen fields


def test_a_step_too_large_for_a_datagram_is_refused_by_the_sender() -> None:
    worst = "\x01" * MAX_STR  # six bytes a character on the wire
    fat = dataclasses.replace(STEP, parts=tuple(SpanPart(worst, worst) for _ in range(MAX_PARTS)))
    with pytest.raises(ValueError, match="does not fit a datagram"):
        encode_batch([fat])
    # Ordinary ids: the most parts a step may have fit one datagram easily.
    ids = dataclasses.replace(
        STEP, parts=tuple(SpanPart(f"{i:032x}", "tenant-a", 4096, 1) for i in range(MAX_PARTS))
    )
    assert len(_one(encode_batch([ids]))) <= MAX_DATAGRAM
