"""The agent's bounds as configured: bad values refused, counts under stable names.

``Agent.shed_counts()`` is what a status command reads; the names are
pinned here. The bounds at work are in tests/sidecar/test_agent_ledger.py (a real
running agent) and tests/attribute/test_ledger.py (the ledger itself).
"""

from __future__ import annotations

from typing import Any

import pytest

from infermeter.config import build_config
from infermeter.errors import ConfigError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Span
from infermeter.sidecar.agent import Agent


def agent(**values: Any) -> Agent:
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), {"agent": values}, environ={})
    return Agent(config, pm, None, meters=[], targets=lambda _now: {}, span_sources=[])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ledger_max_spans", 0),
        ("span_horizon_s", 0.0),
        ("span_horizon_s", -5.0),
        ("buffer_max_calls", 0),
        ("buffer_max_shares", 0),
    ],
)
def test_a_bound_that_holds_nothing_is_a_config_error(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        agent(**{key: value})


def test_shed_counts_names_what_was_refused_and_what_is_held() -> None:
    a = agent(span_horizon_s=60.0)
    now = 1_000_000.0
    spans = [
        Span(pid=5, model="m", t0=now - 1, t1=now),
        Span(pid=5, model="m", t0=now - 1, t1=now + 61),  # past the 60 s horizon
        Span(pid=5, model="m", t0=now - 1, t1=now),  # a twin of the first: seq 1
    ]
    assert a.add_spans(spans, now) == 2
    counts = a.shed_counts()
    assert counts["spans_received"] == 3
    assert counts["spans_refused_future"] == 1
    assert counts["spans_held"] == 2
    assert counts["buffer_dropped_calls"] == 0 and counts["buffer_held_calls"] == 0
    assert set(counts) >= {
        "spans_refused_malformed",
        "spans_refused_too_old",
        "spans_shed",
        "spans_late",
        "spans_completed",
        "spans_unattributed",
        "spans_keys",
        "spans_keys_remembered",
        "buffer_dropped_shares",
        "buffer_dropped_batches",
        "buffer_dropped_readings",
        "buffer_held_batches",
        "buffer_held_shares",
        "pending_shares",
    }
