"""The SDK's spans, received on a Unix datagram socket (``[spans]`` section).

The work is in ``infermeter.spans.receiver`` (SocketReceiver) and the format in
``infermeter.spans.wire``; this module only declares the options and hands the
receiver to the agent, which drains it every tick. A socket that cannot be
bound (another agent holds it, no permission) is not fatal: the agent meters
without spans and logs one line saying why. A ``group`` that does not exist
is a configuration error (exit 2), caught before anything starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from infermeter import hookimpl
from infermeter.config import Config, Option, at_least
from infermeter.errors import InfermeterError
from infermeter.hookspecs import SpanSource
from infermeter.spans.receiver import DEFAULT_GROUP, SocketReceiver, group_problem
from infermeter.spans.wire import ENV_SOCKET, default_socket_path

log = logging.getLogger(__name__)


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return [
        Option(
            "spans",
            "socket",
            "",
            "Unix datagram socket the SDK sends spans to; empty: "
            f"${ENV_SOCKET}, else /run/infermeter/spans.sock for root, "
            "else $XDG_RUNTIME_DIR/infermeter/spans.sock.",
        ),
        Option(
            "spans",
            "max_queue",
            100_000,
            "Spans held between ticks; beyond it the oldest are dropped and counted.",
            check=at_least(1),
        ),
        Option(
            "spans",
            "group",
            "",
            "Group (name or gid) given the socket (0660) and the folder the agent "
            "makes for it (0750): inference processes in it may send. Empty: "
            f"{DEFAULT_GROUP!r} if that group exists and the agent may use it, "
            "else the agent's own group.",
            check=group_problem,
        ),
    ]


@hookimpl
def infermeter_span_sources(config: Config) -> Sequence[SpanSource]:
    path = str(config["spans.socket"]) or default_socket_path()
    max_queue = int(config["spans.max_queue"])
    if max_queue < 1:
        log.error("[spans] max_queue must be >= 1, not %d: spans are off", max_queue)
        return []
    try:
        return [SocketReceiver(path, max_queue=max_queue, group=str(config["spans.group"]))]
    except InfermeterError as e:
        log.error("spans are off: %s", e)
        return []
