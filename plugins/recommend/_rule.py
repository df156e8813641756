"""What every recommend rule shares, so that a rule module holds only its own judgement.

A rule declares its options (one config section; the config fills in the
default of any not set, so ``config["section.key"]`` is the one way to read
them, and the judge gets them by key), says which records of the
statistics it judges (a ``Pass``: the models, the devices, ...) and judges
one record at a time, with the statistics and its options at hand, into an
``Advice`` or nothing. ``hooks`` turns that into the rule's two hook
implementations: its options for the config, and ``infermeter_recommend``,
which reads the options once, runs the passes in order and prices each
Advice over the statistics' window and prices (``money.advice``: scaled to a
month, capped at the subject's cost), so no rule repeats that tail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.recommend.money import Subject, WindowSaving, advice
from infermeter.recommend.stats import DeviceStats, ModelStats, Stats
from infermeter.records import Recommendation, stable_id

T = TypeVar("T")

Options = Mapping[str, Any]  # a rule's options by key, as the config holds them
OptionsHook = Callable[[], Sequence[Option]]
RecommendHook = Callable[[Stats, Config], Sequence[Recommendation]]


@dataclass(frozen=True, slots=True)
class Advice:
    """What a rule found about one subject, measured over the window, not yet priced."""

    kind: str
    subject: Subject
    saving: WindowSaving
    confidence: str  # high | medium | low
    reason: str  # why that confidence
    how_to_apply: str
    evidence: dict[str, Any] = field(hash=False)

    @property
    def stable_id(self) -> str:
        """The id its Recommendation will have (what ``infermeter apply`` takes)."""
        return stable_id(self.kind, self.subject.kind, self.subject.name)

    def priced(self, stats: Stats) -> Recommendation:
        return advice(
            self.kind,
            self.subject,
            self.saving,
            stats.window,
            stats.prices,
            self.confidence,
            self.reason,
            self.how_to_apply,
            self.evidence,
        )


@dataclass(frozen=True, slots=True)
class Pass(Generic[T]):
    """One kind of record a rule judges: where the statistics hold them, and the judge."""

    subjects: Callable[[Stats], Iterable[T]]
    judge: Callable[[T, Stats, Options], Advice | None]

    def run(self, stats: Stats, opt: Options) -> list[Recommendation]:
        out = []
        for subject in self.subjects(stats):
            found = self.judge(subject, stats, opt)
            if found is not None:
                out.append(found.priced(stats))
        return out


def models(stats: Stats) -> tuple[ModelStats, ...]:
    return stats.models


def devices(stats: Stats) -> tuple[DeviceStats, ...]:
    return stats.devices


def hooks(options: tuple[Option, ...], *passes: Pass[Any]) -> tuple[OptionsHook, RecommendHook]:
    """A rule's ``infermeter_config_options`` and ``infermeter_recommend``.

    A rule module binds them to those names (pluggy finds hooks by name), so
    every rule declares its options and runs over the statistics the same way.
    """

    @hookimpl
    def infermeter_config_options() -> Sequence[Option]:
        return options

    @hookimpl(trylast=True)
    def infermeter_recommend(stats: Stats, config: Config) -> Sequence[Recommendation]:
        opt = {o.key: config[o.name] for o in options}  # declared, so filled: default or set
        return [rec for p in passes for rec in p.run(stats, opt)]

    return infermeter_config_options, infermeter_recommend
