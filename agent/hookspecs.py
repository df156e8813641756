"""Every hook a plugin can implement, in one place.

A plugin is a module (or, when it keeps state, an object) with functions named
like these and marked ``@infermeter.hookimpl``. Built-in plugins in
``infermeter.plugins`` register through the ``infermeter`` entry-point group
exactly as a third-party package does. Unless a hook says "first result
wins", every implementation is called and the results are collected in a list
(``None`` is dropped).

How they are called. The hooks the core gathers from (``infermeter_meters``,
``infermeter_span_sources``, ``infermeter_export``, ``infermeter_recommend``,
``infermeter_recorders`` and the ``infermeter_replay_*`` hooks) go through
``PluginManager.collect``, one implementation at a time: a plugin that
raises is logged and skipped and the others' results still come back; a
call slower than ``slow_call_s`` (1 s) is logged and counted. ``collect``
does not run wrapper implementations (``@hookimpl(wrapper=True)``): those
take effect only on the hooks called through pluggy, the first-result ones
(``infermeter_discover``, ``infermeter_price``, ``infermeter_apply``) and
``infermeter_config_options``. ``infermeter_instrument`` is called inside
the instrumented application, each implementation guarded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from infermeter.config import Config, Option
    from infermeter.recommend.stats import Stats
    from infermeter.records import (
        Device,
        Price,
        PriceCard,
        Reading,
        Recommendation,
        Share,
        Span,
        Target,
    )
    from infermeter.sidecar.trace_check import TraceProblem

hookspec = pluggy.HookspecMarker("infermeter")
hookimpl = pluggy.HookimplMarker("infermeter")


@runtime_checkable
class Meter(Protocol):
    """What ``infermeter_meters`` returns: one source of energy readings.

    ``read(now, targets)`` is called once per tick from the scheduler's thread
    with the targets known at that tick (by pid) and returns the readings for
    intervals not returned yet (none on the first call, which only sets the
    baseline). A meter may hold an interval back until its counter is next
    read (an expensive counter is read at most once a second) and return
    several intervals at once; each covers [t0, t1) without gaps or overlaps.
    Per-pid weights may name pids that are not targets: their share goes to
    ``other``. It must not raise for a device that went
    away: it returns a degraded reading (``note`` says why) or none, and logs.
    ``close()`` is called once at shutdown.
    """

    name: str

    def read(self, now: float, targets: Mapping[int, Target]) -> Sequence[Reading]: ...

    def close(self) -> None: ...


@runtime_checkable
class SpanSource(Protocol):
    """What ``infermeter_span_sources`` returns: spans from inference processes.

    ``drain()`` returns every span received since the previous call and never
    blocks; ``dropped()`` counts what the source had to throw away (malformed,
    over size, buffer full) since it started.
    """

    name: str

    def drain(self) -> Sequence[Span]: ...

    def dropped(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class Recorder(Protocol):
    """What ``infermeter_recorders`` returns: writes raw samples into a trace.

    ``sample(now, targets)`` is called every ``period_s`` seconds by
    ``infermeter record`` with the targets discovery knows at that moment
    (by pid), and appends what the hardware said at ``now`` to the plugin's
    own files in the trace folder, in the format of the shared fixtures (so
    the same plugin's replay meters can read it back). ``close()`` flushes.
    """

    name: str
    period_s: float

    def sample(self, now: float, targets: Mapping[int, Target]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class SpanEmitter(Protocol):
    """What ``infermeter_instrument`` receives: the in-process end of the pipe.

    ``emit(span)`` queues a finished Span; ``emit_pending(span, finished)``
    queues one whose end is not known yet (asynchronous accelerator work):
    a background thread calls ``finished()`` until it returns the end time
    (UTC seconds) instead of None, so the application never waits. Neither
    blocks nor raises; the request context of the calling thread (set by
    ``infermeter.request``) is applied to the span at the call.
    """

    def emit(self, span: Span) -> None: ...

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
        """A finished call timed with ``time.perf_counter()`` readings.

        The hot path of the runtimes' patches: the fields are queued as they
        are and the Span is built (wall-clock times, pid) on the emitter's own
        thread, which keeps the instrumented call's added cost under a
        microsecond.
        """
        ...

    def emit_pending(self, span: Span, finished: Callable[[], float | None]) -> None: ...

    def wall_time(self) -> float:
        """Now, as UTC seconds derived from a monotonic clock."""
        ...


class ProcessInfo(Protocol):
    """What discovery plugins see of a process: cheap fields, read once a tick."""

    @property
    def pid(self) -> int: ...

    @property
    def start_time(self) -> float:
        """UTC seconds, from the kernel's process start time."""
        ...

    @property
    def name(self) -> str: ...

    @property
    def cmdline(self) -> tuple[str, ...]: ...

    @property
    def username(self) -> str | None: ...


@hookspec
def infermeter_config_options() -> Sequence[Option]:
    """Declare the config keys a plugin reads, with their defaults and types.

    Called once when the plugins are loaded, before the config file is read.
    A key that no plugin and not the core declares is an error in the file,
    so a typo never passes silently. Options live under the plugin's own
    ``[section]``. The config holds every declared key (its default when
    not set), so a hook reads one as ``config["section.key"]``, with no
    default of its own; an Option's ``check`` (``config.above(0)``,
    ``config.at_least(1)``) turns a value out of range into one error naming
    the key when the config is read (exit code 2 on the command line).
    """


@hookspec
def infermeter_meters(config: Config) -> Sequence[Meter]:
    """Return the meters this plugin offers on this host (may be empty).

    Called once at agent start-up. Hardware that is absent is not an error:
    return nothing and log once why (no driver, no permission and the fix).
    Each meter's ``read(now)`` returns Readings with energy in joules and
    the method (measured / integrated / estimated) that produced it.
    """


@hookspec(firstresult=True)
def infermeter_discover(process: ProcessInfo, config: Config) -> Target | None:
    """Decide whether a process is an inference target; first result wins.

    Called once per new process (identity: pid and start time), never again
    for the same process, so an implementation may do expensive work such as
    reading ``/proc/PID/maps``. Returns a Target with its framework and labels,
    or None to let the next plugin decide.
    """


@hookspec
def infermeter_recorders(out_dir: Path, config: Config) -> Sequence[Recorder]:
    """Return recorders that write this plugin's raw samples into ``out_dir``.

    Called once by ``infermeter record``. A plugin whose hardware is absent
    returns nothing. File names and formats are the plugin's own, matching
    what its ``infermeter_replay_meters`` reads.
    """


@hookspec
def infermeter_replay_meters(trace_dir: Path, config: Config) -> Sequence[Meter]:
    """Return meters that answer from a recorded trace instead of hardware.

    Called once by ``infermeter replay`` (and the tests). The meters must run
    the same code as the live ones with the hardware library replaced by a
    stand-in answering from the recording; ``read(now, targets)`` receives
    ``now`` on the trace's own clock. A plugin that finds none of its files
    in ``trace_dir`` returns nothing.
    """


@hookspec
def infermeter_replay_targets(trace_dir: Path, config: Config) -> Sequence[Target]:
    """Return the processes a trace recorded, as Targets (framework, labels).

    Called once by ``infermeter replay``; the union of all plugins' answers
    is the replay's target set (first answer for a pid wins).
    """


@hookspec
def infermeter_replay_check(trace_dir: Path) -> Sequence[TraceProblem]:
    """Return what in this plugin's files of a trace cannot be read whole.

    Called by ``infermeter replay`` before anything is written: one problem
    refuses the trace (one line naming the file and line, exit 2), unless
    ``--partial`` is given, when the replay meters replay the readable rest
    and the problems are recorded as the trace's gaps.
    """


@hookspec
def infermeter_replay_window(trace_dir: Path) -> tuple[float, float] | None:
    """Return (first, last) UTC seconds this plugin's files in the trace cover.

    The replay runs ticks over the union of all windows returned.
    """


@hookspec
def infermeter_span_sources(config: Config) -> Sequence[SpanSource]:
    """Return sources of Spans (the SDK's socket receiver, scrapers).

    Called once at agent start-up; each source is drained every tick.
    """


@hookspec(firstresult=True)
def infermeter_price(
    share: Share, device: Device, card: PriceCard, window_j: float
) -> Price | None:
    """Price one share under one price card; first result wins.

    Called at every flush for every share, and by ``infermeter reprice``.
    ``window_j`` is the energy of all the device's shares in the share's
    window (joules), so a capacity cost can be split by energy. Returns a
    ``infermeter.price.pricing.Price`` (energy cost and capacity cost in the card's
    currency, carbon in grams CO2e); a figure that cannot be known is None
    (stored as unpriced), never 0. The built-in card pricing is ``trylast``,
    so a plugin can price the devices it knows better and return None for
    the rest.
    """


@hookspec
def infermeter_recommend(stats: Stats, config: Config) -> Sequence[Recommendation]:
    """Return recommendations drawn from measured statistics.

    Called by the recommend job (and ``infermeter recommend``) once per host
    with ``stats``, the ``infermeter.recommend.stats.Stats`` record of the
    recommend window: frozen records, typed, that a test can build by hand.
    It holds ``host``, ``window`` (t0, t1 in UTC seconds, and the factor that
    scales a window figure to a 30-day month), ``prices`` (energy price,
    PUE, carbon intensity, the PriceCard), ``models`` (per deployment:
    calls, items, J/item and latency per batch size, dtype, device),
    ``devices`` (utilisation, memory, idle and keep-warm energy and cost) and
    ``targets`` (keep-warm stretches). ``config`` holds every declared
    option, defaults filled in: a plugin reads its own as
    ``config["section.key"]``. An implementation with too little data
    returns nothing rather than guessing. Savings are per month (USD,
    kWh, kgCO2e) with a range; the core drops malformed answers and caps a
    saving at the measured cost it states.
    """


@hookspec(firstresult=True)
def infermeter_apply(recommendation: Recommendation, config: Config, dry_run: bool) -> str | None:
    """Carry out a recommendation that changes the machine (a GPU's power limit).

    Called by ``infermeter apply ID``, only with the operator's consent:
    ``dry_run`` is True without ``--yes``, and the plugin then changes
    nothing and says what it would do. Returns one line saying what was done
    (or would be), or None when this plugin does not carry out this kind of
    advice; the first plugin that answers wins. When no plugin answers, the
    change is the operator's to make and ``--yes`` only marks it applied.
    Raises InfermeterError with one line when it cannot (no driver, no
    permission, a limit the device refuses); the advice then stays open.
    """


@hookspec
def infermeter_export(batch: Sequence[Share], config: Config) -> None:
    """Receive every flushed batch of shares after it is committed.

    Called from the flush job, after the store's transaction succeeded, so an
    exporter never publishes what the store may roll back. Must not block for
    long: the next flush waits for it.
    """


@hookspec
def infermeter_instrument(emitter: SpanEmitter) -> bool | None:
    """Patch a runtime inside the inference process, if it is importable.

    Called once by ``infermeter.instrument()`` in the application's process,
    not in the agent. Patch only what is already importable (never import a
    heavy runtime that the application does not use) and return True when
    something was patched. The patched call must cost little (timestamps and
    ``emitter.emit``), must never raise into the application, and must leave
    the runtime's behaviour and results unchanged.
    """
