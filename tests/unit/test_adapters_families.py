"""Vendor-tool parsing for every non-NVIDIA family, on recorded output.

Fixtures live in tests/fixtures/accelerators/<family>/, one file per tool and
case: a healthy multi-device node, a device in an error state, output cut
short, and an unknown model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from agents.accelerators._tool import ToolAdapter
from agents.accelerators.amd import AmdAdapter
from agents.accelerators.ascend import AscendAdapter
from agents.accelerators.cambricon import CambriconAdapter
from agents.accelerators.hygon import HY_SMI, HygonAdapter
from agents.accelerators.iluvatar import IluvatarAdapter
from agents.accelerators.kunlunxin import KunlunxinAdapter
from agents.accelerators.metax import MetaxAdapter
from agents.accelerators.mthreads import MthreadsAdapter

MIB = 1024 * 1024
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "accelerators"


def recorded(family: str, name: str):
    """A runner that answers every command with one recorded output."""
    text = (FIXTURES / family / name).read_text(encoding="utf-8")
    calls: list[tuple[str, ...]] = []

    def runner(argv: Sequence[str], timeout: float) -> str:
        calls.append(tuple(argv))
        return text

    runner.calls = calls  # type: ignore[attr-defined]
    return runner


def detect(cls: type[ToolAdapter], family: str, name: str):
    return cls(runner=recorded(family, name)).detect()


# -- healthy multi-device nodes ------------------------------------------------
# (adapter, fixture, devices, catalogue model, first device:
#  (index, memory MiB, used MiB, utilisation, temperature, power))
HEALTHY = [
    (AscendAdapter, "ascend", "npu-smi-info-910b3-8.txt", 8, "910B",
     (0, 65536, 3386, 0.0, 40.0, 93.6)),
    (CambriconAdapter, "cambricon", "cnmon-info-mlu370-x8-4.json", 4, "MLU370-X8",
     (0, 24576, 448, 0.0, 36.0, 33.0)),
    (HygonAdapter, "hygon", "hy-smi-k100-ai-8.json", 8, "K100_AI",
     (0, 65520, 2, 0.0, 45.0, 81.0)),
    (KunlunxinAdapter, "kunlunxin", "xpu-smi-m-p800-8.txt", 8, "P800",
     (0, 98304, 0, 0.0, 38.0, 86.0)),
    (IluvatarAdapter, "iluvatar", "ixsmi-query-bi-v150-4.txt", 4, "BI-V150",
     (0, 32768, 114, 0.0, 33.0, 51.0)),
    (MthreadsAdapter, "mthreads", "mthreads-gmi-q-s4000-4.txt", 4, "S4000",
     (0, 49152, 1033, 0.0, 38.0, 78.5)),
    (MetaxAdapter, "metax", "mx-smi-c550-4.txt", 4, "C550",
     (0, 65536, 858, 0.0, 36.0, 69.0)),
    (AmdAdapter, "amd", "rocm-smi-mi300x-8.json", 8, "MI300X",
     (0, 205822885888 / MIB, 295989248 / MIB, 0.0, 40.0, 139.0)),
]


@pytest.mark.parametrize("cls, family, name, count, model, first", HEALTHY,
                         ids=[h[1] for h in HEALTHY])
def test_healthy_node_is_read_in_full(cls, family, name, count, model, first):
    devices = detect(cls, family, name)
    assert [d.index for d in devices] == list(range(count))
    assert {(d.family, d.model, d.healthy, d.health_reason) for d in devices} == {
        (family, model, True, "")}
    assert len({d.uuid for d in devices}) == count and all(d.uuid for d in devices)
    d = devices[0]
    index, memory_mib, used_mib, util, temp, power = first
    assert (d.index, d.memory_bytes, d.memory_used_bytes) == (
        index, int(memory_mib * MIB), int(used_mib * MIB))
    assert (d.utilization_ratio, d.temperature_celsius) == (util, temp)
    assert d.power_watts == pytest.approx(power)


@pytest.mark.parametrize("cls, family, name, busy_index, util", [
    (AscendAdapter, "ascend", "npu-smi-info-910b3-8.txt", 6, 0.87),
    (CambriconAdapter, "cambricon", "cnmon-info-mlu370-x8-4.json", 2, 0.93),
    (HygonAdapter, "hygon", "hy-smi-k100-ai-8.json", 4, 0.97),
    (KunlunxinAdapter, "kunlunxin", "xpu-smi-m-p800-8.txt", 6, 0.96),
    (IluvatarAdapter, "iluvatar", "ixsmi-query-bi-v150-4.txt", 2, 0.98),
    (MthreadsAdapter, "mthreads", "mthreads-gmi-q-s4000-4.txt", 2, 0.94),
    (MetaxAdapter, "metax", "mx-smi-c550-4.txt", 2, 0.96),
    (AmdAdapter, "amd", "rocm-smi-mi300x-8.json", 6, 1.0),
])
def test_busy_devices_show_their_load(cls, family, name, busy_index, util):
    busy = {d.index: d for d in detect(cls, family, name)}[busy_index]
    assert busy.utilization_ratio == pytest.approx(util)
    assert busy.memory_used_bytes > busy.memory_bytes * 0.8
    assert busy.power_watts > 100


# -- devices in an error state ----------------------------------------------------
@pytest.mark.parametrize("cls, family, name, expected", [
    (AscendAdapter, "ascend", "npu-smi-info-alarm.txt",
     {0: "", 1: "", 2: "npu-smi reports health Alarm", 3: "npu-smi reports health Critical"}),
    (CambriconAdapter, "cambricon", "cnmon-info-ecc-error.json",
     {0: "", 1: "cnmon reports ECC.UncorrectedError=3", 2: "cnmon reports Power.Usage=Error"}),
    (HygonAdapter, "hygon", "hy-smi-error.json",
     {0: "", 1: "hy-smi reports Temperature (Sensor edge) (C)=Error, "
                "Temperature (Sensor junction) (C)=Error, Temperature (Sensor mem) (C)=Error, "
                "HCU use (%)=Error"}),
    (KunlunxinAdapter, "kunlunxin", "xpu-smi-m-error.txt",
     {0: "", 1: "xpu-smi reports field 21=ERR"}),
    (IluvatarAdapter, "iluvatar", "ixsmi-query-error.txt",
     {0: "", 1: "ixsmi reports memory.used=ERR!, temperature.gpu=ERR!",
      2: "ixsmi reports uuid=[GPU is lost], name=[GPU is lost]"}),
    (MthreadsAdapter, "mthreads", "mthreads-gmi-q-error.txt",
     {0: "", 1: "mthreads-gmi reports Utilization.Gpu=Error, Power Readings.Power Draw=ERR!"}),
    (MetaxAdapter, "metax", "mx-smi-error.txt", {0: "", 1: "mx-smi reports temp=ERR"}),
    (AmdAdapter, "amd", "rocm-smi-error.json",
     {0: "", 1: "rocm-smi reports GPU use (%)=Unknown error"}),
])
def test_devices_in_error_are_unhealthy_with_the_reason(cls, family, name, expected):
    devices = detect(cls, family, name)
    assert {d.index: d.health_reason for d in devices} == expected
    assert all(d.healthy == (not d.health_reason) for d in devices)
    broken = devices[max(expected)]
    assert broken.memory_bytes > 0, "a broken device keeps its size for the scheduler"


def test_ascend_warning_is_healthy_but_unreadable_readings_are_zero():
    devices = {d.index: d for d in detect(AscendAdapter, "ascend", "npu-smi-info-alarm.txt")}
    assert devices[1].healthy and devices[1].temperature_celsius == 44.0
    critical = devices[3]
    assert (critical.power_watts, critical.temperature_celsius) == (0.0, 0.0)
    assert critical.utilization_ratio == 0.0 and critical.memory_bytes == 65536 * MIB


# -- output cut short ----------------------------------------------------------------
@pytest.mark.parametrize("cls, family, name, indices, warning", [
    (AscendAdapter, "ascend", "npu-smi-info-truncated.txt", [0, 1], "no chip row"),
    (KunlunxinAdapter, "kunlunxin", "xpu-smi-m-truncated.txt", [0, 1, 2], "not a device row"),
    (IluvatarAdapter, "iluvatar", "ixsmi-query-truncated.txt", [0, 1], "skipping ixsmi line"),
    (MthreadsAdapter, "mthreads", "mthreads-gmi-q-truncated.txt", [0, 1, 2],
     "without a memory total"),
    (MetaxAdapter, "metax", "mx-smi-truncated.txt", [0, 1], "incomplete"),
    (CambriconAdapter, "cambricon", "cnmon-info-truncated.json", [], "truncated or malformed"),
    (AmdAdapter, "amd", "rocm-smi-truncated.json", [], "truncated or malformed"),
])
def test_output_cut_short_keeps_the_complete_devices(cls, family, name, indices, warning,
                                                     caplog):
    with caplog.at_level(logging.WARNING):
        devices = detect(cls, family, name)
    assert [d.index for d in devices] == indices
    assert all(d.healthy for d in devices)
    assert warning in caplog.text


def test_iluvatar_unsupported_readings_read_zero_and_stay_healthy():
    devices = detect(IluvatarAdapter, "iluvatar", "ixsmi-query-truncated.txt")
    assert devices[1].healthy
    assert (devices[1].utilization_ratio, devices[1].power_watts) == (0.0, 0.0)


# -- unknown models -------------------------------------------------------------------
@pytest.mark.parametrize("cls, family, name, model, memory_mib", [
    (AscendAdapter, "ascend", "npu-smi-info-310p-duo.txt", "310P3", 44280),
    (CambriconAdapter, "cambricon", "cnmon-info-unknown-model.json", "MLU690-M9", 98304),
    (KunlunxinAdapter, "kunlunxin", "xpu-smi-m-unknown-model.txt", "R200", 32768),
    (IluvatarAdapter, "iluvatar", "ixsmi-query-unknown-model.txt", "Iluvatar MR-V100", 32768),
    (MthreadsAdapter, "mthreads", "mthreads-gmi-q-unknown-model.txt", "MTT S5000", 81920),
    (MetaxAdapter, "metax", "mx-smi-unknown-model.txt", "MXN260", 65536),
])
def test_unknown_model_is_reported_as_is_with_one_warning(cls, family, name, model,
                                                          memory_mib, caplog):
    adapter = cls(runner=recorded(family, name))
    with caplog.at_level(logging.WARNING):
        first = adapter.detect()
        again = adapter.telemetry()
    assert first == again and first[0].healthy
    assert (first[0].family, first[0].model, first[0].memory_bytes) == (
        family, model, memory_mib * MIB)
    warnings = [r for r in caplog.records if "unknown" in r.getMessage()]
    assert len(warnings) == 1 and "generic profile" in warnings[0].getMessage()


def test_ascend_multi_chip_cards_use_logical_device_ids():
    devices = detect(AscendAdapter, "ascend", "npu-smi-info-310p-duo.txt")
    assert [(d.index, d.uuid) for d in devices] == [
        (0, "NPU-8-chip-0-0000:01:00.0"), (1, "NPU-8-chip-1-0000:01:00.0"),
        (2, "NPU-9-chip-0-0000:02:00.0"), (3, "NPU-9-chip-1-0000:02:00.0")]
    assert devices[1].memory_bytes == 43693 * MIB and devices[0].power_watts == 0.0


# -- ROCm-style tools: key spellings and the AMD/Hygon split -----------------------------
def test_amd_reads_older_rocm_key_spellings_behind_warnings():
    devices = detect(AmdAdapter, "amd", "rocm-smi-mi250x-legacy.txt")
    assert [(d.index, d.model) for d in devices] == [(0, "MI250X"), (1, "MI250X")]
    assert devices[0].temperature_celsius == 37.0, "junction sensor preferred over edge"
    assert devices[0].power_watts == 88.0 and devices[0].memory_bytes == 68702699520


def test_hygon_reads_older_dcu_key_spellings():
    devices = detect(HygonAdapter, "hygon", "hy-smi-z100l-dcu-keys.txt")
    assert [(d.model, d.memory_bytes) for d in devices] == [("Z100L", 32752 * MIB)] * 2
    assert devices[1].power_watts == 61.0


def test_amd_leaves_hygon_cards_to_the_hygon_adapter():
    assert detect(AmdAdapter, "hygon", "rocm-smi-on-hygon.json") == []
    assert detect(AmdAdapter, "hygon", "hy-smi-k100-ai-8.json") == []


def test_hygon_falls_back_to_rocm_smi_when_hy_smi_is_absent():
    rocm_output = (FIXTURES / "hygon" / "rocm-smi-on-hygon.json").read_text()
    calls = []

    def runner(argv: Sequence[str], timeout: float) -> str:
        calls.append(argv[0])
        if argv[0] == "hy-smi":
            raise FileNotFoundError("hy-smi")
        return rocm_output

    devices = HygonAdapter(runner=runner).detect()
    assert calls == ["hy-smi", "rocm-smi"]
    assert [(d.family, d.model, d.index) for d in devices] == [("hygon", "K100_AI", 0),
                                                              ("hygon", "K100_AI", 1)]


def test_hygon_asks_hy_smi_first():
    runner = recorded("hygon", "hy-smi-k100-ai-8.json")
    HygonAdapter(runner=runner).detect()
    assert runner.calls == [HY_SMI]


def test_cambricon_rejects_json_without_its_list(caplog):
    def runner(argv: Sequence[str], timeout: float) -> str:
        return '{"Error": "no MLU device found"}'

    assert CambriconAdapter(runner=runner).detect() == []
    assert "no CnmonInfo list" in caplog.text
