"""The energy model: what one call of a model costs on a device, learned from the data.

Time overlap is not energy. A ResNet-50 fp32 call and a bf16 encoder call
that take the same time slice draw 2.4x apart, and a batch of 8 costs
several times a batch of 1. So when several processes, or several calls of
one process, share an interval, its measured energy is split by what each
one's calls are *predicted* to cost. The model only weighs; the energy split
is still the meter's, so conservation stays exact.

The model is linear per call class (model, dtype, device kind)::

    J(call) = a * calls + b * items + p * prefill_tokens + d * decode_tokens

``calls`` is 1 for a span of one call (a span standing for a phase of many
calls says how many in its ``calls`` tag), ``items`` its batch size, and the
token counts come from the parts of an engine step (continuous batching), so
prefill and decode are learned apart. A span's features in an interval are
prorated by how much of the span lies in it.

It is learned by least squares with non-negative coefficients over many
intervals, one equation per (device, interval): the active energy of the
targets in it = the sum of their calls' features times the coefficients.
Intervals are learned from only where every active target has spans (else
energy no call explains would be fitted onto calls). The normal equations
are accumulated (a few floats per pair of features), so memory does not
grow with time, and the fit is solved once per flush. Its quality (R² and
the number of intervals) is kept with the coefficients: a class seen in
fewer than ``MIN_WINDOWS`` intervals is not used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from infermeter.records import CallEnergyModel, Span

FEATURES = ("calls", "items", "prefill_tokens", "decode_tokens")
MIN_WINDOWS = 5  # intervals a class must appear in before its coefficients are used
MAX_CLASSES = 256  # beyond, the class seen longest ago is forgotten


@dataclass(frozen=True, slots=True, order=True)
class CallClass:
    """What calls are learned together: the same model, precision and device kind."""

    model: str
    dtype: str
    device_kind: str


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Joules per call, per item and per prefill and decode token of one call class."""

    call_class: CallClass
    j_per_call: float
    j_per_item: float
    j_per_prefill_token: float
    j_per_decode_token: float
    windows: int  # intervals the class appeared in

    def predict(self, features: Sequence[float]) -> float:
        calls, items, prefill, decode = features
        return (
            self.j_per_call * calls
            + self.j_per_item * items
            + self.j_per_prefill_token * prefill
            + self.j_per_decode_token * decode
        )


@dataclass(frozen=True, slots=True)
class EnergyFit:
    """One solved fit: its coefficients and how well it explains what it learned from."""

    coefficients: Mapping[CallClass, Coefficients]
    r2: float | None  # None with fewer than two intervals or no variance
    windows: int

    def predict(self, call_class: CallClass, features: Sequence[float]) -> float | None:
        """Joules predicted for these features; None when the class is not learned."""
        c = self.coefficients.get(call_class)
        if c is None or c.windows < MIN_WINDOWS:
            return None
        return c.predict(features)


EMPTY_FIT = EnergyFit({}, None, 0)


def fit_records(fit: EnergyFit) -> list[CallEnergyModel]:
    """The fit as the store keeps it: one record per call class."""
    return [
        CallEnergyModel(
            c.call_class.model,
            c.call_class.dtype,
            c.call_class.device_kind,
            c.j_per_call,
            c.j_per_item,
            c.j_per_prefill_token,
            c.j_per_decode_token,
            c.windows,
            fit.r2,
            fit.windows,
        )
        for c in fit.coefficients.values()
    ]


def fit_from_records(records: Iterable[CallEnergyModel]) -> EnergyFit:
    """A stored fit, back as one (the quality of the first record stands for all)."""
    coefficients = {}
    r2: float | None = None
    windows = 0
    for r in records:
        cls = CallClass(r.model, r.dtype, r.device_kind)
        coefficients[cls] = Coefficients(
            cls, r.j_per_call, r.j_per_item, r.j_per_prefill_token, r.j_per_decode_token, r.windows
        )
        r2, windows = r.r2, max(windows, r.fit_windows)
    return EnergyFit(coefficients, r2, windows)


def call_class(span: Span, device_kind: str) -> CallClass:
    return CallClass(span.model, span.dtype or "", device_kind)


def span_features(span: Span, fraction: float = 1.0) -> tuple[float, float, float, float]:
    """(calls, items, prefill tokens, decode tokens) of ``fraction`` of a span."""
    try:
        calls = max(1.0, float(span.tags.get("calls", 1)))
    except (TypeError, ValueError):
        calls = 1.0
    if not math.isfinite(calls):
        calls = 1.0
    prefill = decode = 0.0
    for part in getattr(span, "parts", ()):
        prefill += float(part.prefill_tokens or 0)
        decode += float(part.decode_tokens or 0)
    return (
        calls * fraction,
        max(1, span.items) * fraction,
        prefill * fraction,
        decode * fraction,
    )


def overlap_fraction(span: Span, t0: float, t1: float) -> float:
    """How much of ``span`` lies in [t0, t1); a span of no length counts whole."""
    length = span.t1 - span.t0
    if length <= 0:
        return 1.0 if t0 <= span.t0 < t1 else 0.0
    return max(0.0, min(span.t1, t1) - max(span.t0, t0)) / length


class EnergyModelLearner:
    """The normal equations of the fit, accumulated interval by interval."""

    def __init__(self) -> None:
        self._index: dict[tuple[CallClass, int], int] = {}
        self._gram: dict[tuple[int, int], float] = {}
        self._rhs: dict[int, float] = {}
        self._windows: dict[CallClass, int] = {}
        self._n = 0
        self._sum_y = 0.0
        self._sum_yy = 0.0
        self._fit: EnergyFit = EMPTY_FIT
        self._dirty = False

    def observe(self, energy_j: float, calls: Iterable[tuple[CallClass, Sequence[float]]]) -> None:
        """One interval: the active energy of its targets, and their calls' features."""
        row: dict[int, float] = {}
        classes: set[CallClass] = set()
        for cls, features in calls:
            if cls not in self._windows and len(self._windows) >= MAX_CLASSES:
                continue
            classes.add(cls)
            for f, value in enumerate(features):
                if value:
                    i = self._index.setdefault((cls, f), len(self._index))
                    row[i] = row.get(i, 0.0) + value
        if not row or not math.isfinite(energy_j) or energy_j < 0:
            return
        for cls in classes:
            self._windows[cls] = self._windows.get(cls, 0) + 1
        items = sorted(row.items())
        for a, (i, xi) in enumerate(items):
            self._rhs[i] = self._rhs.get(i, 0.0) + xi * energy_j
            for j, xj in items[a:]:
                self._gram[(i, j)] = self._gram.get((i, j), 0.0) + xi * xj
        self._n += 1
        self._sum_y += energy_j
        self._sum_yy += energy_j * energy_j
        self._dirty = True

    def seed(self, fit: EnergyFit) -> None:
        """A fit an earlier run stored: used until this run has learned its own."""
        if not self._n:
            self._fit = fit

    @property
    def learned(self) -> bool:
        """Whether this run has learned from any interval (else the fit is a seed, or empty)."""
        return self._n > 0

    def fit(self) -> EnergyFit:
        """The current fit, solved again when intervals were added since the last."""
        if not self._dirty:
            return self._fit
        self._dirty = False
        x = _nonnegative_least_squares(len(self._index), self._gram, self._rhs)
        coefficients: dict[CallClass, list[float]] = {}
        for (cls, f), i in self._index.items():
            coefficients.setdefault(cls, [0.0] * len(FEATURES))[f] = x[i]
        self._fit = EnergyFit(
            {
                cls: Coefficients(cls, v[0], v[1], v[2], v[3], self._windows.get(cls, 0))
                for cls, v in coefficients.items()
            },
            self._r2(x),
            self._n,
        )
        return self._fit

    def _r2(self, x: Sequence[float]) -> float | None:
        if self._n < 2:
            return None
        total = self._sum_yy - self._sum_y * self._sum_y / self._n
        if total <= 0:
            return None
        explained = 2 * sum(x[i] * h for i, h in self._rhs.items())
        quadratic = sum((1 if i == j else 2) * x[i] * x[j] * g for (i, j), g in self._gram.items())
        residual = max(0.0, self._sum_yy - explained + quadratic)
        return 1.0 - residual / total


def _nonnegative_least_squares(
    n: int, gram: Mapping[tuple[int, int], float], rhs: Mapping[int, float]
) -> list[float]:
    """argmin |Ax - y|² with x >= 0, from AᵀA (upper triangle) and Aᵀy.

    Lawson and Hanson's active-set method on the normal equations: a
    coefficient enters the free set while it would lower the residual, and
    the free set is solved exactly (Gaussian elimination; the systems are a
    few features per call class). Per-call and per-item counts are strongly
    correlated, which makes coordinate descent crawl; this does not.
    """
    g = [[0.0] * n for _ in range(n)]
    for (i, j), v in gram.items():
        g[i][j] = v
        g[j][i] = v
    h = [rhs.get(i, 0.0) for i in range(n)]
    scale = max((abs(v) for v in h), default=0.0) or 1.0
    tol = 1e-10 * scale
    x = [0.0] * n
    free: list[int] = []
    for _ in range(3 * n + 10):
        grad = [h[i] - sum(g[i][j] * x[j] for j in range(n)) for i in range(n)]
        candidates = [i for i in range(n) if i not in free and g[i][i] > 0 and grad[i] > tol]
        if not candidates:
            break
        free.append(max(candidates, key=lambda i: grad[i]))
        for _ in range(3 * n + 10):
            z = _solve([[g[i][j] for j in free] for i in free], [h[i] for i in free])
            if z is None:  # a column dependent on the others: leave it out
                free.pop()
                break
            if all(v > 0 for v in z):
                for i, v in zip(free, z, strict=True):
                    x[i] = v
                break
            # Step from x toward z until the first free coefficient reaches 0.
            alpha = min(
                x[i] / (x[i] - v) for i, v in zip(free, z, strict=True) if v <= 0 and x[i] != v
            )
            for i, v in zip(free, z, strict=True):
                x[i] += alpha * (v - x[i])
            free = [i for i in free if x[i] > tol]
            for i in range(n):
                if i not in free:
                    x[i] = 0.0
    return [max(0.0, v) for v in x]


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """x with a x = b (partial pivoting); None when a is singular."""
    m = len(b)
    rows = [[*r, v] for r, v in zip(a, b, strict=True)]
    norm = max((abs(v) for r in a for v in r), default=0.0)
    for c in range(m):
        p = max(range(c, m), key=lambda r: abs(rows[r][c]))
        if abs(rows[p][c]) <= 1e-12 * norm:
            return None
        rows[c], rows[p] = rows[p], rows[c]
        for r in range(c + 1, m):
            f = rows[r][c] / rows[c][c]
            if f:
                for k in range(c, m + 1):
                    rows[r][k] -= f * rows[c][k]
    x = [0.0] * m
    for c in range(m - 1, -1, -1):
        x[c] = (rows[c][m] - sum(rows[c][k] * x[k] for k in range(c + 1, m))) / rows[c][c]
    return x
