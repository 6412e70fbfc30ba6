"""Replicas as pods: the Kubernetes implementation of the agent's replica backend.

:class:`KubernetesCluster` is shared by every per-node agent of one executor
(the API client, the node cache, one pod monitor, the gang Services);
:meth:`KubernetesCluster.backend_for` gives each agent a
:class:`NodeBackend` whose ``start`` creates a pod pinned to its node and
returns a :class:`PodReplica`, a handle with the same members and the same
callback order as a local :class:`~agents.launcher.ReplicaProcess`:
STARTING, RUNNING, then exactly one of SUCCEEDED / FAILED / STOPPED, the
final state only after the container log has been drained.

The API object is the official client's ``CoreV1Api`` (or anything with the
same methods: tests feed recorded API objects through a fake). Only these
calls are made: ``list_node``, ``list_namespaced_pod``,
``create_namespaced_pod``, ``delete_namespaced_pod``,
``read_namespaced_pod_log``, ``create_namespaced_service``,
``delete_namespaced_service``, and ``connect_get_namespaced_pod_exec``
(through ``kubernetes.stream.stream``) for checkpoint requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from agents.checkpoint import CheckpointOutcome
from agents.kubernetes.checkpoint import request_in_pod
from agents.kubernetes.inventory import KubernetesNodeAdapter, NodeAccelerators, NodeCache
from agents.kubernetes.podexec import ExecResult, StreamFn, default_stream, run_in_pod
from agents.kubernetes.pods import (
    ANNOTATION_REPLICA,
    CONTAINER,
    ManifestError,
    PodSettings,
    build_pod,
    build_service,
    gang_name,
    owner_selector,
    replica_record,
)
from agents.kubernetes.watch import (
    EXIT_COULD_NOT_START,
    PodMonitor,
    container_ran,
    pod_state,
)
from agents.launcher import (
    CHUNK_BYTES,
    READER_JOIN_SECONDS,
    OutputCallback,
    ReplicaPhase,
    ReplicaSpec,
    StateCallback,
)
from controlplane.model.catalogue import Catalogue

log = logging.getLogger(__name__)


def api_status(err: BaseException) -> int | None:
    """The HTTP status of a client ``ApiException`` (None for other errors)."""
    status = getattr(err, "status", None)
    return status if isinstance(status, int) else None


def api_reason(err: BaseException) -> str:
    status = api_status(err)
    if status is None:
        return str(err)
    return f"HTTP {status} {getattr(err, 'reason', '') or ''}".strip()


class KubernetesCluster:
    """What the per-node agents of one executor share."""

    def __init__(self, api: Any, settings: PodSettings, catalogue: Catalogue | None = None,
                 node_ttl: float = 10.0, poll_interval: float = 1.0,
                 stream: StreamFn | None = None) -> None:
        self.api = api
        self.settings = settings
        self._stream = stream
        self.nodes = NodeCache(api.list_node, catalogue, ttl=node_ttl)
        self.monitor = PodMonitor(self._list_pods, poll_interval)
        self.node_watch: Any = None  # a NodeWatch once the executor watches nodes
        self._lock = threading.Lock()
        self._gangs: dict[str, int] = {}

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def _list_pods(self) -> Any:
        return self.api.list_namespaced_pod(self.namespace,
                                            label_selector=owner_selector(self.settings))

    def list_pods(self) -> list[Any]:
        """This executor's pods (by its owner labels), as the API lists them."""
        return list(self._list_pods().items)

    def delete_pod(self, name: str) -> None:
        """Delete a pod now; one already gone is fine."""
        try:
            self.api.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        except Exception as err:
            if api_status(err) != 404:
                raise

    def close(self) -> None:
        """Stop the pod monitor and the node watch (the agents are stopped apart)."""
        self.monitor.close()
        if self.node_watch is not None:
            self.node_watch.stop()

    def exec(self, pod: str, argv: Sequence[str], timeout: float) -> ExecResult:
        """Run ``argv`` in the replica container of ``pod`` (``kubectl exec``)."""
        if self._stream is None:
            self._stream = default_stream()
        return run_in_pod(self.api, self._stream, pod, self.namespace, CONTAINER, argv,
                          timeout)

    def backend_for(self, node: str,
                    adapters: Sequence[KubernetesNodeAdapter]) -> NodeBackend:
        return NodeBackend(self, node, adapters)

    # -- gang Services: created by the first replica here, deleted with the last --
    def adopt_gang(self, spec: ReplicaSpec) -> None:
        """Count an adopted replica as holding its gang's (existing) Service."""
        with self._lock:
            self._gangs[gang_name(spec)] = self._gangs.get(gang_name(spec), 0) + 1

    def acquire_gang(self, spec: ReplicaSpec) -> None:
        """Ensure the gang's headless Service exists (idempotent across agents)."""
        name = gang_name(spec)
        with self._lock:
            first = self._gangs.get(name, 0) == 0
            self._gangs[name] = self._gangs.get(name, 0) + 1
        if not first:
            return
        try:
            self.api.create_namespaced_service(self.namespace,
                                               body=build_service(spec, self.namespace))
        except Exception as err:
            if api_status(err) != 409:  # 409: it exists (an earlier executor made it)
                self.release_gang(spec)
                raise

    def release_gang(self, spec: ReplicaSpec) -> None:
        name = gang_name(spec)
        with self._lock:
            left = self._gangs.get(name, 0) - 1
            if left > 0:
                self._gangs[name] = left
                return
            self._gangs.pop(name, None)
        try:
            self.api.delete_namespaced_service(name, self.namespace)
        except Exception as err:
            if api_status(err) != 404:
                log.warning("deleting service %s failed: %s", name, api_reason(err))


class NodeBackend:
    """Starts replicas as pods on one Kubernetes node (one agent's backend)."""

    def __init__(self, cluster: KubernetesCluster, node: str,
                 adapters: Sequence[KubernetesNodeAdapter]) -> None:
        self.cluster = cluster
        self.node = node
        self.adapters = list(adapters)

    def _accelerators(self, indices: Sequence[int]) -> NodeAccelerators | None:
        for adapter in self.adapters:
            acc = adapter.current()
            span = range(adapter.first_index, adapter.first_index + (acc.capacity if acc else 0))
            if acc is not None and indices and all(i in span for i in indices):
                return acc
        return None

    def start(self, spec: ReplicaSpec, device_env: Mapping[str, str],
              on_state: StateCallback, on_output: OutputCallback | None = None) -> PodReplica:
        """Create the replica's pod; states and log chunks arrive through the callbacks."""
        acc = self._accelerators(spec.device_indices)
        manifest: dict[str, Any] | None = None
        problem = ""
        if spec.device_indices and acc is None:
            problem = f"devices {list(spec.device_indices)} are not one resource of {self.node}"
        else:
            try:
                manifest = build_pod(spec, device_env, acc, self.cluster.settings)
                manifest["metadata"]["annotations"][ANNOTATION_REPLICA] = replica_record(
                    spec, self.node)
            except ManifestError as err:
                problem = str(err)
        replica = PodReplica(spec, manifest, self.cluster, on_state, on_output)
        replica.launch(problem)
        return replica

    def adopt(self, spec: ReplicaSpec, pod: Any, on_state: StateCallback,
              on_output: OutputCallback | None = None) -> PodReplica:
        """Follow an existing pod of this node (see :meth:`PodReplica.adopt`)."""
        replica = PodReplica(spec, {"metadata": {"name": pod.metadata.name}}, self.cluster,
                             on_state, on_output)
        replica.adopt(pod)
        return replica


class PodReplica:
    """One replica's pod: the handle the agent holds (see ``ReplicaHandle``)."""

    def __init__(self, spec: ReplicaSpec, manifest: dict[str, Any] | None,
                 cluster: KubernetesCluster, on_state: StateCallback,
                 on_output: OutputCallback | None) -> None:
        self.spec = spec
        self.manifest = manifest
        self.name = manifest["metadata"]["name"] if manifest else ""
        self.phase: ReplicaPhase | None = None
        self.returncode: int | None = None
        self._cluster = cluster
        self._on_state = on_state
        self._on_output = on_output
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stop_reason: str | None = None
        self._gang_held = False
        self._logs: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def launch(self, problem: str = "") -> None:
        """Report STARTING and create the pod (and the gang Service); a pod that
        cannot be created ends FAILED with exit 127, like a missing command."""
        self._report(ReplicaPhase.STARTING, 0, "")
        if problem or self.manifest is None:
            self._finish(ReplicaPhase.FAILED, EXIT_COULD_NOT_START, problem or "no manifest")
            return
        api, namespace = self._cluster.api, self._cluster.namespace
        try:
            self._cluster.acquire_gang(self.spec)
            self._gang_held = True
            api.create_namespaced_pod(namespace, body=self.manifest)
        except Exception as err:
            log.warning("replica %s: creating pod failed: %s", self.spec.label, err)
            self._finish(ReplicaPhase.FAILED, EXIT_COULD_NOT_START,
                         f"could not create pod {self.name}: {api_reason(err)}")
            return
        log.info("replica %s: pod %s/%s created", self.spec.label, namespace, self.name)
        self._cluster.monitor.add(self)

    def adopt(self, pod: Any) -> None:
        """Take over ``pod``, created by an earlier run of this executor: report
        the state it shows now (the agent registers holding it), then follow it
        like a pod created here. Its log is read again from the start; the
        control plane drops chunks at offsets it already stored."""
        self._cluster.adopt_gang(self.spec)
        self._gang_held = True
        state = pod_state(pod)
        if state is not None and state[0].terminal:
            self.observe(pod)  # ended while no executor watched: report how
        elif state is not None and state[0] is ReplicaPhase.RUNNING:
            self._report(ReplicaPhase.RUNNING, 0, "adopted after an executor restart")
            self._follow_logs()
        else:
            self._report(ReplicaPhase.STARTING, 0, state[2] if state else "")
        if not self.done:
            self._cluster.monitor.add(self)

    def observe(self, pod: Any | None) -> None:
        """Advance the replica from what its pod shows (None: the pod is gone)."""
        if self.done:
            return
        if pod is None:
            reason = self._stop_reason
            self._finish(ReplicaPhase.STOPPED if reason else ReplicaPhase.FAILED, 0,
                         reason or f"pod {self.name} was deleted outside Xinhe")
            return
        state = pod_state(pod)
        if state is None:
            return
        phase, code, message = state
        if phase is ReplicaPhase.RUNNING or (phase.terminal and container_ran(pod)):
            self._follow_logs()
            if self.phase is ReplicaPhase.STARTING:
                self._report(ReplicaPhase.RUNNING, 0, "")
        if phase.terminal:
            if self._stop_reason is not None:
                phase, message = ReplicaPhase.STOPPED, self._stop_reason
            self._finish(phase, code, message)

    def stop(self, grace: float = 10.0, reason: str = "") -> None:
        """Delete the pod with ``grace`` seconds of termination grace. Non-blocking;
        the replica ends STOPPED once the pod is gone or has ended."""
        with self._lock:
            if self.done:
                return
            if self._stop_reason is None:
                self._stop_reason = reason or "stopped on request"
        self._delete_pod(grace)

    def send_signal(self, sig: int) -> None:
        """``kill -<sig> 1`` in the container (needs exec rights and a ``kill``
        in the image); best effort, failures are logged."""
        try:
            result = self.exec(["kill", f"-{int(sig)}", "1"], 15.0)
            problem = "" if result.ok else (result.error or result.stderr.strip())
        except Exception as err:
            problem = api_reason(err)
        if problem:
            log.warning("replica %s: signal %d not delivered to pod %s: %s",
                        self.spec.label, sig, self.name, problem)

    def exec(self, argv: Sequence[str], timeout: float) -> ExecResult:
        return self._cluster.exec(self.name, argv, timeout)

    def checkpoint(self, timeout: float) -> CheckpointOutcome:
        """The checkpoint protocol through exec in the pod (see
        :mod:`agents.kubernetes.checkpoint`); the caller stops the pod after."""
        if self.manifest is None or self.done:
            return CheckpointOutcome(False, "the pod is not running", 0.0)
        return request_in_pod(self.exec, self.spec.checkpoint_dir, self.spec.attempt,
                              lambda: self.done, timeout)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- internals ---------------------------------------------------------
    def _delete_pod(self, grace: float) -> None:
        try:
            self._cluster.api.delete_namespaced_pod(
                self.name, self._cluster.namespace, grace_period_seconds=max(0, int(grace)))
        except Exception as err:
            if api_status(err) != 404:
                log.warning("replica %s: deleting pod %s failed: %s", self.spec.label,
                            self.name, api_reason(err))

    def _follow_logs(self) -> None:
        if self._logs is not None or self._on_output is None:
            return
        self._logs = threading.Thread(target=self._pump_logs, daemon=True,
                                      name=f"replica-{self.spec.label}-logs")
        self._logs.start()

    def _pump_logs(self) -> None:
        """Follow the container log; Kubernetes merges stdout and stderr."""
        try:
            stream = self._cluster.api.read_namespaced_pod_log(
                self.name, self._cluster.namespace, container=CONTAINER, follow=True,
                _preload_content=False)
        except Exception as err:
            log.warning("replica %s: reading logs failed: %s", self.spec.label, api_reason(err))
            return
        try:
            for chunk in stream.stream(CHUNK_BYTES):
                if chunk and self._on_output is not None:
                    self._on_output(self, "stdout", chunk)  # type: ignore[arg-type]
        except Exception as err:
            log.warning("replica %s: log stream ended: %s", self.spec.label, err)
        finally:
            stream.release_conn()

    def _finish(self, phase: ReplicaPhase, code: int, message: str) -> None:
        if self._logs is not None:
            self._logs.join(READER_JOIN_SECONDS)
        self.returncode = code
        self._report(phase, code, message)
        self._done.set()
        if self.manifest is not None and self._gang_held:
            self._delete_pod(0)  # a finished pod holds nothing, but clutters the namespace
            self._cluster.release_gang(self.spec)
            self._gang_held = False

    def _report(self, phase: ReplicaPhase, code: int, message: str) -> None:
        self.phase = phase
        try:
            self._on_state(self, phase, code, message)  # type: ignore[arg-type]
        except Exception:
            log.exception("state callback failed for %s", self.spec.label)
