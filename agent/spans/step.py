"""``infermeter.step``: one engine step shared by several requests (continuous batching).

A serving engine that batches continuously runs one forward pass for every
request in flight: some prefill their prompt, the others decode a token.
Metering each request's calls cannot describe that (there is one call for
all of them), so the engine reports the step itself, with one part per
request: its id, tenant, and the prefill and decode tokens the step did for
it. The agent splits the step's energy over its parts
(infermeter.attribute.step_split)::

    with infermeter.step(model="llama-8b") as s:
        for r in batch:
            s.add(r.id, tenant=r.tenant, prefill=r.prompt_len if r.first else 0,
                  decode=0 if r.first else 1)
        logits = model(batch_tokens)

The step's times are taken when the block is entered and left (wall clock
from the monotonic one, as every span's): for work on an accelerator, leave
the block once the device is done (synchronise, or read the result). At most
``wire.MAX_PARTS`` parts go in one step; beyond, the step is sent in
consecutive spans of that many parts each, one after the other over the
same time (each its share of the step's time, so they never overlap). The
step needs the process's emitter (``infermeter.instrument()``); without one
it sends nothing. Nothing here raises into the application.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol

from infermeter.records import Span, SpanPart
from infermeter.spans.context import _count_or_none, _cut
from infermeter.spans.wire import MAX_PARTS, MAX_SHORT, MAX_STR, MAX_TAGS


class _Emitter(Protocol):
    pid: int

    def wall_time(self) -> float: ...

    def emit(self, span: Span) -> None: ...


def step_spans(
    pid: int,
    model: str,
    t0: float,
    t1: float,
    parts: Iterable[SpanPart],
    **fields: Any,
) -> list[Span]:
    """The spans of one step: one, or one per ``MAX_PARTS`` parts laid end to end."""
    all_parts = tuple(parts)
    chunks = [all_parts[i : i + MAX_PARTS] for i in range(0, len(all_parts), MAX_PARTS)]
    if not chunks:
        return []
    length = (t1 - t0) / len(chunks)
    out = []
    for i, chunk in enumerate(chunks):
        a = t0 + i * length
        b = t1 if i == len(chunks) - 1 else t0 + (i + 1) * length
        out.append(Span(pid=pid, model=model, t0=a, t1=b, items=len(chunk), parts=chunk, **fields))
    return out


class step:  # lower case: to its users it reads as a function, like ``request``
    """One engine step: ``with step(model=...) as s: s.add(request_id, prefill=, decode=)``."""

    def __init__(
        self,
        model: str,
        parts: Iterable[SpanPart] = (),
        *,
        framework: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        emitter: _Emitter | None = None,
        **tags: Any,
    ) -> None:
        self.model = _cut(model, MAX_STR) or "step"
        self.parts: list[SpanPart] = list(parts)
        self.framework = framework
        self.device = device
        self.dtype = dtype
        self.tags = {str(k)[:MAX_SHORT]: str(v)[:MAX_STR] for k, v in list(tags.items())[:MAX_TAGS]}
        self._emitter = emitter
        self._t0: float | None = None

    def add(
        self,
        request_id: str | None,
        tenant: str | None = None,
        prefill: int = 0,
        decode: int = 0,
    ) -> None:
        """One request's part of this step (a count that is not one counts 0)."""
        self.parts.append(
            SpanPart(
                _cut(request_id, MAX_STR),
                _cut(tenant, MAX_STR),
                _count_or_none(prefill) or 0,
                _count_or_none(decode) or 0,
            )
        )

    def _emitter_now(self) -> _Emitter | None:
        if self._emitter is not None:
            return self._emitter
        from infermeter.spans.sdk import current_emitter

        return current_emitter()

    def __enter__(self) -> step:
        try:
            emitter = self._emitter_now()
            self._t0 = emitter.wall_time() if emitter is not None else None
        except Exception:
            self._t0 = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            emitter = self._emitter_now()
            if emitter is None or self._t0 is None or not self.parts:
                return
            fields: Mapping[str, Any] = {
                "framework": self.framework,
                "device": self.device,
                "dtype": self.dtype,
                "tags": self.tags,
            }
            for span in step_spans(
                emitter.pid, self.model, self._t0, emitter.wall_time(), self.parts, **fields
            ):
                emitter.emit(span)
        except Exception:  # the application never sees ours
            pass
