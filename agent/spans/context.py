"""``infermeter.request``: tag the model calls made while serving one request.

A request is a context (a ``contextvars.ContextVar``), not a span of its own:
model calls made inside it carry its request id, tenant, tags and token
counts, and the agent groups spans by ``request_id``. The request emits no
span itself, because a span covering the whole request would overlap its own
model calls and take a second share of their energy.

Rules when a span is emitted inside a request (``apply``, on the sending
thread):

- ``request_id``, ``tenant``, ``tokens_in``, ``tokens_out``: the span's own
  value when it has one, else the request's (its counts when the span is
  sent);
- ``model``: the request's when given (the application's name for a model
  beats the runtime's class name), else the span's;
- ``tags``: the request's, updated with the span's own.

Tokens are often known late: an LLM server learns ``tokens_out`` only as it
decodes. The object a request block gives is mutable for that:
``req.tokens_out = n``, ``req.add_tokens(out=1)`` per decoded token (thread
safe), or ``req.set_tokens(inp=, out=)`` just before the block ends. When the
block ends with a token count known, the SDK sends one more span, the
request's *final counts*: zero length and no items, so it draws no energy,
carrying the request's id, tenant, model (the request's, else the model of
the last call made in it) and tags. Counts only grow, so a consumer counts
tokens once per ``request_id`` as the maximum any of its spans carries
(infermeter.store.request_sql), never their sum, and the final counts win.
A block nested in a request with the same id shares its counts (one final
span, from the outer block); a nested block with its own id is another
request, starting from its parent's counts. Nothing here raises into the
application: a count that is not a non-negative integer is ignored.

Context variables follow ``asyncio`` tasks on their own. A thread starts
with an empty context, so each thread has its own request; to carry one into
a worker thread, run the work under ``contextvars.copy_context().run`` (as
``loop.run_in_executor`` does).
"""

from __future__ import annotations

import functools
import inspect
import operator
import threading
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar, cast

from infermeter.records import MAX_COUNT, Span
from infermeter.spans.wire import MAX_SHORT, MAX_STR, MAX_TAGS

F = TypeVar("F", bound=Callable[..., Any])


class _Counts:
    """A request's token counts, shared by the blocks of one request id."""

    __slots__ = ("lock", "tokens_in", "tokens_out")

    def __init__(self, tokens_in: int | None, tokens_out: int | None) -> None:
        self.lock = threading.Lock()
        self.tokens_in = _count_or_none(tokens_in)
        self.tokens_out = _count_or_none(tokens_out)


def _count_or_none(value: Any) -> int | None:
    """A token count as the wire takes it; None for what is not one (never raises)."""
    try:
        n = operator.index(value)
    except Exception:
        return None
    return n if 0 <= n <= MAX_COUNT and not isinstance(value, bool) else None


class RequestContext:
    """What a request adds to the spans emitted inside it; its counts may change.

    ``request_id``, ``model``, ``tenant`` and ``tags`` are fixed when the
    block is entered; ``tokens_in`` and ``tokens_out`` are the request's
    counts now (see the module docstring).
    """

    __slots__ = ("_counts", "last_model", "model", "request_id", "tags", "tenant")

    def __init__(
        self,
        request_id: str,
        model: str | None = None,
        tenant: str | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        counts: _Counts | None = None,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.tenant = tenant
        self.tags: Mapping[str, str] = dict(tags or {})
        self._counts = counts if counts is not None else _Counts(tokens_in, tokens_out)
        self.last_model: str | None = None  # of the last call emitted in it (the emitter sets it)

    @property
    def tokens_in(self) -> int | None:
        return self._counts.tokens_in

    @tokens_in.setter
    def tokens_in(self, value: int | None) -> None:
        self.set_tokens(inp=value)

    @property
    def tokens_out(self) -> int | None:
        return self._counts.tokens_out

    @tokens_out.setter
    def tokens_out(self, value: int | None) -> None:
        self.set_tokens(out=value)

    def set_tokens(self, inp: int | None = None, out: int | None = None) -> None:
        """Set the counts known now (None leaves one as it is)."""
        a, b = _count_or_none(inp), _count_or_none(out)
        c = self._counts
        with c.lock:
            if a is not None:
                c.tokens_in = a
            if b is not None:
                c.tokens_out = b

    def add_tokens(self, inp: int = 0, out: int = 0) -> None:
        """Add tokens read (``inp``) or generated (``out``): ``req.add_tokens(out=1)``."""
        a, b = _count_or_none(inp), _count_or_none(out)
        c = self._counts
        with c.lock:
            if a:
                c.tokens_in = min(MAX_COUNT, (c.tokens_in or 0) + a)
            if b:
                c.tokens_out = min(MAX_COUNT, (c.tokens_out or 0) + b)

    def _key(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.model,
            self.tenant,
            self.tokens_in,
            self.tokens_out,
            dict(self.tags),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestContext):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable counts

    def __repr__(self) -> str:
        return "RequestContext(request_id={!r}, model={!r}, tenant={!r}, tokens_in={!r}, tokens_out={!r}, tags={!r})".format(  # noqa: E501
            *self._key()
        )


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
        self._tokens: list[tuple[Token[RequestContext | None], bool]] = []

    def _context(self) -> tuple[RequestContext, bool]:
        """The block's context, and whether it owns its counts (sends the final ones)."""
        outer = current.get()
        if outer is None:
            ctx = RequestContext(
                request_id=self.request_id or uuid.uuid4().hex,
                model=self.model,
                tenant=self.tenant,
                tokens_in=self.tokens_in,
                tokens_out=self.tokens_out,
                tags=self.tags,
            )
            return ctx, True
        tags = {**outer.tags, **self.tags}
        request_id = self.request_id or outer.request_id
        same = request_id == outer.request_id
        ctx = RequestContext(
            request_id=request_id,
            model=self.model if self.model is not None else outer.model,
            tenant=self.tenant if self.tenant is not None else outer.tenant,
            tokens_in=self.tokens_in if self.tokens_in is not None else outer.tokens_in,
            tokens_out=self.tokens_out if self.tokens_out is not None else outer.tokens_out,
            tags=dict(list(tags.items())[:MAX_TAGS]),
            counts=outer._counts if same else None,
        )
        if same:
            ctx.set_tokens(self.tokens_in, self.tokens_out)
        return ctx, not same

    def __enter__(self) -> RequestContext:
        ctx, owner = self._context()
        self._tokens.append((current.set(ctx), owner))
        return ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, owner = self._tokens.pop()
        if owner:
            _send_final_counts(token.var.get())
        current.reset(token)

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


def final_counts_span(ctx: RequestContext, pid: int, now: float) -> Span | None:
    """The span that carries a request's final counts; None when it has none to carry.

    Zero length and no items: it overlaps no interval, so it draws no energy.
    """
    model = ctx.model if ctx.model is not None else ctx.last_model
    if model is None or (ctx.tokens_in is None and ctx.tokens_out is None):
        return None
    return Span(
        pid=pid,
        model=model,
        t0=now,
        t1=now,
        items=0,
        tokens_in=ctx.tokens_in,
        tokens_out=ctx.tokens_out,
        request_id=ctx.request_id,
        tenant=ctx.tenant,
        tags=ctx.tags,
    )


def _send_final_counts(ctx: RequestContext | None) -> None:
    """Hand the final counts to this process's emitter, if ``instrument()`` made one."""
    try:
        from infermeter.spans.sdk import current_emitter

        emitter = current_emitter()
        if emitter is None or ctx is None:
            return
        span = final_counts_span(ctx, emitter.pid, emitter.wall_time())
        if span is not None:
            emitter.emit(span)
    except Exception:  # the application never sees ours
        pass


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
