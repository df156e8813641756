"""``infermeter.request``: tag the model calls made while serving one request.

A request is a context (a ``contextvars.ContextVar``), not a span of its own:
model calls made inside it carry its request id, tenant, tags and token
counts, and the agent groups spans by ``request_id``. The request emits no
span itself, because a span covering the whole request would overlap its own
model calls and take a second share of their energy.

Rules when a span is emitted inside a request (``apply``):

- ``request_id``, ``tenant``, ``tokens_in``, ``tokens_out``: the span's own
  value when it has one, else the request's;
- ``model``: the request's when given (the application's name for a model
  beats the runtime's class name), else the span's;
- ``tags``: the request's, updated with the span's own.

Every span of a request carries the request's token counts, so a consumer
counts tokens once per ``request_id`` (the maximum), never their sum.

Context variables follow ``asyncio`` tasks on their own. A thread starts
with an empty context, so each thread has its own request; to carry one into
a worker thread, run the work under ``contextvars.copy_context().run`` (as
``loop.run_in_executor`` does).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar, cast

from infermeter.records import Span
from infermeter.spans.wire import MAX_SHORT, MAX_STR, MAX_TAGS

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a request adds to the spans emitted inside it."""

    request_id: str
    model: str | None = None
    tenant: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)


current: ContextVar[RequestContext | None] = ContextVar("infermeter_request", default=None)


def current_request() -> RequestContext | None:
    """The request the calling thread or task is serving, if any."""
    return current.get()


def _cut(value: str | None, limit: int) -> str | None:
    return None if value is None else str(value)[:limit]


class request:  # lower case: to its users it reads as a function
    """Tag model calls with a request: ``with request(...)`` or ``@request(...)``.

    ``request_id`` defaults to the enclosing request's (a nested block refines
    its parent) or else a fresh random id, drawn each time the block is
    entered: a decorated function makes one request per call. Tags are
    strings; longer strings and tags beyond the wire's limits are cut here so
    that a long value never costs the spans themselves.
    """

    def __init__(
        self,
        model: str | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        **tags: Any,
    ) -> None:
        self.model = _cut(model, MAX_STR)
        self.tenant = _cut(tenant, MAX_STR)
        self.request_id = _cut(request_id, MAX_STR)
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.tags = {str(k)[:MAX_SHORT]: str(v)[:MAX_STR] for k, v in list(tags.items())[:MAX_TAGS]}
        self._tokens: list[Token[RequestContext | None]] = []

    def _context(self) -> RequestContext:
        outer = current.get()
        if outer is None:
            return RequestContext(
                request_id=self.request_id or uuid.uuid4().hex,
                model=self.model,
                tenant=self.tenant,
                tokens_in=self.tokens_in,
                tokens_out=self.tokens_out,
                tags=self.tags,
            )
        tags = {**outer.tags, **self.tags}
        return RequestContext(
            request_id=self.request_id or outer.request_id,
            model=self.model if self.model is not None else outer.model,
            tenant=self.tenant if self.tenant is not None else outer.tenant,
            tokens_in=self.tokens_in if self.tokens_in is not None else outer.tokens_in,
            tokens_out=self.tokens_out if self.tokens_out is not None else outer.tokens_out,
            tags=dict(list(tags.items())[:MAX_TAGS]),
        )

    def __enter__(self) -> RequestContext:
        ctx = self._context()
        self._tokens.append(current.set(ctx))
        return ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current.reset(self._tokens.pop())

    def _fresh(self) -> request:
        """A copy per call, so concurrent calls of a decorated function share no state."""
        return request(
            self.model,
            self.tenant,
            self.request_id,
            self.tokens_in,
            self.tokens_out,
            **self.tags,
        )

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await fn(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return cast(F, wrapper)


def apply(span: Span, ctx: RequestContext | None) -> Span:
    """The span as the request sees it (the rules in the module docstring)."""
    if ctx is None:
        return span
    tags: Mapping[str, str] = span.tags
    if ctx.tags:
        merged = {**ctx.tags, **span.tags}
        tags = merged if len(merged) <= MAX_TAGS else dict(list(merged.items())[:MAX_TAGS])
    return replace(
        span,
        model=ctx.model if ctx.model is not None else span.model,
        request_id=span.request_id if span.request_id is not None else ctx.request_id,
        tenant=span.tenant if span.tenant is not None else ctx.tenant,
        tokens_in=span.tokens_in if span.tokens_in is not None else ctx.tokens_in,
        tokens_out=span.tokens_out if span.tokens_out is not None else ctx.tokens_out,
        tags=tags,
    )
