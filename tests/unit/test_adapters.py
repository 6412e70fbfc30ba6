"""Accelerator adapters: parsing vendor output, simulation, launch environments."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from agents.accelerators.base import (
    DeviceInfo,
    NodeInventory,
    adapters_for_host,
    get_adapter,
    health_signature,
)
from agents.accelerators.cpu import CpuAdapter
from agents.accelerators.nvidia import COMMAND, NvidiaAdapter
from agents.accelerators.simulated import SimulatedAdapter, parse_spec, simulated_adapters
from xinhe.v1 import common_pb2

MIB = 1024 * 1024

# Recorded from real hosts (UUIDs shortened), one line per GPU.
H100_NODE = """\
0, GPU-5d1c8a4e-1f2b-4c3d-9e8f-0a1b2c3d4e5f, NVIDIA H100 80GB HBM3, 81559, 0, 0, 31, 70.12
1, GPU-7e2d9b5f-2a3c-4d4e-8f9a-1b2c3d4e5f60, NVIDIA H100 80GB HBM3, 81559, 61234, 97, 64, 612.50
"""
A100_LINE = ("0, GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9, NVIDIA A100-SXM4-40GB,"
             " 40960, 3, 0, 29, 54.87\n")
NA_LINE = "2, GPU-1111, NVIDIA H100 80GB HBM3, 81559, [N/A], [Not Supported], , [N/A]\n"
ERR_LINE = "3, GPU-2222, NVIDIA H100 80GB HBM3, 81559, ERR!, 0, ERR!, 71.00\n"
LOST_LINE = "4, [GPU is lost], [GPU is lost], 81559, 0, 0, 30, 70.00\n"
PARTIAL_LINE = "5, GPU-3333, NVIDIA H100 80GB HB\n"
UNKNOWN_LINE = "0, GPU-4444, NVIDIA GeForce RTX 4090, 24564, 100, 5, 40, 30.5\n"


def recorded(output: str):
    calls: list[Sequence[str]] = []

    def runner(argv: Sequence[str], timeout: float) -> str:
        calls.append(tuple(argv))
        return output

    runner.calls = calls  # type: ignore[attr-defined]
    return runner


def raising(exc: BaseException):
    def runner(argv: Sequence[str], timeout: float) -> str:
        raise exc
    return runner


# -- nvidia ------------------------------------------------------------------
def test_nvidia_parses_h100_node():
    runner = recorded(H100_NODE)
    devices = NvidiaAdapter(runner=runner).detect()
    assert runner.calls == [COMMAND]
    assert [d.index for d in devices] == [0, 1]
    idle, busy = devices
    assert idle == DeviceInfo(
        index=0, uuid="GPU-5d1c8a4e-1f2b-4c3d-9e8f-0a1b2c3d4e5f", family="nvidia",
        model="H100", memory_bytes=81559 * MIB, healthy=True, utilization_ratio=0.0,
        memory_used_bytes=0, temperature_celsius=31.0, power_watts=70.12)
    assert busy.utilization_ratio == pytest.approx(0.97)
    assert busy.memory_used_bytes == 61234 * MIB
    assert busy.power_watts == pytest.approx(612.5)


def test_nvidia_maps_a100_vendor_name_to_catalogue():
    (device,) = NvidiaAdapter(runner=recorded(A100_LINE)).detect()
    assert (device.family, device.model, device.memory_bytes) == ("nvidia", "A100", 40960 * MIB)


def test_nvidia_unsupported_fields_read_zero_and_stay_healthy():
    (device,) = NvidiaAdapter(runner=recorded(NA_LINE)).detect()
    assert device.healthy and device.index == 2
    assert (device.memory_used_bytes, device.utilization_ratio) == (0, 0.0)
    assert (device.temperature_celsius, device.power_watts) == (0.0, 0.0)


@pytest.mark.parametrize("line, fields", [
    (ERR_LINE, ["memory.used=ERR!", "temperature.gpu=ERR!"]),
    (LOST_LINE, ["uuid=[GPU is lost]", "name=[GPU is lost]"]),
])
def test_nvidia_error_fields_mark_device_unhealthy(line, fields):
    (device,) = NvidiaAdapter(runner=recorded(line)).detect()
    assert not device.healthy
    for field in fields:
        assert field in device.health_reason


def test_nvidia_skips_partial_and_junk_lines(caplog):
    output = H100_NODE + PARTIAL_LINE + "No devices were found\n\n" + ERR_LINE
    devices = NvidiaAdapter(runner=recorded(output)).detect()
    assert [d.index for d in devices] == [0, 1, 3]
    assert "skipping nvidia-smi line" in caplog.text


def test_nvidia_unknown_model_keeps_vendor_name():
    (device,) = NvidiaAdapter(runner=recorded(UNKNOWN_LINE)).detect()
    assert (device.family, device.model) == ("nvidia", "NVIDIA GeForce RTX 4090")
    assert device.memory_bytes == 24564 * MIB


@pytest.mark.parametrize("error", [
    FileNotFoundError("nvidia-smi"),
    subprocess.TimeoutExpired(COMMAND, 10),
    subprocess.CalledProcessError(9, COMMAND, output="NVIDIA-SMI has failed"),
    PermissionError("denied"),
])
def test_nvidia_tool_missing_or_broken_means_no_devices(error):
    assert NvidiaAdapter(runner=raising(error)).detect() == []


def test_nvidia_default_runner_copes_without_the_tool(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert NvidiaAdapter().detect() == []


def test_device_info_to_proto_round_trips_every_field():
    (device,) = NvidiaAdapter(runner=recorded(ERR_LINE)).detect()
    proto = device.to_proto()
    assert isinstance(proto, common_pb2.Device)
    assert (proto.index, proto.model, proto.healthy) == (3, "H100", False)
    assert proto.health_reason == device.health_reason
    assert proto.power_watts == pytest.approx(71.0)


# -- simulated -----------------------------------------------------------------
@pytest.mark.parametrize("spec, model, family, count", [
    ("910B:8", "910B", "ascend", 8),
    ("H100:8", "H100", "nvidia", 8),
    ("mlu370-x8:4", "MLU370-X8", "cambricon", 4),
    ("h20:1", "H20", "nvidia", 1),
])
def test_simulated_spec_presents_catalogue_devices(spec, model, family, count):
    devices = SimulatedAdapter(spec, node="n1").detect()
    assert len(devices) == count
    assert {(d.model, d.family) for d in devices} == {(model, family)}
    assert devices[0].uuid == f"SIM-{model}-n1-0"
    assert all(d.healthy and d.memory_bytes > 0 for d in devices)


@pytest.mark.parametrize("spec, words", [
    ("910B", "MODEL:COUNT"),
    (":4", "MODEL:COUNT"),
    ("910B:x", "not a number"),
    ("910B:0", "at least 1"),
    ("NoSuchChip:2", "unknown accelerator model"),
])
def test_simulated_bad_spec_names_itself(spec, words):
    with pytest.raises(ValueError) as err:
        parse_spec(spec)
    assert repr(spec) in str(err.value) and words in str(err.value)


def test_simulated_telemetry_follows_busy_devices():
    sim = SimulatedAdapter("910B:4", node="n1", seed=1)
    sim.mark_busy([1, 2])
    by_index = {d.index: d for d in sim.telemetry()}
    for i in (1, 2):
        busy = by_index[i]
        assert 0.85 <= busy.utilization_ratio <= 0.95
        assert 0.55 <= busy.memory_used_bytes / busy.memory_bytes <= 0.65
        assert 60 <= busy.temperature_celsius <= 70 and busy.power_watts > 200
    assert by_index[0].utilization_ratio < 0.1 and by_index[0].temperature_celsius < 40
    sim.mark_idle([1, 2])
    assert all(d.utilization_ratio < 0.1 for d in sim.telemetry())


def test_simulated_unhealthy_devices_carry_a_reason():
    sim = SimulatedAdapter("H100:2")
    sim.mark_unhealthy([1], "ECC errors")
    assert [(d.healthy, d.health_reason) for d in sim.detect()] == [(True, ""),
                                                                   (False, "ECC errors")]


def test_several_simulate_specs_number_devices_consecutively():
    adapters = simulated_adapters(["H100:2", "910B:3"], node="n1")
    assert [a.indices for a in adapters] == [(0, 1), (2, 3, 4)]
    assert [a.family for a in adapters] == ["nvidia", "ascend"]


# -- launch env ------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("910B:8", {"ASCEND_RT_VISIBLE_DEVICES": "2,3", "ASCEND_VISIBLE_DEVICES": "2,3",
                "XINHE_DEVICE": "npu", "XINHE_DIST_BACKEND": "hccl",
                "XINHE_ACCELERATOR_FAMILY": "ascend"}),
    ("MLU370-X8:4", {"MLU_VISIBLE_DEVICES": "2,3", "CAMBRICON_VISIBLE_DEVICES": "2,3",
                     "XINHE_DEVICE": "mlu", "XINHE_DIST_BACKEND": "cncl",
                     "XINHE_ACCELERATOR_FAMILY": "cambricon"}),
    ("H100:8", {"CUDA_VISIBLE_DEVICES": "2,3", "NVIDIA_VISIBLE_DEVICES": "2,3",
                "XINHE_DEVICE": "cuda", "XINHE_DIST_BACKEND": "nccl",
                "XINHE_ACCELERATOR_FAMILY": "nvidia"}),
])
def test_launch_env_per_family(spec, expected):
    env = SimulatedAdapter(spec).launch_env([2, 3])
    assert env == {**expected, "XINHE_VISIBLE_DEVICES": "2,3"}


def test_nvidia_adapter_launch_env_matches_simulated():
    assert (NvidiaAdapter(runner=recorded("")).launch_env([0])
            == SimulatedAdapter("A100:1").launch_env([0]))


def test_cpu_fallback_presents_slots():
    devices = CpuAdapter(slots=3).detect()
    assert [(d.index, d.family, d.model) for d in devices] == [(i, "cpu", "CPU") for i in range(3)]
    assert devices[0].memory_bytes > 0
    assert CpuAdapter().launch_env([0]) == {
        "XINHE_VISIBLE_DEVICES": "0", "XINHE_DEVICE": "cpu", "XINHE_DIST_BACKEND": "gloo",
        "XINHE_ACCELERATOR_FAMILY": "cpu"}
    with pytest.raises(ValueError):
        CpuAdapter(slots=0)


# -- registry ------------------------------------------------------------------
def test_registry_knows_families_by_name():
    assert isinstance(get_adapter("nvidia"), NvidiaAdapter)
    assert get_adapter("CPU", slots=2).slots == 2
    with pytest.raises(KeyError, match="no accelerator adapter for family 'tpu'"):
        get_adapter("tpu")


def test_host_without_accelerators_falls_back_to_cpu(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    adapters = adapters_for_host(cpu_slots=2)
    assert [type(a) for a in adapters] == [CpuAdapter]
    assert len(adapters[0].detect()) == 2


# -- node inventory ------------------------------------------------------------
class FlakyTool:
    """nvidia-smi that answers until told to fail."""

    def __init__(self, output: str) -> None:
        self.output, self.broken = output, False

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        if self.broken:
            raise subprocess.TimeoutExpired(argv, timeout)
        return self.output


def test_inventory_spans_adapters_and_knows_owners():
    adapters = simulated_adapters(["H100:2", "910B:2"], node="n1")
    inventory = NodeInventory(adapters)
    assert [(d.index, d.model) for d in inventory.refresh()] == [
        (0, "H100"), (1, "H100"), (2, "910B"), (3, "910B")]
    assert inventory.owner(3) is adapters[1] and inventory.owner(9) is None


def test_inventory_keeps_devices_of_a_silent_tool_as_unhealthy():
    tool = FlakyTool(H100_NODE)
    inventory = NodeInventory([NvidiaAdapter(runner=tool)])
    before = inventory.refresh()
    tool.broken = True
    after = inventory.refresh(telemetry=True)
    assert [d.index for d in after] == [0, 1] and not any(d.healthy for d in after)
    assert after[0].health_reason == "nvidia device tool did not answer"
    assert health_signature(before) != health_signature(after)
    tool.broken = False
    assert all(d.healthy for d in inventory.refresh(telemetry=True))
