"""Leader election on a Kubernetes Lease (``coordination.k8s.io/v1``), for
replicas running in a cluster; the store is PostgreSQL as for every
replicated control plane.

The protocol is the one client-go's leaderelection package follows:

* a follower reads the Lease every ``retry_s``; when it has no holder, or it
  has not been written (its ``resourceVersion``) for ``lease_s`` *as this
  replica observed it* (local monotonic clock, so clock skew between nodes
  does not matter), it takes the Lease by a replace carrying the
  ``resourceVersion`` it read: of two contenders the API server accepts one
  and answers the other 409 Conflict;
* the leader renews every ``retry_s`` and steps down when it could not renew
  for ``renew_deadline_s`` (< ``lease_s``), before a follower can take over;
* a leader that stops releases the Lease (empty holder), so a follower takes
  over at its next read instead of after ``lease_s``.

Time-based election alone can let a leader that was paused (GC, a frozen
VM) act after its Lease passed on. Writes are therefore fenced as with the
PostgreSQL elector: once it holds the Lease, a replica raises the store's
leader term (``begin_term``) and fences its store to it before serving, so
the deposed leader's job-state writes fail inside their own transaction.

The leader's advertised address rides on the Lease as the annotation
``xinhe.io/leader-address``: followers point callers to it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from controlplane.services.leader import PollingElector

log = logging.getLogger(__name__)

ADDRESS_ANNOTATION = "xinhe.io/leader-address"
LEASE_S = 8.0  # a crashed leader is replaced within about this (+ one retry)
RENEW_DEADLINE_S = 5.0


class LeaseApi(Protocol):
    """The ``CoordinationV1Api`` methods used (the official client's)."""

    def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> Any: ...

    def create_namespaced_lease(self, namespace: str, body: Any, **kwargs: Any) -> Any: ...

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any,
                                 **kwargs: Any) -> Any: ...


def _status(exc: Exception) -> int | None:
    """The HTTP status of a client ApiException; None for other errors."""
    return getattr(exc, "status", None) if type(exc).__name__ == "ApiException" else None


class LeaseElector(PollingElector):
    """Leads while holding the Lease ``namespace/name`` (see the module)."""

    thread_name = "leader-lease"

    def __init__(self, api: LeaseApi, namespace: str, name: str, identity: str,
                 address: str, begin_term: Callable[[], int | None], *,
                 lease_s: float = LEASE_S, renew_deadline_s: float = RENEW_DEADLINE_S,
                 retry_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        if not 0 < retry_s < renew_deadline_s < lease_s:
            raise ValueError("need 0 < retry_s < renew_deadline_s < lease_s, got "
                             f"{retry_s}, {renew_deadline_s}, {lease_s}")
        super().__init__(address, retry_s)
        self.api, self.namespace, self.name = api, namespace, name
        self.identity = identity
        self.begin_term = begin_term
        self.lease_s, self.renew_deadline_s, self.retry_s = lease_s, renew_deadline_s, retry_s
        self.monotonic, self.now = monotonic, now
        self._renewed_at = 0.0  # monotonic time of the last successful renewal
        self._observed: tuple[str, Any] | None = None  # (holder, version) last seen
        self._observed_at = 0.0

    def stop(self) -> None:
        """Stop campaigning; a leader releases the Lease and steps down."""
        self._halt()
        if self._leading:
            self._release()
            self._depose("stopping")

    def poll(self) -> None:
        """One step: renew while leading, else read and maybe take the Lease."""
        if self._leading:
            self._renew()
        else:
            self._campaign()

    def _renew(self) -> None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                self._depose(f"the Lease is held by {lease.spec.holder_identity!r}")
                return
            lease.spec.renew_time = self.now()
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            self._renewed_at = self.monotonic()
        except Exception as exc:  # API errors, timeouts: retried until the deadline
            late = self.monotonic() - self._renewed_at
            log.warning("leader election: could not renew the Lease (%s); %.1fs since the "
                        "last renewal", exc, late)
            if late >= self.renew_deadline_s:
                self._depose(f"could not renew the Lease for {late:.1f}s")

    def _campaign(self) -> None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except Exception as exc:
            if _status(exc) != 404:
                log.warning("leader election: cannot read the Lease: %s", exc)
                return
            self._create()
            return
        spec = lease.spec
        holder = spec.holder_identity or ""
        # Any write (a renewal, a new holder) changes the resourceVersion.
        record = (holder, lease.metadata.resource_version)
        if record != self._observed:  # the holder renewed (or changed): alive
            self._observed, self._observed_at = record, self.monotonic()
        annotations = lease.metadata.annotations or {}
        self._leader = annotations.get(ADDRESS_ANNOTATION, "") if holder else ""
        expired = self.monotonic() - self._observed_at >= (spec.lease_duration_seconds
                                                            or self.lease_s)
        if holder and holder != self.identity and not expired:
            return
        self._take(lease)

    def _create(self) -> None:
        from kubernetes.client import V1Lease, V1ObjectMeta

        body = V1Lease(metadata=V1ObjectMeta(name=self.name, namespace=self.namespace,
                                             annotations={ADDRESS_ANNOTATION: self.address}),
                       spec=self._spec(transitions=0))
        try:
            self.api.create_namespaced_lease(self.namespace, body)
        except Exception as exc:
            if _status(exc) != 409:  # 409: another replica created it first
                log.warning("leader election: cannot create the Lease: %s", exc)
            return
        self._elected()

    def _take(self, lease: Any) -> None:
        transitions = (lease.spec.lease_transitions or 0) + (
            0 if lease.spec.holder_identity == self.identity else 1)
        lease.spec = self._spec(transitions)
        lease.metadata.annotations = {**(lease.metadata.annotations or {}),
                                      ADDRESS_ANNOTATION: self.address}
        try:  # carries the resourceVersion read: 409 if anyone wrote since
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:
            if _status(exc) != 409:
                log.warning("leader election: cannot take the Lease: %s", exc)
            return
        self._elected()

    def _spec(self, transitions: int) -> Any:
        from kubernetes.client import V1LeaseSpec

        now = self.now()
        return V1LeaseSpec(holder_identity=self.identity,
                           lease_duration_seconds=max(1, round(self.lease_s)),
                           acquire_time=now, renew_time=now, lease_transitions=transitions)

    def _elected(self) -> None:
        self._renewed_at = self.monotonic()
        try:
            self.term = self.begin_term()
        except Exception as exc:  # no fencing term, no leadership
            log.warning("leader election: holding the Lease but cannot raise the store's "
                        "leader term (%s): releasing it", exc)
            self._release()
            return
        self._leading = True
        log.info("elected leader through Lease %s/%s for term %s (advertising %s)",
                 self.namespace, self.name, self.term, self.address)
        self._on_elected()

    def _release(self) -> None:
        """Hand the Lease back (empty holder): followers need not wait it out."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.renew_time = self.now()
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:
            log.warning("leader election: could not release the Lease (%s); it expires "
                        "in %.0fs", exc, self.lease_s)

