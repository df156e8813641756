"""Discovery: which processes are inference targets, from /proc and config rules.

A process is a target when its memory maps show an inference runtime's
shared library, or when a configured rule matches it. The maps are the one
signal that needs no cooperation from the process: a runtime that is loaded
is mapped, whatever the command line says (``python serve.py``, ``gunicorn``,
a C++ server). Names looked for, checked against what the runtimes ship:

- PyTorch: ``libtorch_cpu.so`` (every build) and ``libtorch_cuda.so``.
- ONNX Runtime: ``libonnxruntime.so`` (C/C++ API) and the Python wheel's
  ``onnxruntime_pybind11_state*.so`` (the wheel links the runtime into it;
  ``libonnxruntime_providers_shared.so`` comes along and matches too).
- LiteRT: ai-edge-litert 2.x maps ``libLiteRt.so`` on import and
  ``_pywrap_litert_interpreter_wrapper*.so`` for its Interpreter;
  tflite_runtime and tf.lite map ``_pywrap_tensorflow_interpreter_wrapper``.

The maps are read once per process (the core asks once per (pid, start
time)), in the chunks the kernel hands out, searching each with
``bytes.__contains__`` and stopping at the first runtime found. The kernel
formats maps as it is read (~1 us a line), so stopping early is what saves
time: a CPU PyTorch process's maps is ~350 lines / 50 kB, and the early stop
costs ~80 us against ~440 us for reading it whole (measured in the tests;
CUDA processes have thousands of lines). A process that maps several
runtimes is reported as the one found first (within a chunk, in
RUNTIME_LIBS order); the SDK's spans name the runtime of each model.

Rules (``[discovery] rules``) add targets by command line, user or cgroup and
attach labels (model, tenant, team, any tag) to any target they match,
runtime-detected or not. A process whose maps the agent may not read
(another user's, without root or CAP_SYS_PTRACE) is logged once and its
maps never retried; rules still apply to it. Rules see the command line as
discovery hands it over, redacted (``--api-key=***``): a rule cannot match
on a secret, and a target never carries one.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.hookspecs import ProcessInfo
from infermeter.records import Framework, Target

log = logging.getLogger(__name__)

PROC = "/proc"

# Searched in this order within each chunk of the maps.
RUNTIME_LIBS: tuple[tuple[bytes, Framework], ...] = (
    (b"/libtorch_cuda", Framework.TORCH),
    (b"/libtorch_cpu", Framework.TORCH),
    (b"/libonnxruntime", Framework.ONNXRUNTIME),
    (b"/onnxruntime_pybind11_state", Framework.ONNXRUNTIME),
    (b"/libLiteRt", Framework.LITERT),
    (b"/_pywrap_litert", Framework.LITERT),
    (b"/_pywrap_tensorflow_interpreter_wrapper", Framework.LITERT),
)

_RULE_KEYS = {"cmdline", "user", "cgroup", "framework", "labels"}


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[discovery.rules]]`` entry; every condition given must match."""

    labels: Mapping[str, str]
    cmdline: re.Pattern[str] | None = None
    user: str | None = None
    cgroup: str | None = None
    framework: Framework | None = None

    def matches(self, process: ProcessInfo, cgroup: str | None) -> bool:
        if self.cmdline is not None and not self.cmdline.search(" ".join(process.cmdline)):
            return False
        if self.user is not None and process.username != self.user:
            return False
        return self.cgroup is None or (cgroup is not None and self.cgroup in cgroup)


def parse_rule(raw: Any, where: str) -> Rule:
    """Check one rule table; raise ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table, not {type(raw).__name__}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(
            f"{where} has unknown key(s) {sorted(unknown)}; known: {sorted(_RULE_KEYS)}"
        )
    if not {"cmdline", "user", "cgroup"} & set(raw):
        raise ValueError(f"{where} needs at least one of cmdline, user, cgroup")
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"{where}.labels must be a table of strings")
    for key in ("cmdline", "user", "cgroup", "framework"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{where}.{key} must be a string")
    try:
        pattern = re.compile(raw["cmdline"]) if "cmdline" in raw else None
    except re.error as e:
        raise ValueError(f"{where}.cmdline is not a valid regex: {e}") from None
    try:
        framework = Framework(raw["framework"]) if "framework" in raw else None
    except ValueError:
        names = ", ".join(f.value for f in Framework)
        raise ValueError(f"{where}.framework must be one of {names}") from None
    return Rule(dict(labels), pattern, raw.get("user"), raw.get("cgroup"), framework)


class _State:
    """What discovery remembers between calls: parsed rules, denied processes."""

    def __init__(self) -> None:
        self.rules_src: object = None
        self.rules: tuple[Rule, ...] = ()
        self.denied: set[tuple[int, float]] = set()
        self.denied_logged = False

    def rules_for(self, config: Config) -> tuple[Rule, ...]:
        raw = config["discovery.rules"]
        if raw is self.rules_src:
            return self.rules
        rules = []
        for i, item in enumerate(raw):
            try:
                rules.append(parse_rule(item, f"discovery.rules[{i}]"))
            except ValueError as e:  # a bad rule is loud, the good ones still work
                log.error("config: %s; this rule is ignored", e)
        self.rules_src, self.rules = raw, tuple(rules)
        return self.rules


_state = _State()


def _check_rules(raw: Any) -> str | None:
    """Reject a bad rule when the config is read, naming it, rather than at the first tick."""
    if not isinstance(raw, list):
        return "must be a list of tables"
    for i, rule in enumerate(raw):
        try:
            parse_rule(rule, f"rules[{i}]")
        except ValueError as e:
            return str(e)
    return None


def configured_rules(config: Config) -> tuple[Rule, ...]:
    """The valid ``[discovery] rules`` of ``config``, parsed once per config."""
    return _state.rules_for(config)


_LONGEST = max(len(needle) for needle, _ in RUNTIME_LIBS)


def framework_in_maps(maps: bytes) -> Framework | None:
    """The inference runtime a piece of maps text shows, by RUNTIME_LIBS order."""
    for needle, framework in RUNTIME_LIBS:
        if needle in maps:
            return framework
    return None


def scan_maps(pid: int, proc: str = PROC) -> Framework | None:
    """Search ``/proc/PID/maps`` chunk by chunk and stop at the first runtime found.

    The kernel formats maps lazily, a few kB per read(), and formatting is
    most of the cost (~1 us a line), so stopping early is what makes this
    cheap. Raises PermissionError, FileNotFoundError.
    """
    with open(f"{proc}/{pid}/maps", "rb", buffering=0) as f:
        tail = b""
        while chunk := f.read(65536):
            window = tail + chunk
            framework = framework_in_maps(window)
            if framework is not None:
                return framework
            tail = window[-_LONGEST:]  # a name split across two reads
    return None


def read_cgroup(pid: int, proc: str = PROC) -> str | None:
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def classify(
    process: ProcessInfo,
    host: str,
    rules: Sequence[Rule],
    proc: str = PROC,
    read_maps: bool = True,
    on_denied: Callable[[ProcessInfo], None] | None = None,
) -> Target | None:
    """Decide one process from its maps and the rules.

    Maps the agent may not read (``on_denied`` is told) or is told not to
    read leave the rules to decide: a command line is readable when the maps
    are not.
    """
    framework = None
    try:
        framework = scan_maps(process.pid, proc) if read_maps else None
    except (FileNotFoundError, ProcessLookupError):
        return None  # it exited meanwhile
    except PermissionError:
        if on_denied is not None:
            on_denied(process)
    cgroup = read_cgroup(process.pid, proc) if any(r.cgroup for r in rules) else None
    labels: dict[str, str] = {}
    rule_framework: Framework | None = None
    matched = False
    for rule in rules:  # a later rule overrides an earlier one's label
        if rule.matches(process, cgroup):
            matched = True
            labels.update(rule.labels)
            rule_framework = rule.framework or rule_framework
    if framework is None and not matched:
        return None
    return Target(
        host=host,
        pid=process.pid,
        start_time=process.start_time,
        framework=framework or rule_framework or Framework.UNKNOWN,
        cmdline=tuple(process.cmdline),
        labels=labels,
        how_found="runtime" if framework is not None else "rule",
    )


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return [
        Option(
            "discovery",
            "rules",
            [],
            "Tables {cmdline = regex (searched in the arguments joined by spaces, after "
            "[agent] redact_patterns replaced secrets by ***), user = "
            "name, cgroup = substring of /proc/PID/cgroup, framework = name, labels = {model, "
            "tenant, team, ...}}: a process matching every condition given is a target, and "
            "any target matched gets the labels (a later rule overrides an earlier one's).",
            list,
            check=_check_rules,
        )
    ]


@hookimpl(trylast=True)
def infermeter_discover(process: ProcessInfo, config: Config) -> Target | None:
    if process.pid == os.getpid():
        return None  # the agent never meters itself
    key = (process.pid, process.start_time)
    return classify(
        process,
        config.host,
        configured_rules(config),
        read_maps=key not in _state.denied,
        on_denied=_denied,
    )


def _denied(process: ProcessInfo) -> None:
    """Remember a process whose maps we may not read; say so once, with the fix."""
    if len(_state.denied) > 65536:
        _state.denied.clear()  # bounded: exited processes' keys are not pruned one by one
    _state.denied.add((process.pid, process.start_time))
    if not _state.denied_logged:
        _state.denied_logged = True
        log.warning(
            "cannot read /proc/%d/maps (%s, user %s): runtimes in other users' processes are "
            "not detected (configured rules still apply); run the agent as root or as the "
            "inference user, or grant it CAP_SYS_PTRACE. Further such processes are "
            "skipped silently.",
            process.pid,
            process.name,
            process.username,
        )
    else:
        log.debug("cannot read /proc/%d/maps: runtime not detected", process.pid)
