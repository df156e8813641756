"""nvml_query: the value, or the default when NVML refuses, logged once per (function, error).

The NVML calls go to the replay stand-in (pynvml's own exception classes) or
to small real functions named here; the log is shared by the process, so
each logging test uses a function name no other code calls.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pynvml
import pytest
from support import FIXTURES

from infermeter.plugins.nvml.devices import open_gpus
from infermeter.plugins.nvml.query import nvml_query
from infermeter.plugins.nvml.record import NvmlRecorder
from infermeter.plugins.nvml.replay import NvmlStandIn
from infermeter.plugins.nvml.trace import check_files

ENCODER = FIXTURES / "h100-resnet-encoder"
LOGGER = "infermeter.plugins.nvml"


@pytest.mark.parametrize(
    "error",
    [
        pynvml.NVMLError_NotSupported,
        pynvml.NVMLError_NoPermission,
        pynvml.NVMLError_FunctionNotFound,
        pynvml.NVMLError_GpuIsLost,
    ],
)
def test_an_nvml_error_gives_the_default(error: type[pynvml.NVMLError]) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    h = standin.nvmlDeviceGetHandleByIndex(0)
    answered = nvml_query(standin.nvmlDeviceGetPowerUsage, h, default=-1)
    assert answered == standin.nvmlDeviceGetPowerUsage(h) and answered > 0
    standin.fail("nvmlDeviceGetPowerUsage", error)
    assert nvml_query(standin.nvmlDeviceGetPowerUsage, h, default=-1) == -1
    assert nvml_query(standin.nvmlDeviceGetPowerUsage, h) is None  # the default default


def test_another_exception_is_a_bug_and_propagates() -> None:
    def nvmlDeviceGetBroken() -> int:
        raise ValueError("a bug, not NVML")

    with pytest.raises(ValueError, match="a bug"):
        nvml_query(nvmlDeviceGetBroken, default=0)


def test_each_function_and_error_is_logged_once_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    raised: list[type[pynvml.NVMLError]] = [pynvml.NVMLError_NotSupported]

    def nvmlDeviceGetQueryTestValue(handle: int) -> int:
        raise raised[0]()

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(3):
            assert nvml_query(nvmlDeviceGetQueryTestValue, 0, default=7) == 7
        raised[0] = pynvml.NVMLError_Unknown
        for _ in range(2):
            assert nvml_query(nvmlDeviceGetQueryTestValue, 0, default=7) == 7
    mine = [r for r in caplog.records if "nvmlDeviceGetQueryTestValue" in r.getMessage()]
    assert [r.levelno for r in mine] == [logging.DEBUG, logging.DEBUG]
    assert "NVMLError_NotSupported" in mine[0].getMessage()
    assert "NVMLError_Unknown" in mine[1].getMessage()


def test_the_level_is_the_callers(caplog: pytest.LogCaptureFixture) -> None:
    def nvmlDeviceGetQueryLevelValue() -> int:
        raise pynvml.NVMLError_NoPermission()

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        nvml_query(nvmlDeviceGetQueryLevelValue, level=logging.WARNING)
    mine = [r for r in caplog.records if "nvmlDeviceGetQueryLevelValue" in r.getMessage()]
    assert [r.levelno for r in mine] == [logging.WARNING]


def test_a_gpu_without_a_power_limit_is_described_without_one() -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.nvmlInit()
    whole = open_gpus(standin)[0].device
    assert whole.power_limit_w is not None and whole.memory_total_bytes is not None
    standin.fail("nvmlDeviceGetPowerManagementLimit", pynvml.NVMLError_NotSupported)
    standin.fail("nvmlDeviceGetMemoryInfo", pynvml.NVMLError_NoPermission)
    (gpu,) = open_gpus(standin)
    assert gpu.device.power_limit_w is None and gpu.device.memory_total_bytes is None
    assert gpu.device.uid == whole.uid and not gpu.mig  # MIG mode NotSupported: the whole GPU


def test_the_recorder_leaves_a_refused_value_empty(tmp_path: Path) -> None:
    standin = NvmlStandIn.from_trace(ENCODER)
    standin.nvmlInit()
    recorder = NvmlRecorder(standin, open_gpus(standin), tmp_path, owns_init=False)
    standin.fail("nvmlDeviceGetClockInfo", pynvml.NVMLError_NotSupported)
    t0 = standin.start_t + 10.0
    for k in range(5):
        standin.clock.now = t0 + 0.05 * k
        recorder.sample(standin.clock.now)
    recorder.close()
    with (tmp_path / "nvml_device0.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert all(r["sm_mhz"] == "" and r["power_mw"] != "" for r in rows)
    assert check_files(tmp_path) == []  # an empty cell is a value not read, not a problem
