"""Records with every field set, for the tests that carry one through a format and back.

A round trip (the wire, the spool, the store) is only shown whole by a record
none of whose fields is at its default: a field the format forgot would come
back as the default and still compare equal.
"""

from __future__ import annotations

from infermeter.records import Span

# Every field a sender sets, non-ASCII in a tag, times of full precision. Not
# ``seq``: the agent numbers spans on arrival, it is not on the wire (a record
# that has been stored sets it with ``dataclasses.replace``).
FULL_SPAN = Span(
    pid=4242,
    model="resnet50",
    t0=1_795_760_386.2135355,
    t1=1_795_760_386.2251,
    items=8,
    tokens_in=120,
    tokens_out=33,
    request_id="req-1",
    tenant="acme",
    tags={"team": "vision", "région": "eu-ouest"},
    framework="torch",
    device="cuda:0",
    dtype="bfloat16",
    parameters=25_557_032,
)
