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

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "accelerator_family", "accelerator_model", "attempt", "checkpoint_dir",
    "checkpoint_done", "device", "dist_backend", "init_distributed", "is_distributed",
    "job_id", "job_name", "local_rank", "mark_checkpoint", "master_addr", "master_port",
    "on_checkpoint", "rank", "report_progress", "resume_path", "save_checkpoint",
    "should_checkpoint", "summary", "visible_devices", "world_size",
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


# -- checkpoints and progress -----------------------------------------------------------
# The protocol between a job and its agent, all inside checkpoint_dir():
#   <dir>/<name>                     a complete checkpoint (file or directory)
#   <dir>/LATEST                     the name of the newest complete one, replaced
#                                    atomically, so a crash never leaves it pointing
#                                    at half a checkpoint
#   <dir>/.xinhe-checkpoint-request  the agent asks for a checkpoint (it may also
#                                    send SIGUSR1)
#   <dir>/.xinhe-checkpoint-done     the job's answer: JSON {name, time, pid, rank, attempt}
LATEST_FILE = "LATEST"
REQUEST_FILE = ".xinhe-checkpoint-request"
DONE_FILE = ".xinhe-checkpoint-done"
PROGRESS_ENV = "XINHE_PROGRESS_FILE"

# Set from the SIGUSR1 handler: a plain assignment, safe at any bytecode boundary.
# "answered" is set by checkpoint_done(): under Xinhe an attempt is asked for one
# checkpoint and then stopped, so later requests in the same attempt are echoes of
# that one (a gang sibling's agent writing the file again, a signal landing late).
_signal_state = {"requested": False, "answered": False}


def _checkpoint_root() -> Path:
    directory = checkpoint_dir()
    if directory is None:
        raise RuntimeError("no checkpoint directory: XINHE_CHECKPOINT_DIR is not set "
                           "(give the job spec a checkpoint.dir)")
    return Path(directory)


def _check_name(name: object) -> str:
    """A checkpoint name: one path component, not hidden, not a protocol file."""
    if (not isinstance(name, str) or not name.strip() or name in (".", "..", LATEST_FILE)
            or name.startswith(".") or "/" in name or os.sep in name):
        raise ValueError(f"bad checkpoint name {name!r}: use one plain file or directory "
                         f"name inside the checkpoint directory, e.g. 'step-000100'")
    return name


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new content, never half."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(staging, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(staging, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def resume_path() -> str | None:
    """The newest complete checkpoint (``<dir>/<name in LATEST>``), or None.

    None when the job has no checkpoint directory, nothing was marked yet,
    or the marked checkpoint is gone: start from scratch then.
    """
    directory = checkpoint_dir()
    if directory is None:
        return None
    try:
        name = (Path(directory) / LATEST_FILE).read_text(encoding="utf-8").strip()
        path = Path(directory) / _check_name(name)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return str(path) if path.exists() else None


def mark_checkpoint(name: str) -> str:
    """Record ``<dir>/<name>``, already completely written, as the one to resume from.

    Write the checkpoint first (and flush it), then mark it: LATEST is
    replaced atomically. Returns the checkpoint's path.
    """
    path = _checkpoint_root() / _check_name(name)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: write it, then mark it")
    _atomic_write(path.parent / LATEST_FILE, name + "\n")
    return str(path)


def save_checkpoint(name_or_writer: str | Callable[[str], object],
                    name: str | None = None) -> str:
    """Save a checkpoint the crash-safe way and mark it; returns its path.

    * ``save_checkpoint("step-100")``: the job already wrote ``<dir>/step-100``;
      this only marks it (:func:`mark_checkpoint`).
    * ``save_checkpoint(writer, name="step-100")``: ``writer(path)`` writes a
      file or directory at a staging path; it is renamed to ``<dir>/<name>``
      only once ``writer`` returns, then marked. A directory name must be new
      (a file of the same name is replaced atomically). ``name`` defaults to
      ``ckpt-<nanoseconds>``, which sorts by time.
    """
    if isinstance(name_or_writer, str):
        return mark_checkpoint(name_or_writer)
    if not callable(name_or_writer):
        raise TypeError("save_checkpoint() takes a checkpoint name or a writer(path) callable")
    root = _checkpoint_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / _check_name(name or f"ckpt-{time.time_ns()}")
    if final.is_dir():
        raise FileExistsError(f"checkpoint directory {final} already exists: use a new name")
    staging = root / f".staging-{final.name}-{os.getpid()}"
    _remove(staging)
    try:
        name_or_writer(str(staging))
        if not staging.exists():
            raise RuntimeError(f"the checkpoint writer did not create {staging}")
        if staging.is_file():
            with open(staging, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(staging, final)
    finally:
        _remove(staging)
    return mark_checkpoint(final.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def should_checkpoint() -> bool:
    """True when a checkpoint was asked for: SIGUSR1 received, or the request file exists.

    Poll it between steps; after checkpointing call :func:`checkpoint_done`.
    Under Xinhe (``XINHE_ATTEMPT`` set) a run attempt answers one request:
    the agent stops the attempt after it, and every agent of a gang asks the
    shared directory, so a repeat in the same attempt is the same request.
    """
    if _signal_state["answered"] and "XINHE_ATTEMPT" in os.environ:
        return False
    if _signal_state["requested"]:
        return True
    directory = checkpoint_dir()
    return directory is not None and (Path(directory) / REQUEST_FILE).exists()


def _note_request(signum: int, frame: FrameType | None) -> None:
    _signal_state["requested"] = True


def on_checkpoint(callback: Callable[[], object]) -> Any:
    """Call ``callback()`` when SIGUSR1 asks for a checkpoint; returns the old handler.

    The previous handler still runs first (handlers chain), and
    :func:`should_checkpoint` turns true as well. Python runs signal handlers
    in the main thread between bytecodes, so the callback may do real work,
    but the usual pattern is to let it set a flag the training loop reads.
    Must be called from the main thread.
    """
    if not callable(callback):
        raise TypeError("on_checkpoint() needs a callable")
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None:  # no SIGUSR1 (Windows): the request file still works
        return None
    previous = signal.getsignal(usr1)

    def handler(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        _signal_state["requested"] = True
        callback()

    try:
        signal.signal(usr1, handler)
    except ValueError as err:
        raise RuntimeError("on_checkpoint() must be called from the main thread") from err
    return previous


def checkpoint_done(name: str | None = None) -> str:
    """Tell the agent the requested checkpoint is complete; returns the marker's path.

    Clears the request (signal flag and request file) and writes
    ``.xinhe-checkpoint-done`` atomically with the checkpoint's name
    (default: the one LATEST names).
    """
    root = _checkpoint_root()
    _signal_state["requested"] = False
    _signal_state["answered"] = True
    (root / REQUEST_FILE).unlink(missing_ok=True)
    if name is None:
        latest = resume_path()
        name = Path(latest).name if latest else ""
    record = {"name": name, "time": time.time(), "pid": os.getpid(), "rank": rank(),
              "attempt": attempt()}
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(root / DONE_FILE, json.dumps(record) + "\n")
    return str(root / DONE_FILE)


def report_progress(step: int, steps_per_second: float) -> bool:
    """Append ``{"step", "steps_per_second", ...}`` to ``$XINHE_PROGRESS_FILE``.

    The agent forwards these lines so the scheduler learns this job's real
    speed on this chip. A no-op (False) outside Xinhe; never raises: a
    progress report must not be able to kill a training run (a bad value
    or an unwritable file only warns).
    """
    path = _text(PROGRESS_ENV)
    if not path:
        return False
    try:
        speed = float(steps_per_second)
        if int(step) < 0 or not math.isfinite(speed) or speed < 0:
            raise ValueError(f"step {step!r} and steps_per_second {steps_per_second!r} "
                             f"must be finite and non-negative")
        line = json.dumps({"time": round(time.time(), 3), "step": int(step),
                           "steps_per_second": speed, "job_id": job_id(), "rank": rank(),
                           "attempt": attempt()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))  # one write: lines never interleave
        finally:
            os.close(fd)
        return True
    except Exception as err:  # by contract; suppress too: warnings may be set to raise
        with contextlib.suppress(Exception):
            warnings.warn(f"xinhe_runtime.report_progress: {err}", RuntimeWarning, stacklevel=2)
        return False


def _install_request_handler() -> None:
    """Catch SIGUSR1 (whose default action kills) as a checkpoint request.

    Done at import so a job that only polls :func:`should_checkpoint` is not
    killed by the agent's request; a handler the job installed itself is
    left alone.
    """
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(usr1) in (signal.SIG_DFL, None):
            signal.signal(usr1, _note_request)


_install_request_handler()
