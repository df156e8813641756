"""A real in-memory SpanEmitter for the instrumentation tests (and their subprocesses).

It implements the SpanEmitter protocol the way the real emitter promises to
behave (never blocks, never raises) but keeps every span in a list instead of
sending it, and resolves pending spans only when a test calls ``settle()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping

from infermeter.records import Span


class MemoryEmitter:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.pending: list[tuple[Span, Callable[[], float | None]]] = []
        self._offset = time.time() - time.monotonic()

    def wall_time(self) -> float:
        return self._offset + time.monotonic()

    def emit(self, span: Span) -> None:
        self.spans.append(span)

    def emit_call(
        self,
        model: str,
        start: float,
        end: float,
        items: int,
        tags: Mapping[str, str],
        framework: str | None,
        device: str | None,
        dtype: str | None,
        parameters: int | None,
    ) -> None:
        # perf_counter and monotonic are one clock (CLOCK_MONOTONIC) on Linux.
        self.spans.append(
            Span(
                pid=os.getpid(),
                model=model,
                t0=self._offset + start,
                t1=self._offset + end,
                items=items,
                tags=dict(tags),
                framework=framework,
                device=device,
                dtype=dtype,
                parameters=parameters,
            )
        )

    def emit_pending(self, span: Span, finished: Callable[[], float | None]) -> None:
        self.pending.append((span, finished))

    def settle(self, timeout_s: float = 60.0) -> None:
        """Poll pending spans like the emitter's thread does, until all have ended."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            still = []
            for span, finished in self.pending:
                t1 = finished()
                if t1 is None:
                    still.append((span, finished))
                else:
                    self.spans.append(dataclasses.replace(span, t1=t1))
            self.pending = still
            if still and time.monotonic() > deadline:
                raise TimeoutError(f"{len(still)} spans never finished")
            if still:
                time.sleep(0.001)

    def take(self) -> list[Span]:
        spans, self.spans = self.spans, []
        return spans

    def dump_json(self) -> str:
        """The spans as one JSON line (for a subprocess to print)."""
        fields = [f.name for f in dataclasses.fields(Span)]
        rows = [{name: getattr(s, name) for name in fields} for s in self.spans]
        return json.dumps([{**row, "tags": dict(row["tags"])} for row in rows])


class BrokenEmitter(MemoryEmitter):
    """An emitter whose every method raises: what a plugin must survive without a trace."""

    def wall_time(self) -> float:
        raise RuntimeError("clock is broken")

    def emit(self, span: Span) -> None:
        raise RuntimeError("emitter is broken")

    def emit_call(self, *args: object) -> None:
        raise RuntimeError("emitter is broken")

    def emit_pending(self, span: Span, finished: Callable[[], float | None]) -> None:
        raise RuntimeError("emitter is broken")
