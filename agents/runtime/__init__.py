"""xinhe_runtime: what a job asks instead of hard-coding vendor names.

Job code imports this as ``xinhe_runtime`` (never ``agents``)::

    import torch, xinhe_runtime as xr
    xr.init_distributed()
    model = Model().to(xr.device())

The node agent renders the variables read here for whichever accelerator
family the job landed on (``cuda``/``npu``/``mlu``..., ``nccl``/``hccl``/
``cncl``...), so the same code runs on all of them. Outside Xinhe every
function falls back to a single-process CPU run. Standard library only at
import time; torch is imported lazily and only if present.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "accelerator_family", "accelerator_model", "attempt", "checkpoint_dir", "device",
    "dist_backend", "init_distributed", "is_distributed", "job_id", "job_name",
    "local_rank", "master_addr", "master_port", "rank", "summary", "visible_devices",
    "world_size",
]


def _text(name: str, default: str = "") -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    try:
        return int(_text(name, str(default)))
    except ValueError:
        return default


def device() -> str:
    """PyTorch device type of the assigned accelerators ("cuda", "npu", ...)."""
    return _text("XINHE_DEVICE", "cpu")


def dist_backend() -> str:
    """Collective backend for torch.distributed ("nccl", "hccl", ...)."""
    return _text("XINHE_DIST_BACKEND", "gloo")


def rank() -> int:
    """This replica's rank in the gang (0-based)."""
    return _int("XINHE_RANK", _int("RANK", 0))


def world_size() -> int:
    """Number of replicas in the gang."""
    return max(1, _int("XINHE_WORLD_SIZE", _int("WORLD_SIZE", 1)))


def local_rank() -> int:
    """Rank of this process on its node (one process per replica: 0)."""
    return _int("XINHE_LOCAL_RANK", _int("LOCAL_RANK", 0))


def master_addr() -> str:
    """Address rank 0 listens on for the gang's rendezvous."""
    return _text("XINHE_MASTER_ADDR", _text("MASTER_ADDR", "127.0.0.1"))


def master_port() -> int:
    """Port rank 0 listens on for the gang's rendezvous."""
    return _int("XINHE_MASTER_PORT", _int("MASTER_PORT", 29500))


def job_id() -> str:
    return _text("XINHE_JOB_ID")


def job_name() -> str:
    return _text("XINHE_JOB_NAME")


def attempt() -> int:
    """Run attempt, from 1; grows on retry, preemption and migration."""
    return _int("XINHE_ATTEMPT", 1)


def accelerator_family() -> str:
    """Catalogue family of the assigned devices ("nvidia", "ascend", ...)."""
    return _text("XINHE_ACCELERATOR_FAMILY", "cpu")


def accelerator_model() -> str:
    """Catalogue model of the assigned devices ("H100", "910B", ...)."""
    return _text("XINHE_ACCELERATOR_MODEL", "CPU")


def checkpoint_dir() -> str | None:
    """Where to write and resume checkpoints, or None when the job has none."""
    return _text("XINHE_CHECKPOINT_DIR") or None


def visible_devices() -> list[int]:
    """Indices of the devices assigned to this replica (as the node numbers them).

    Inside the process the framework renumbers them from 0, so use
    ``f"{device()}:{i}"`` with ``i`` in ``range(len(visible_devices()))``.
    """
    return [int(part) for part in _text("XINHE_VISIBLE_DEVICES").split(",")
            if part.strip().isdigit()]


def is_distributed() -> bool:
    """True when the job runs as a gang of more than one replica."""
    return world_size() > 1


def init_distributed() -> bool:
    """Join the gang's process group; True when one was initialised.

    Returns False without error for a single replica, when torch is not
    installed, or when the group is already initialised.
    """
    if not is_distributed():
        return False
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    if not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(
        backend=dist_backend(), rank=rank(), world_size=world_size(),
        init_method=f"tcp://{master_addr()}:{master_port()}")
    return True


def summary() -> dict[str, Any]:
    """Everything above, for a job to print at start-up."""
    return {
        "job_id": job_id(), "job_name": job_name(), "attempt": attempt(),
        "rank": rank(), "world_size": world_size(), "local_rank": local_rank(),
        "master_addr": master_addr(), "master_port": master_port(),
        "device": device(), "dist_backend": dist_backend(),
        "accelerator_family": accelerator_family(),
        "accelerator_model": accelerator_model(),
        "visible_devices": visible_devices(), "checkpoint_dir": checkpoint_dir(),
    }
