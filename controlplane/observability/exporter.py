"""Everything the control plane needs to be observable, in one object the
server assembles: the instruments, the store wrapper, the gRPC interceptor,
the scrape-time collector and the ``/metrics`` HTTP endpoint on its own port.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import disable_created_metrics, start_http_server

from controlplane.observability.collector import FleetCollector
from controlplane.observability.grpc_metrics import MetricsInterceptor
from controlplane.observability.instruments import ControlPlaneMetrics, RoundLike
from controlplane.observability.store import InstrumentedStore
from controlplane.services.context import Context
from controlplane.store.base import Store

log = logging.getLogger(__name__)


class MetricsExporter:
    """One control plane's metrics. Nothing listens until :meth:`serve`."""

    def __init__(self) -> None:
        self.metrics = ControlPlaneMetrics()
        self.registry = self.metrics.registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""  # http://host:port/metrics once serving

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

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on host:port (0 picks a free port); returns the port."""
        host = host.strip("[]")  # an IPv6 listen address arrives bracketed
        disable_created_metrics()  # `_created` series only clutter the 0.0.4 text format
        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        bound = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"
        log.info("metrics on %s", self.url)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
