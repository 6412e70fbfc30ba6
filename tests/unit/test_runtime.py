"""xinhe_runtime: the job-side helper reads what the agent rendered."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xinhe_runtime as xr

RENDERED = {
    "XINHE_JOB_ID": "j-42", "XINHE_JOB_NAME": "sft", "XINHE_ATTEMPT": "3",
    "XINHE_RANK": "2", "XINHE_WORLD_SIZE": "4", "XINHE_LOCAL_RANK": "0",
    "XINHE_MASTER_ADDR": "10.1.2.3", "XINHE_MASTER_PORT": "29400",
    "XINHE_DEVICE": "npu", "XINHE_DIST_BACKEND": "hccl",
    "XINHE_ACCELERATOR_FAMILY": "ascend", "XINHE_ACCELERATOR_MODEL": "910B",
    "XINHE_VISIBLE_DEVICES": "4,5", "XINHE_CHECKPOINT_DIR": "/ckpt/sft",
}
RUNTIME_VARS = (*RENDERED, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in RUNTIME_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_reads_the_rendered_environment(clean_env):
    for name, value in RENDERED.items():
        clean_env.setenv(name, value)
    assert xr.summary() == {
        "job_id": "j-42", "job_name": "sft", "attempt": 3, "rank": 2, "world_size": 4,
        "local_rank": 0, "master_addr": "10.1.2.3", "master_port": 29400,
        "device": "npu", "dist_backend": "hccl", "accelerator_family": "ascend",
        "accelerator_model": "910B", "visible_devices": [4, 5],
        "checkpoint_dir": "/ckpt/sft",
    }
    assert xr.is_distributed()


def test_defaults_outside_xinhe_are_a_single_cpu_process(clean_env):
    assert (xr.device(), xr.dist_backend(), xr.rank(), xr.world_size()) == ("cpu", "gloo", 0, 1)
    assert (xr.local_rank(), xr.master_addr(), xr.master_port()) == (0, "127.0.0.1", 29500)
    assert (xr.job_id(), xr.accelerator_family(), xr.accelerator_model()) == ("", "cpu", "CPU")
    assert xr.checkpoint_dir() is None and xr.visible_devices() == []
    assert not xr.is_distributed() and xr.init_distributed() is False


def test_falls_back_to_pytorch_conventional_names(clean_env):
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("MASTER_PORT", "1234")
    assert (xr.rank(), xr.world_size(), xr.master_port()) == (1, 2, 1234)


def test_garbage_values_fall_back_to_defaults(clean_env):
    clean_env.setenv("XINHE_RANK", "two")
    clean_env.setenv("XINHE_WORLD_SIZE", "0")
    clean_env.setenv("XINHE_VISIBLE_DEVICES", "1,,x,3")
    assert (xr.rank(), xr.world_size(), xr.visible_devices()) == (0, 1, [1, 3])


def test_init_distributed_without_torch_is_false_not_an_error(clean_env):
    clean_env.setenv("XINHE_WORLD_SIZE", "2")
    clean_env.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    clean_env.setitem(sys.modules, "torch.distributed", None)
    assert xr.init_distributed() is False


def test_init_distributed_calls_torch_with_the_rendered_gang(clean_env):
    import types
    calls = []
    dist = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: False,
        init_process_group=lambda **kw: calls.append(kw))
    torch = types.ModuleType("torch")
    torch.distributed = dist  # type: ignore[attr-defined]
    clean_env.setitem(sys.modules, "torch", torch)
    clean_env.setitem(sys.modules, "torch.distributed", dist)
    for name, value in RENDERED.items():
        clean_env.setenv(name, value)
    assert xr.init_distributed() is True
    assert calls == [{"backend": "hccl", "rank": 2, "world_size": 4,
                      "init_method": "tcp://10.1.2.3:29400"}]


def test_imports_nothing_outside_the_stdlib():
    code = ("import sys; before = set(sys.modules); import xinhe_runtime;"
            "new = {m.split('.')[0] for m in set(sys.modules) - before};"
            "bad = new - set(sys.stdlib_module_names) - {'xinhe_runtime'};"
            "print(sorted(bad)); raise SystemExit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_does_not_need_the_agents_package():
    code = "import sys; import xinhe_runtime; sys.exit(1 if 'agents' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
