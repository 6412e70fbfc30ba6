"""The control plane's API front-end processes (``--api-workers N``).

With front ends, the control plane itself listens only on a private Unix
socket (in a fresh 0700 directory) and N ``frontend.py`` processes share
the public port through SO_REUSEPORT: the kernel spreads callers'
connections over them. The port is reserved first by a bound (not
listening) socket of this process, so ``--listen host:0`` works and no
other program takes the port while the front ends start; it is let go once
they all listen. A front end that dies is started again (after a second);
front ends leave by themselves when the control plane dies (they poll their
parent; no pre-exec hook, which is unsafe in a threaded process).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 1.0


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be host:port, got {listen!r}")
    return host, int(port)


def reserve_port(listen: str) -> tuple[socket.socket, int]:
    """A bound SO_REUSEPORT socket on ``listen`` (not listening: it takes no
    connection) and its port."""
    host, port = split_listen(listen)
    bare = host.strip("[]") or None
    family, kind, proto, _, address = socket.getaddrinfo(
        bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock, sock.getsockname()[1]


class FrontEnds:
    """``count`` front ends on ``listen`` for the control plane at
    ``upstream`` (see the module). ``port`` is known at once."""

    def __init__(self, count: int, listen: str, args: list[str]) -> None:
        if count < 1:
            raise ValueError(f"--api-workers must be >= 1 here, got {count}")
        self.count = count
        self._dir = Path(tempfile.mkdtemp(prefix="xinhe-api-"))  # 0700
        self.upstream = f"unix:{self._dir / 'control.sock'}"
        self._reservation, self.port = reserve_port(listen)
        host, _ = split_listen(listen)
        self.listen = f"{host}:{self.port}"
        self._args = args
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0
        # Told (configured, running, restarted) whenever the count changes.
        self.on_change: Callable[[int, int, bool], None] = lambda *_: None

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "controlplane.api.frontend", "--listen", self.listen,
                "--upstream", self.upstream, *self._args]

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        line = _readline(proc, START_TIMEOUT_S)
        if b"listening" not in line:
            proc.kill()
            proc.wait()
            raise OSError(f"API front end did not start (exit {proc.returncode}): "
                          f"{line.decode(errors='replace').strip()}")
        return proc

    def start(self) -> None:
        """Start every front end (raises if one cannot), then let the
        reserved port go and watch them."""
        try:
            for i in range(self.count):
                self._procs[i] = self._spawn()
        except BaseException:
            self.stop()
            raise
        self._reservation.close()
        self._watcher = threading.Thread(target=self._watch, name="api-frontends",
                                         daemon=True)
        self._watcher.start()
        self.on_change(self.count, self.count, False)
        log.info("%d API front ends on %s (control plane at %s)",
                 self.count, self.listen, self.upstream)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self._procs if p is not None and p.poll() is None]

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_DELAY_S):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.warning("API front end %d exited (%s); starting another",
                            proc.pid, proc.returncode)
                self.on_change(self.count, len(self._running()), False)
                if proc.stdout is not None:
                    proc.stdout.close()  # one pipe per front end, not per restart
                try:
                    self._procs[i] = self._spawn()
                except OSError as exc:
                    log.error("%s; trying again", exc)
                    continue
                self.restarts += 1
                self.on_change(self.count, len(self._running()), True)

    def stop(self, grace: float = 3.0) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        running = self._running()
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in self._procs:
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
        self._reservation.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The child's first line of output, b"" if it exits or times out first."""
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else b""
