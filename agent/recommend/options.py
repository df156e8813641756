"""The recommend step's options (``[recommend]``; read as ``config["recommend.key"]``).

This is the ``core.recommend`` plugin. Every process that loads plugins
(the agent, each CLI command, an instrumented application) imports it, so
it holds no store code: the recommend step itself, with SQLAlchemy and the
statistics builder, is infermeter.recommend.run, imported only where it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from infermeter.config import Option
from infermeter.hookspecs import hookimpl

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend",
        "window_s",
        86400.0,
        "Seconds of measurements a recommend run judges, ending at the newest; "
        "monthly savings extrapolate what was seen in it.",
    ),
    Option(
        "recommend",
        "profile_s",
        86400.0,
        "Seconds of history for a deployment's batch-size profile and for "
        "measured comparisons (the same model at another precision); every "
        "stored call in it is read once per run (~25 us each).",
    ),
    Option(
        "recommend",
        "min_savings_usd_month",
        1.0,
        "Advice that would save less than this per month is not kept.",
        (int, float),
    ),
)


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return OPTIONS
