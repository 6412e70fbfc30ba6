"""Run a control plane and node agents as real local processes.

Used by ``xinhe demo`` and by the integration tests, so both exercise the
same separate-process setup a real installation has. Every process gets its
own process group; ``stop()`` ends the whole group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"xinhe server listening on (\S+)")


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path
    _tail: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group; SIGKILL what is left after ``grace``."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.signal(signal.SIGKILL)  # stragglers in the group, if any
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the whole group at once (crash tests)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def xinhe_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "controlplane.cli.main", *args]


def _spawn(name: str, argv: Sequence[str], log_path: Path,
           env: dict[str, str] | None = None) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    # Local processes share this installation: jobs that run `python3 -m ...`
    # find the same interpreter (and xinhe_runtime) the fleet runs on.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full_env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=full_env)
    out.close()
    return ManagedProcess(name, proc, log_path)


def start_server(data_dir: Path, *, listen: str = "127.0.0.1:0", scheduler: str = "inline",
                 extra: Sequence[str] = (), log_dir: Path | None = None,
                 timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> tuple[ManagedProcess, str]:
    """Start ``xinhe server``; return it and the address it listens on."""
    log_path = (log_dir or data_dir) / "server.log"
    if log_path.exists():
        log_path.rename(log_path.with_suffix(f".{int(time.time() * 1000)}.log"))
    argv = xinhe_command("--log-level", "INFO", "server", "--listen", listen,
                         "--data-dir", str(data_dir), "--scheduler", scheduler, *extra)
    proc = _spawn("server", argv, log_path, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(proc.log_text())
        if match:
            return proc, match.group(1)
        if not proc.alive():
            raise RuntimeError("xinhe server exited:\n" + proc.log_text()[-4000:])
        time.sleep(0.05)
    proc.stop()
    raise TimeoutError("xinhe server did not start:\n" + proc.log_text()[-4000:])


@dataclass(frozen=True)
class AgentSpec:
    node: str
    pool: str
    region: str
    simulate: tuple[str, ...] = ()  # ("910B:8",); empty = real detection
    extra: tuple[str, ...] = ()


def start_agent(server: str, spec: AgentSpec, work_root: Path,
                log_dir: Path | None = None) -> ManagedProcess:
    argv = xinhe_command("--log-level", "INFO", "agent", "--server", server, "--node", spec.node,
                         "--pool", spec.pool, "--region", spec.region,
                         "--work-dir", str(work_root / spec.node), *spec.extra)
    for sim in spec.simulate:
        argv += ["--simulate", sim]
    return _spawn(f"agent-{spec.node}", argv, (log_dir or work_root) / f"agent-{spec.node}.log")


class LocalFleet:
    """A control plane plus agents; a context manager that always cleans up."""

    def __init__(self, root: Path, agents: Sequence[AgentSpec], scheduler: str = "inline",
                 server_args: Sequence[str] = (),
                 server_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.agent_specs = list(agents)
        self.scheduler = scheduler
        self.server_args = list(server_args)
        self.server_env = dict(server_env or {})  # XINHE_* settings of the server
        self.server: ManagedProcess | None = None
        self.address = ""
        self.agents: dict[str, ManagedProcess] = {}
        self._lock = threading.Lock()

    def start(self, timeout: float = 90.0) -> LocalFleet:
        self.start_server(timeout=timeout)
        for spec in self.agent_specs:
            self.agents[spec.node] = start_agent(self.address, spec, self.root / "agents",
                                                 self.root / "logs")
        return self

    def start_server(self, timeout: float = 90.0, listen: str | None = None) -> None:
        self.server, self.address = start_server(
            self.root / "data", listen=listen or (self.address or "127.0.0.1:0"),
            scheduler=self.scheduler, extra=self.server_args, log_dir=self.root / "logs",
            timeout=timeout, env=self.server_env)

    def stop(self) -> None:
        procs = list(self.agents.values()) + ([self.server] if self.server else [])
        for p in procs:
            if p.alive():
                p.signal(signal.SIGTERM)
        for p in procs:
            p.stop(grace=10.0)

    def __enter__(self) -> LocalFleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.stop()
