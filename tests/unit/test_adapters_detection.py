"""The adapter contract for every family: real tool runs, failures, registry, launch env.

Vendor tools cannot run here, so the "real subprocess" tests put stand-in
executables on PATH that print the recorded output of the real tool; the
adapters then run them through their default runners, exactly as on a host.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import (
    NodeInventory,
    adapters_for_host,
    get_adapter,
    registered_families,
)
from controlplane.model.catalogue import default_catalogue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "accelerators"
FAMILIES = ["ascend", "cambricon", "hygon", "kunlunxin", "iluvatar", "mthreads", "metax", "amd"]
HEALTHY = {
    "ascend": ("npu-smi", "npu-smi-info-910b3-8.txt", 8),
    "cambricon": ("cnmon", "cnmon-info-mlu370-x8-4.json", 4),
    "hygon": ("hy-smi", "hy-smi-k100-ai-8.json", 8),
    "kunlunxin": ("xpu-smi", "xpu-smi-m-p800-8.txt", 8),
    "iluvatar": ("ixsmi", "ixsmi-query-bi-v150-4.txt", 4),
    "mthreads": ("mthreads-gmi", "mthreads-gmi-q-s4000-4.txt", 4),
    "metax": ("mx-smi", "mx-smi-c550-4.txt", 4),
    "amd": ("rocm-smi", "rocm-smi-mi300x-8.json", 8),
}


def fake_tool(bin_dir: Path, tool: str, body: str) -> None:
    """An executable ``tool`` in ``bin_dir`` running the Python ``body``."""
    path = bin_dir / tool
    path.write_text(f"#!{sys.executable}\nimport sys, os, time\n{body}\n")
    path.chmod(0o755)


def replay(bin_dir: Path, family: str) -> None:
    """Install a stand-in for ``family``'s tool that prints its recorded output.

    cnmon writes its report to cnmon_info.json in the working directory
    instead of stdout, so its stand-in does the same.
    """
    tool, name, _ = HEALTHY[family]
    fixture = FIXTURES / family / name
    if tool == "cnmon":
        body = (f"open('cnmon_info.json', 'w').write(open({str(fixture)!r}).read())\n"
                "print('Write cnmon_info.json succeed')")
    else:
        body = f"sys.stdout.write(open({str(fixture)!r}).read())"
    fake_tool(bin_dir, tool, body)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """A PATH holding only the stand-in tools a test installs."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


# -- the real subprocess path -------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_default_runner_reads_the_installed_tool(family, bin_dir, tmp_path, monkeypatch):
    replay(bin_dir, family)
    monkeypatch.chdir(tmp_path)
    devices = get_adapter(family).detect()
    assert len(devices) == HEALTHY[family][2]
    assert {d.family for d in devices} == {family} and all(d.healthy for d in devices)
    assert not (tmp_path / "cnmon_info.json").exists(), "cnmon runs in a private directory"


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_tool_means_no_devices_quietly(family, bin_dir, caplog):
    with caplog.at_level(logging.WARNING):
        assert get_adapter(family).detect() == []
    assert caplog.text == ""


@pytest.mark.parametrize("family", FAMILIES)
def test_failing_tool_means_no_devices_with_a_warning(family, bin_dir, caplog):
    tool = HEALTHY[family][0]
    fake_tool(bin_dir, tool, "print('dcmi module initialize failed. ret is -8005')\n"
                             "sys.exit(3)")
    if family == "hygon":  # its fallback fails the same way
        fake_tool(bin_dir, "rocm-smi", "sys.stderr.write('ERROR: no driver\\n'); sys.exit(2)")
    assert get_adapter(family).detect() == []
    assert f"{tool} failed (exit 3)" in caplog.text and "initialize failed" in caplog.text


def test_hanging_tool_is_abandoned_after_its_timeout(bin_dir, caplog):
    fake_tool(bin_dir, "npu-smi", "time.sleep(30)")
    assert get_adapter("ascend", timeout=0.5).detect() == []
    assert "npu-smi did not answer within" in caplog.text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("error", [
    FileNotFoundError("tool"), PermissionError("denied"),
    subprocess.TimeoutExpired(["tool"], 10), subprocess.CalledProcessError(1, ["tool"]),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
])
def test_injected_runner_errors_never_escape(family, error):
    def runner(argv: Sequence[str], timeout: float) -> str:
        raise error

    assert get_adapter(family, runner=runner).detect() == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("junk", ["", "\n\n", "No devices were found\n", "{}", "[1, 2]"])
def test_empty_or_junk_output_means_no_devices(family, junk):
    assert get_adapter(family, runner=lambda argv, timeout: junk).detect() == []


# -- host detection and the registry ------------------------------------------------------
def test_host_probe_finds_every_family_whose_tool_answers(bin_dir):
    for family in ("ascend", "metax"):
        replay(bin_dir, family)
    adapters = adapters_for_host(cpu_slots=2)
    assert [a.family for a in adapters] == ["ascend", "metax"]
    inventory = NodeInventory(adapters[:1])
    assert len(inventory.refresh()) == 8


def test_every_catalogue_family_has_an_auto_detected_adapter_using_its_tool():
    catalogue = default_catalogue()
    assert set(registered_families()) >= set(catalogue.families)
    for name, profile in catalogue.families.items():
        adapter = get_adapter(name) if name != "cpu" else None
        if isinstance(adapter, ToolAdapter):
            assert type(adapter).auto_detect
            assert adapter.command[0] == profile.query_tool, name


def test_inventory_keeps_devices_of_a_silent_tool_as_unhealthy():
    answers = {"ok": (FIXTURES / "cambricon" / "cnmon-info-mlu370-x8-4.json").read_text()}

    def runner(argv: Sequence[str], timeout: float) -> str:
        if "ok" not in answers:
            raise subprocess.TimeoutExpired(argv, timeout)
        return answers["ok"]

    inventory = NodeInventory([get_adapter("cambricon", runner=runner)])
    assert all(d.healthy for d in inventory.refresh())
    answers.clear()
    after = inventory.refresh(telemetry=True)
    assert len(after) == 4 and not any(d.healthy for d in after)
    assert after[0].health_reason == "cambricon device tool did not answer"


# -- launch environment ----------------------------------------------------------------------
@pytest.mark.parametrize("family, expected", [
    ("ascend", {"ASCEND_RT_VISIBLE_DEVICES": "1,3", "ASCEND_VISIBLE_DEVICES": "1,3",
                "XINHE_DEVICE": "npu", "XINHE_DIST_BACKEND": "hccl"}),
    ("cambricon", {"MLU_VISIBLE_DEVICES": "1,3", "CAMBRICON_VISIBLE_DEVICES": "1,3",
                   "XINHE_DEVICE": "mlu", "XINHE_DIST_BACKEND": "cncl"}),
    ("hygon", {"HIP_VISIBLE_DEVICES": "1,3", "HYGON_VISIBLE_DEVICES": "1,3",
               "XINHE_DEVICE": "cuda", "XINHE_DIST_BACKEND": "nccl"}),
    ("kunlunxin", {"XPU_VISIBLE_DEVICES": "1,3", "XINHE_DEVICE": "cuda",
                   "XINHE_DIST_BACKEND": "bkcl"}),
    ("iluvatar", {"CUDA_VISIBLE_DEVICES": "1,3", "IX_VISIBLE_DEVICES": "1,3",
                  "XINHE_DEVICE": "cuda", "XINHE_DIST_BACKEND": "nccl"}),
    ("mthreads", {"MUSA_VISIBLE_DEVICES": "1,3", "MTHREADS_VISIBLE_DEVICES": "1,3",
                  "XINHE_DEVICE": "musa", "XINHE_DIST_BACKEND": "mccl"}),
    ("metax", {"CUDA_VISIBLE_DEVICES": "1,3", "MACA_VISIBLE_DEVICES": "1,3",
               "XINHE_DEVICE": "cuda", "XINHE_DIST_BACKEND": "nccl"}),
    ("amd", {"HIP_VISIBLE_DEVICES": "1,3", "ROCR_VISIBLE_DEVICES": "1,3",
             "AMD_VISIBLE_DEVICES": "1,3", "XINHE_DEVICE": "cuda", "XINHE_DIST_BACKEND": "nccl"}),
])
def test_launch_env_per_family(family, expected):
    env = get_adapter(family).launch_env([1, 3])
    assert env == {**expected, "XINHE_VISIBLE_DEVICES": "1,3", "XINHE_ACCELERATOR_FAMILY": family}
    assert not any(value for name, value in env.items()
                   if name.endswith("VISIBLE_DEVICES") and value != "1,3")


def test_launch_env_with_no_devices_hides_them_all():
    env = get_adapter("ascend").launch_env([])
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "" and env["XINHE_VISIBLE_DEVICES"] == ""
