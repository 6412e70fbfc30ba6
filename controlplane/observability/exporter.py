"""Everything the control plane needs to be observable, in one object the
server assembles: the instruments, the store wrapper, the gRPC interceptor,
the scrape-time collector and the ``/metrics`` HTTP endpoint on its own port.
"""

from __future__ import annotations

import logging

from controlplane.observability.collector import FleetCollector
from controlplane.observability.endpoint import MetricsEndpoint
from controlplane.observability.grpc_metrics import MetricsInterceptor
from controlplane.observability.instruments import ControlPlaneMetrics, RoundLike
from controlplane.observability.store import InstrumentedStore
from controlplane.services.context import Context
from controlplane.store.base import Store
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)


class MetricsExporter:
    """One control plane's metrics. Nothing listens until :meth:`serve`."""

    def __init__(self) -> None:
        self.metrics = ControlPlaneMetrics()
        self.registry = self.metrics.registry
        self.endpoint = MetricsEndpoint(self.registry)

    def wrap_store(self, store: Store) -> Store:
        return InstrumentedStore(store, self.metrics)

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self.metrics)

    def watch(self, ctx: Context) -> None:
        """Compute the fleet and queue gauges from ``ctx`` at each scrape."""
        self.registry.register(FleetCollector(ctx))

    def round_finished(self, result: RoundLike) -> None:
        self.metrics.round_finished(result)

    def set_ready(self, ready: bool) -> None:
        self.metrics.set_ready(ready)

    def frontends(self, configured: int, running: int, restarted: bool = False) -> None:
        self.metrics.frontends(configured, running, restarted)

    def job_migrated(self, job: common_pb2.Job, trigger: str) -> None:
        self.metrics.job_migrated(job, trigger)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on host:port (0 picks a free port); returns the port."""
        return self.endpoint.serve(host, port)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def close(self) -> None:
        self.endpoint.close()
