"""The node agent: one per node, a client of AgentService.

Life of a connection: Register (inventory plus the replicas still held),
stop what the control plane says is stale, then one Connect stream. The
agent's side of the stream is fed from a single outbound queue by a
generator that also produces the heartbeats; the control plane's side is
read on the connection thread. When anything fails the agent reconnects
with jittered exponential backoff, and its replicas keep running meanwhile.

Restarts: replicas outlive the agent (own process groups, output in
files). A restarted agent re-adopts what its launcher's journal lists
(:meth:`Agent._adopt_journalled`) and reports it in Register like any held
replica; the control plane keeps it (current assignment) or names it in
``RegisterResponse.stop`` (stale epoch, no longer assigned) and it is killed.

Delivery: every ReplicaStatus gets a strictly increasing ``agent_sequence``
and stays in an outbox until an Ack covers it; a new connection resends the
outbox first. Log chunks are numbered by byte offset and held in a
bounded :class:`LogOutbox` until acked, then resent the same way. A
replica is forgotten only once its final status is acknowledged; a bounded
record of finished replicas answers duplicate launches afterwards.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agents.accelerators.base import (
    AcceleratorAdapter,
    DeviceInfo,
    NodeInventory,
    health_signature,
    render_launch_env,
)
from agents.accelerators.cpu import host_memory_bytes
from agents.adopted import AdoptedReplica, spec_of
from agents.checkpoint import Checkpointer
from agents.journal import JournalEntry
from agents.launcher import (
    Launcher,
    OutputCallback,
    ReplicaBackend,
    ReplicaHandle,
    ReplicaPhase,
    ReplicaProcess,
    ReplicaSpec,
    StateCallback,
)
from agents.log_outbox import LogOutbox
from agents.progress import ProgressWatcher, Report
from controlplane.api.tls import ReloadingChannelCredentials, make_channel
from controlplane.client import leader_hint, parse_targets
from controlplane.model.catalogue import Catalogue, default_catalogue
from xinhe.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

try:
    AGENT_VERSION = metadata.version("xinhe-orchestrator")
except metadata.PackageNotFoundError:  # running from a source tree
    AGENT_VERSION = "0.0.0+source"
DEFAULT_HEARTBEAT_SECONDS = 5.0
Key = tuple[str, int, int]
_STREAMS = {"stdout": common_pb2.LOG_STREAM_STDOUT, "stderr": common_pb2.LOG_STREAM_STDERR}


@dataclass(frozen=True)
class AgentConfig:
    """How this agent identifies itself and behaves. Defaults suit one host."""

    server: str = "127.0.0.1:50051"
    node_name: str = field(default_factory=socket.gethostname)
    pool: str = "default"
    region: str = "local"
    address: str = "127.0.0.1"  # where gang peers reach this node
    cost_per_device_hour: float = 0.0  # the pool's price (cost objective); 0 = unknown
    work_dir: Path = Path("xinhe-agent")
    token: str | None = None  # bearer token sent on every call
    tls_ca: str | None = None  # PEM CA of the server certificate: connect over TLS
    tls_cert: str | None = None  # PEM client certificate (mutual TLS), with tls_key
    tls_key: str | None = None
    heartbeat_interval: float | None = None  # None = what Register returns
    stop_grace: float = 10.0  # SIGTERM -> SIGKILL when a stop names no grace
    cpu_millis: int | None = None  # None = all host cores
    memory_bytes: int | None = None  # None = all host memory
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    rpc_timeout: float = 10.0
    finished_memory: int = 1024  # finished replicas remembered after ack
    max_queued_logs: int = 1000  # chunks beyond this backlog wait for the next reconnect
    log_outbox_bytes: int = 16 << 20  # unacked output held; oldest dropped beyond


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _key(ref: agent_pb2.ReplicaRef) -> Key:
    return (ref.job_id, ref.attempt, ref.rank)


def _phase_to_proto(phase: ReplicaPhase) -> int:
    return agent_pb2.ReplicaState.Value("REPLICA_STATE_" + phase.name)


def spec_from_launch(launch: agent_pb2.LaunchReplica) -> ReplicaSpec:
    """The launcher's view of a LaunchReplica."""
    runtime = launch.max_runtime.ToTimedelta().total_seconds()
    return ReplicaSpec(
        job_id=launch.ref.job_id, attempt=launch.ref.attempt, rank=launch.ref.rank,
        command=tuple(launch.command), job_name=launch.job_name, env=dict(launch.env),
        working_dir=launch.working_dir, world_size=launch.world_size or 1,
        master_addr=launch.master_addr, master_port=launch.master_port,
        max_runtime=runtime or None, checkpoint_dir=launch.checkpoint_dir,
        family=launch.family, model=launch.model,
        device_indices=tuple(launch.device_indices), epoch=launch.ref.epoch,
        cpu_millis=launch.cpu_millis, memory_bytes=launch.memory_bytes, image=launch.image)


class Backoff:
    """Delays doubling from ``initial`` to ``maximum``, each drawn uniformly from
    the upper half of its step so that agents cut off together do not all
    come back in the same instant."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return random.uniform(delay / 2, delay)


@dataclass
class _Held:
    """A replica the agent holds: running, or finished and not yet acked."""

    ref: agent_pb2.ReplicaRef
    adapter: AcceleratorAdapter | None
    device_indices: tuple[int, ...]
    process: ReplicaProcess | None = None
    last: agent_pb2.ReplicaStatus | None = None
    final_sequence: int = 0  # sequence of the terminal status, 0 while live


class _Link:
    """One Connect stream: its session, outbound queue and heartbeat clock."""

    def __init__(self, session_id: str, interval: float) -> None:
        self.session_id = session_id
        self.interval = interval
        self.queue: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.call: grpc.Future | None = None

    def close(self) -> None:
        self.queue.put(None)  # ends the request generator
        if self.call is not None:
            self.call.cancel()


def _next_server(err: grpc.RpcError, current: str, targets: list[str]) -> tuple[str, bool]:
    """Where to go after ``err`` from ``current``: (address, followed a
    leader hint). A hint naming another address wins; otherwise the next
    address of ``targets`` (the same one when it is the only one)."""
    hint = leader_hint(err) if err.code() == grpc.StatusCode.UNAVAILABLE else ""
    if hint and hint != current:
        return hint, True
    index = targets.index(current) if current in targets else -1
    return targets[(index + 1) % len(targets)], False


class Agent:
    """Registers the node, runs what it is told, and reports, reconnecting forever.

    Thread model: :meth:`run` (or the thread :meth:`start` makes) owns the
    connection; grpc's own thread pulls the outbound generator; launcher
    threads report replica states. Shared state is guarded by one lock.
    """

    def __init__(self, config: AgentConfig, adapters: Sequence[AcceleratorAdapter],
                 catalogue: Catalogue | None = None,
                 channel: grpc.Channel | None = None,
                 backend: ReplicaBackend | None = None) -> None:
        self.config = config
        self.adapters = list(adapters)
        self.inventory = NodeInventory(self.adapters)
        self.catalogue = catalogue or default_catalogue()
        # The replica backend: local processes unless given another (e.g. pods).
        self.launcher: ReplicaBackend = backend or Launcher(
            config.work_dir, self.catalogue, config.stop_grace)
        self.checkpointer = Checkpointer()
        self.log_outbox = LogOutbox(config.log_outbox_bytes)
        self.progress = ProgressWatcher(self._send_progress)
        self._channel = channel
        self._tls: ReloadingChannelCredentials | None = None  # read at first connection
        self._lock = threading.RLock()
        self._acked = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._accepting = True
        self._sequence = 0
        self._outbox: OrderedDict[int, agent_pb2.ReplicaStatus] = OrderedDict()
        self._replicas: dict[Key, _Held] = {}
        self._finished: OrderedDict[Key, agent_pb2.ReplicaStatus] = OrderedDict()
        self._link: _Link | None = None
        self._inventory_sig: tuple = ()
        self.last_devices: list[DeviceInfo] = []  # latest heartbeat readings (metrics)
        self._thread: threading.Thread | None = None
        self._adopted = False
        self.connected = threading.Event()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Run the connection loop on a background thread."""
        self._thread = threading.Thread(target=self.run, name="xinhe-agent", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Register and stay connected until :meth:`shutdown`. ``server`` may
        list several addresses (the replicas of an HA control plane): a
        failed or refused attempt moves to the leader the refusal names
        (``x-xinhe-leader``), else to the next address; a move to a named
        leader is tried at once, anything else after the backoff."""
        self._adopt_journalled()
        targets = parse_targets(self.config.server)
        channels: dict[str, grpc.Channel] = {}
        current = targets[0]
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        try:
            while not self._stopping.is_set():
                stub = agent_pb2_grpc.AgentServiceStub(self._channel_to(current, channels))
                hinted = False
                try:
                    response = self._register(stub)
                    backoff.reset()
                    self._stream(stub, response)
                except grpc.RpcError as err:
                    if not self._stopping.is_set():
                        log.warning("control plane %s: %s %s", current,
                                    err.code(), err.details())
                    current, hinted = _next_server(err, current, targets)
                if not hinted:
                    self._stopping.wait(backoff.next())
        finally:
            for channel in channels.values():
                channel.close()

    def _adopt_journalled(self) -> None:
        """Once per agent: take back the replicas a previous agent process on
        this node launched (the backend's journal), before registering."""
        recover = getattr(self.launcher, "recover", None)
        if self._adopted or recover is None:
            return
        self._adopted = True
        for entry in recover():
            self._adopt(entry)

    def _adopt(self, entry: JournalEntry) -> None:
        """Hold one journalled replica (see :meth:`adopt`): its output resent
        from where the journal's chunk index says, its end watched."""
        def follow(on_state: StateCallback, on_output: OutputCallback) -> AdoptedReplica:
            handle = AdoptedReplica(entry, on_state, on_output,
                                    runtime_grace=self.config.stop_grace,
                                    replay_bytes=self.config.log_outbox_bytes)
            for stream, offset in handle.log_offsets.items():
                self.log_outbox.seek(*entry.key, _STREAMS[stream], offset)
            handle.start()
            return handle

        if not self.adopt(spec_of(entry), follow):  # type: ignore[arg-type]
            # Nobody could supervise or report it: end it rather than leak it.
            log.warning("journalled replica %s cannot be re-adopted (its devices are not on "
                        "this node): killing it", entry.key)
            AdoptedReplica(entry, lambda *_: None).stop(0.0, "cannot be re-adopted")
            self.launcher.release(entry.key)  # type: ignore[attr-defined]
            return
        log.info("re-adopted replica %s (pid %d, epoch %d) from the journal", entry.key,
                 entry.pid, entry.epoch)
        if entry.progress_file:
            with self._lock:
                ref = self._replicas[entry.key].ref
            self.progress.watch(entry.key, ref, Path(entry.progress_file),
                                entry.checkpoint_dir)

    def _channel_to(self, address: str, channels: dict[str, grpc.Channel]) -> grpc.Channel:
        """The injected channel (tests), else one cached channel per address.
        Called before every (re)connection: rotated TLS files (a consistent
        new set) replace the channels, so the next handshake uses them."""
        if self._channel is not None:
            return self._channel
        if self._tls is None:  # agents/main.py checked the files at start
            self._tls = ReloadingChannelCredentials(self.config.tls_ca, self.config.tls_cert,
                                                    self.config.tls_key)
        elif self._tls.refresh():
            for channel in channels.values():
                channel.close()
            channels.clear()
        if address not in channels:
            channels[address] = make_channel(address, self._tls.credentials,
                                             self._channel_options())
        return channels[address]

    def _channel_options(self) -> list[tuple[str, int]]:
        # grpc's own reconnect backoff grows to 120 s; keep it within ours so
        # a control plane that comes back is found as quickly as we promise.
        initial_ms = max(1, int(self.config.backoff_initial * 1000))
        max_ms = max(initial_ms, int(self.config.backoff_max * 1000))
        # Keepalive pings notice a half-open connection (a control plane that
        # vanished without a FIN) within ~30 s; the server permits this rate.
        return [("grpc.initial_reconnect_backoff_ms", initial_ms),
                ("grpc.min_reconnect_backoff_ms", initial_ms),
                ("grpc.max_reconnect_backoff_ms", max_ms),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1)]

    def shutdown(self, grace: float | None = None, flush_timeout: float = 2.0) -> None:
        """Stop accepting work, stop every replica, report, disconnect."""
        grace = self.config.stop_grace if grace is None else grace
        with self._lock:
            self._accepting = False
            procs = [h.process for h in self._replicas.values() if h.process is not None]
        for proc in procs:
            proc.stop(grace, reason="agent shutting down")
        for proc in procs:
            proc.wait(grace + 5.0)
        with self._acked:
            self._acked.wait_for(lambda: not self._outbox or self._link is None,
                                 timeout=flush_timeout)
            self._stopping.set()
            self.progress.stop()
            link, self._link = self._link, None
        if link is not None:
            link.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # -- connection --------------------------------------------------------
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.config.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _register(self, stub: agent_pb2_grpc.AgentServiceStub) -> agent_pb2.RegisterResponse:
        devices = self.inventory.refresh()
        self._inventory_sig = health_signature(devices)
        with self._lock:
            held = [h.last for h in self._replicas.values() if h.last is not None]
        request = agent_pb2.RegisterRequest(
            protocol_version=agent_pb2.PROTOCOL_VERSION_1, node_name=self.config.node_name,
            pool=self.config.pool, region=self.config.region, address=self.config.address,
            devices=[d.to_proto() for d in devices], cpu_millis=self._cpu_millis(),
            memory_bytes=self.config.memory_bytes or host_memory_bytes(),
            agent_version=AGENT_VERSION, replicas=held,
            cost_per_device_hour=self.config.cost_per_device_hour)
        response = stub.Register(request, metadata=self._metadata(),
                                 timeout=self.config.rpc_timeout)
        log.info("registered %s as session %s (%d devices, %d replicas held)",
                 self.config.node_name, response.session_id, len(devices), len(held))
        for ref in response.stop:
            self._stop(ref, self.config.stop_grace, "control plane: no longer current")
        return response

    def _cpu_millis(self) -> int:
        return self.config.cpu_millis or (os.cpu_count() or 1) * 1000

    def _stream(self, stub: agent_pb2_grpc.AgentServiceStub,
                response: agent_pb2.RegisterResponse) -> None:
        link = _Link(response.session_id, self._heartbeat_interval(response))
        with self._lock:
            if self._stopping.is_set():
                return
            for status in self._outbox.values():  # unacked: deliver again
                link.queue.put(agent_pb2.AgentMessage(status=status))
            for chunk in self.log_outbox.pending():
                link.queue.put(agent_pb2.AgentMessage(logs=chunk))
            self._link = link
        call = stub.Connect(self._outbound(link), metadata=self._metadata())
        link.call = call
        self.connected.set()
        try:
            for message in call:
                self._on_control(message)
            log.warning("control plane ended the stream; reconnecting")
        finally:
            self.connected.clear()
            with self._acked:
                if self._link is link:
                    self._link = None
                self._acked.notify_all()
            link.close()

    def _heartbeat_interval(self, response: agent_pb2.RegisterResponse) -> float:
        if self.config.heartbeat_interval:
            return self.config.heartbeat_interval
        given = response.heartbeat_interval.ToTimedelta().total_seconds()
        return given if given > 0 else DEFAULT_HEARTBEAT_SECONDS

    def _outbound(self, link: _Link) -> Iterator[agent_pb2.AgentMessage]:
        """The request stream: session + heartbeat first, then the queue,
        with a heartbeat whenever ``interval`` passes without one."""
        yield agent_pb2.AgentMessage(session_id=link.session_id, heartbeat=self._heartbeat())
        last_beat = time.monotonic()
        while True:
            wait = link.interval - (time.monotonic() - last_beat)
            if wait <= 0:
                yield from self._beat_messages()
                last_beat = time.monotonic()
                continue
            try:
                message = link.queue.get(timeout=wait)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def _beat_messages(self) -> Iterator[agent_pb2.AgentMessage]:
        heartbeat = self._heartbeat()
        signature = health_signature(heartbeat.devices)
        if signature != self._inventory_sig:
            self._inventory_sig = signature
            yield agent_pb2.AgentMessage(
                inventory=agent_pb2.InventoryUpdate(devices=heartbeat.devices))
        yield agent_pb2.AgentMessage(heartbeat=heartbeat)

    def _heartbeat(self) -> agent_pb2.Heartbeat:
        devices = self.last_devices = self.inventory.refresh(telemetry=True)
        with self._lock:
            running = [h.ref for h in self._replicas.values()
                       if h.process is not None and not h.process.done]
        return agent_pb2.Heartbeat(time=_now(), devices=[d.to_proto() for d in devices],
                                   running=running)

    # -- control messages --------------------------------------------------
    def _on_control(self, message: agent_pb2.ControlMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "launch":
            self._on_launch(message.launch)
        elif kind == "stop":
            stop = message.stop
            grace = (stop.grace.ToTimedelta().total_seconds() if stop.HasField("grace")
                     else self.config.stop_grace)
            self._stop(stop.ref, grace, stop.reason or "stopped by the control plane")
        elif kind == "ack":
            self._on_ack(message.ack.agent_sequence)
            self.log_outbox.ack(list(message.ack.logs))
        elif kind == "checkpoint":
            self._on_checkpoint(message.checkpoint)

    def _on_checkpoint(self, request: agent_pb2.CheckpointReplica) -> None:
        """Checkpoint, then stop, the current replica named (migration)."""
        with self._lock:
            held = self._replicas.get(_key(request.ref))
        if held is None or held.process is None or held.ref.epoch != request.ref.epoch:
            log.info("checkpoint for %s: not running here", _key(request.ref))
            return
        grace = (request.grace.ToTimedelta().total_seconds() if request.HasField("grace")
                 else self.config.stop_grace)
        timeout = request.timeout.ToTimedelta().total_seconds()
        if self.checkpointer.start(held.process, timeout, grace, request.reason):
            log.info("checkpointing %s (timeout %.1fs): %s", _key(request.ref),
                     timeout or self.checkpointer.default_timeout, request.reason)

    def _on_launch(self, launch: agent_pb2.LaunchReplica) -> None:
        """Start a replica once per (job, attempt, rank); re-report duplicates."""
        key = _key(launch.ref)
        with self._lock:
            if not self._accepting:
                log.info("shutting down: launch of %s ignored", key)
                return
            if key in self._replicas or key in self._finished:
                known = self._latest_status(key)
                log.info("duplicate launch of %s: re-reporting its state", key)
                if known is not None:
                    self._emit(known.ref, known.state, known.exit_code, known.message)
                return
            newest = self._newest_epoch(launch.ref.job_id)
            if launch.ref.epoch < newest:
                log.warning("launch of %s with stale epoch %d (< %d) ignored", key,
                            launch.ref.epoch, newest)
                return
            adapter, problem = self._place(launch)
            held = _Held(ref=agent_pb2.ReplicaRef(), adapter=adapter,
                         device_indices=tuple(launch.device_indices))
            held.ref.CopyFrom(launch.ref)
            self._replicas[key] = held
        if problem:
            self._emit(held.ref, agent_pb2.REPLICA_STATE_FAILED, 0, problem)
            return
        device_env = self._device_env(adapter, held.device_indices)
        spec = spec_from_launch(launch)
        progress_file = getattr(self.launcher, "progress_file", None)
        if progress_file is not None:  # backends without one (pods) report none
            self.progress.watch(key, held.ref, progress_file(spec), spec.checkpoint_dir)
        held.process = self.launcher.start(spec, device_env, self._on_state, self._on_output)
        with self._lock:
            late = not self._accepting
        if late:
            held.process.stop(0, reason="agent shutting down")

    def adopt(self, spec: ReplicaSpec,
              follow: Callable[[StateCallback, OutputCallback], ReplicaHandle]) -> bool:
        """Hold a replica that outlived this agent's previous run (a pod the
        Kubernetes executor found still there, a process in this node's
        journal). ``follow(on_state, on_output)``
        attaches a handle that reports its current state at once, so the agent
        registers holding it; the control plane keeps it or says to stop it
        (stale attempt or epoch), as for any agent that reconnects. False when
        the replica is held already or its devices are not on this node."""
        key = spec.key
        self.inventory.refresh()  # before the first registration it is still empty
        with self._lock:
            if key in self._replicas or not self._accepting:
                return False
            owners = {self.inventory.owner(i) for i in spec.device_indices}
            if None in owners or len(owners) > 1:
                return False
            held = _Held(ref=agent_pb2.ReplicaRef(job_id=spec.job_id, attempt=spec.attempt,
                                                  rank=spec.rank, epoch=spec.epoch),
                         adapter=owners.pop() if owners else None,
                         device_indices=tuple(spec.device_indices))
            self._replicas[key] = held
        held.process = follow(self._on_state, self._on_output)  # type: ignore[assignment]
        log.info("adopted replica %s", spec.label)
        return True

    def _place(self, launch: agent_pb2.LaunchReplica) -> tuple[AcceleratorAdapter | None, str]:
        """The adapter owning the launch's devices, or a reason it cannot run."""
        indices = list(launch.device_indices)
        family = launch.family or ("cpu" if not indices else "")
        owners = [self.inventory.owner(i) for i in indices]
        missing = [i for i, owner in zip(indices, owners, strict=True) if owner is None]
        if missing:
            return None, f"devices {missing} are not on node {self.config.node_name}"
        if len({owner.family for owner in owners if owner is not None}) > 1:
            return None, f"devices {indices} span several accelerator families"
        adapter = owners[0] if owners else None
        if adapter is not None and family and adapter.family != family:
            return None, f"devices {indices} are {adapter.family}, not {family}"
        if adapter is None and not self.catalogue.has_family(family or "cpu"):
            return None, f"unknown accelerator family {family!r}"
        return adapter, ""

    def _device_env(self, adapter: AcceleratorAdapter | None,
                    indices: Sequence[int]) -> dict[str, str]:
        # Hide every family on the node first, so a replica sees only its own.
        env: dict[str, str] = {}
        for other in self.adapters:
            env.update({k: "" for k in other.launch_env([], self.catalogue)})
        if adapter is not None:
            env.update(adapter.launch_env(indices, self.catalogue))
        else:
            env.update(render_launch_env(self.catalogue.family("cpu"), indices))
        return env

    def _stop(self, ref: agent_pb2.ReplicaRef, grace: float, reason: str) -> None:
        with self._lock:
            held = self._replicas.get(_key(ref))
        if held is None or held.process is None:
            log.info("stop for %s: not running here", _key(ref))
            return
        log.info("stopping %s (grace %.1fs): %s", _key(ref), grace, reason)
        held.process.stop(grace, reason=reason)

    def _on_ack(self, sequence: int) -> None:
        released: list[Key] = []
        with self._acked:
            for seq in [s for s in self._outbox if s <= sequence]:
                del self._outbox[seq]
            for key, held in list(self._replicas.items()):
                if held.final_sequence and held.final_sequence <= sequence:
                    del self._replicas[key]
                    self._remember(key, held.last)
                    self.log_outbox.forget_replica(*key)
                    released.append(key)
            self._acked.notify_all()
        release = getattr(self.launcher, "release", None)
        for key in released if release is not None else ():
            release(key)  # out of the journal: the control plane has its end

    # -- replica reports -----------------------------------------------------
    def _on_state(self, proc: ReplicaProcess, phase: ReplicaPhase, code: int,
                  message: str) -> None:
        with self._lock:
            held = self._replicas.get(proc.spec.key)
        if held is None:
            return
        if held.adapter is not None and phase is ReplicaPhase.RUNNING:
            held.adapter.mark_busy(held.device_indices)
        elif held.adapter is not None and phase.terminal:
            held.adapter.mark_idle(held.device_indices)
        if phase.terminal:
            self.progress.unwatch(proc.spec.key)  # flushes the last report first
        self._emit(held.ref, _phase_to_proto(phase), code, message)

    def _on_output(self, proc: ReplicaProcess, stream: str, data: bytes) -> None:
        spec = proc.spec
        chunk = self.log_outbox.add(spec.job_id, spec.attempt, spec.rank, _STREAMS[stream],
                                    data, _now())
        with self._lock:
            link = self._link
        if link is not None and link.queue.qsize() < self.config.max_queued_logs:
            link.queue.put(agent_pb2.AgentMessage(logs=chunk))

    def _send_progress(self, ref: agent_pb2.ReplicaRef, report: Report) -> None:
        """Best effort: dropped while disconnected or when the queue is full."""
        progress = agent_pb2.Progress(ref=ref)
        if report.progress:  # else only a checkpoint to report: no step, no time
            progress.step, progress.steps_per_second = report.step, report.steps_per_second
            progress.time.FromNanoseconds(int(report.time * 1e9))
        if report.checkpoint_at is not None:
            progress.last_checkpoint.FromNanoseconds(int(report.checkpoint_at * 1e9))
        message = agent_pb2.AgentMessage(progress=progress)
        with self._lock:
            link = self._link
        if link is not None and link.queue.qsize() < self.config.max_queued_logs:
            link.queue.put(message)

    def _emit(self, ref: agent_pb2.ReplicaRef, state: int, code: int, message: str) -> None:
        """Record a status, keep it until acked, and send it if connected."""
        with self._lock:
            self._sequence += 1
            status = agent_pb2.ReplicaStatus(ref=ref, state=state, exit_code=code,
                                             message=message, time=_now(),
                                             agent_sequence=self._sequence)
            held = self._replicas.get(_key(ref))
            if held is not None:
                held.last = status
                if state not in (agent_pb2.REPLICA_STATE_STARTING,
                                 agent_pb2.REPLICA_STATE_RUNNING):
                    held.final_sequence = self._sequence
            elif _key(ref) in self._finished:
                self._finished[_key(ref)] = status
            self._outbox[self._sequence] = status
            if self._link is not None:
                self._link.queue.put(agent_pb2.AgentMessage(status=status))

    def _latest_status(self, key: Key) -> agent_pb2.ReplicaStatus | None:
        held = self._replicas.get(key)
        if held is not None:
            return held.last
        return self._finished.get(key)

    def _newest_epoch(self, job_id: str) -> int:
        epochs = [h.ref.epoch for k, h in self._replicas.items() if k[0] == job_id]
        epochs += [s.ref.epoch for k, s in self._finished.items() if k[0] == job_id]
        return max(epochs, default=0)

    def _remember(self, key: Key, status: agent_pb2.ReplicaStatus | None) -> None:
        if status is None:
            return
        self._finished[key] = status
        self._finished.move_to_end(key)
        while len(self._finished) > self.config.finished_memory:
            self._finished.popitem(last=False)

    # -- introspection (tests, CLI) ------------------------------------------
    def held_replicas(self) -> dict[Key, agent_pb2.ReplicaStatus | None]:
        """Last status of every replica still held (running or unacked)."""
        with self._lock:
            return {k: h.last for k, h in self._replicas.items()}

