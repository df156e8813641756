"""How much a host's CPUs draw at idle and at full load, when nothing measures it.

The estimate is linear in utilisation, as Cloud Carbon Footprint computes
compute energy (https://www.cloudcarbonfootprint.org/docs/methodology/):

    power_w = idle_w + busy_fraction * (max_w - idle_w)

``idle_w`` and ``max_w`` are per logical CPU ("vCPU") figures times the
number of logical CPUs this host sees, which is right on bare metal and on a
VM alike (a 2-vCPU slice of a 128-thread EPYC gets 2/128 of the server). The
per-thread figures come from CCF's coefficient set
(github.com/cloud-carbon-footprint/ccf-coefficients,
``output/coefficients-aws-use.csv``), derived from SPECpower_ssj2008 results:
a server's wall power at 0 % and 100 % load divided by its threads. They
therefore include the memory, fans and board that the CPU load drives, not
only the package: the right scope for "what does running this cost" on a
host with no meter. The micro-architecture is recognised from the
``model name`` of /proc/cpuinfo; anything not recognised (e.g. a VM that
reports just "AMD EPYC") gets CCF's AWS fleet average, 0.74 W idle and
3.5 W at full load per logical CPU.

``[cpu] tdp_w`` and ``idle_w`` override the whole-host figures (0: use the
table).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Per logical CPU: (min watts at 0 % load, max watts at 100 % load), from
# ccf-coefficients output/coefficients-aws-use.csv (SPECpower-derived),
# rounded to 0.01 W. EPYC 5th Gen is left out on purpose: CCF's figure for
# it (3.68 / 8.96 W) is 5-8x its predecessors' and looks like an artefact of
# few SPECpower results; Turin hosts get the generic figures instead.
PER_THREAD_W: dict[str, tuple[float, float]] = {
    "Haswell": (1.86, 5.60),
    "Broadwell": (0.71, 3.69),
    "Skylake": (0.61, 4.10),
    "Cascade Lake": (0.69, 4.06),
    "Ice Lake": (0.77, 3.76),
    "Sapphire Rapids": (1.04, 4.16),
    "Emerald Rapids": (0.81, 4.48),
    "Granite Rapids": (0.58, 2.53),
    "EPYC 1st Gen": (0.85, 2.60),
    "EPYC 2nd Gen": (0.47, 1.69),
    "EPYC 3rd Gen": (0.46, 1.96),
    "EPYC 4th Gen": (0.74, 2.28),
}

# CCF's AWS average over all micro-architectures (Methodology, Appendix I).
GENERIC_PER_THREAD_W = (0.74, 3.5)

# Xeon Scalable: the second digit of the number is the generation
# (Platinum 8175M Skylake, Gold 6248 Cascade Lake, Platinum 8375C Ice Lake,
# Platinum 8480+ Sapphire Rapids, Platinum 8592+ Emerald Rapids).
_XEON_SCALABLE = re.compile(r"Xeon.*\b(?:Platinum|Gold|Silver|Bronze)\s+\d(\d)\d\d")
_XEON_GEN = {
    "1": "Skylake",
    "2": "Cascade Lake",
    "3": "Ice Lake",
    "4": "Sapphire Rapids",
    "5": "Emerald Rapids",
}
# EPYC: the last digit of 7xxx/9xxx/8xxx/4xxx is the generation (7R13 and
# 7763 Milan, 7R32 and 7742 Rome, 9654 and 9R14 Genoa, 7551 Naples).
_EPYC = re.compile(r"EPYC\s+[4789]\w\w(\d)\b")
_EPYC_GEN = {"1": "EPYC 1st Gen", "2": "EPYC 2nd Gen", "3": "EPYC 3rd Gen", "4": "EPYC 4th Gen"}
_OTHER: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Xeon\(R\)\s+6\d{3}P\b"), "Granite Rapids"),  # Xeon 6 P-core, e.g. 6980P
    (re.compile(r"E5-\d{4}\w?\s+v4"), "Broadwell"),
    (re.compile(r"E5-\d{4}\w?\s+v3"), "Haswell"),
)


def micro_architecture(model_name: str) -> str | None:
    """The table key for a /proc/cpuinfo ``model name``, or None if unknown."""
    m = _XEON_SCALABLE.search(model_name)
    if m:
        return _XEON_GEN.get(m.group(1))
    m = _EPYC.search(model_name)
    if m:
        return _EPYC_GEN.get(m.group(1))
    for pattern, arch in _OTHER:
        if pattern.search(model_name):
            return arch
    return None


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first ``model name`` in /proc/cpuinfo, or "" (e.g. on many ARM hosts)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def logical_cpus() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class CpuPower:
    """A host's linear CPU power model, with where its numbers came from."""

    model_name: str
    ncpu: int
    idle_w: float
    max_w: float
    source: str

    def power_w(self, busy_fraction: float) -> float:
        u = min(max(busy_fraction, 0.0), 1.0)
        return self.idle_w + u * (self.max_w - self.idle_w)


def power_model(model_name: str, ncpu: int, tdp_w: float = 0.0, idle_w: float = 0.0) -> CpuPower:
    """Whole-host idle and full-load power; a configured value (> 0) wins over the table."""
    arch = micro_architecture(model_name)
    per_idle, per_max = PER_THREAD_W[arch] if arch else GENERIC_PER_THREAD_W
    source = f"table: {arch} (CCF, SPECpower)" if arch else "generic (CCF AWS average)"
    idle = idle_w if idle_w > 0 else per_idle * ncpu
    top = tdp_w if tdp_w > 0 else per_max * ncpu
    if tdp_w > 0 or idle_w > 0:
        source = f"config, else {source}"
    if idle > top:
        log.warning(
            "cpu idle power %.1f W exceeds full-load power %.1f W; using %.1f W for both",
            idle,
            top,
            top,
        )
        idle = top
    return CpuPower(model_name or "unknown CPU", ncpu, idle, top, source)
