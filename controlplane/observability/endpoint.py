"""A Prometheus registry served as ``/metrics`` on its own port.

Shared by the control plane's and the agents' exporters; it imports nothing
of the control plane so an agent can use it alone.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

log = logging.getLogger(__name__)


class MetricsEndpoint:
    """Nothing listens until :meth:`serve`; :meth:`close` stops listening."""

    def __init__(self, registry: CollectorRegistry, what: str = "metrics") -> None:
        self.registry = registry
        self.what = what
        self._server: WSGIServer | None = None
        self.url = ""  # http://host:port/metrics once serving

    def serve(self, host: str, port: int) -> int:
        """Serve on host:port (0 picks a free port); returns the bound port."""
        host = host.strip("[]")  # an IPv6 listen address arrives bracketed
        disable_created_metrics()  # `_created` series only clutter the 0.0.4 text format
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve {self.what} on {host}:{port}: {exc}") from exc
        bound = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"
        log.info("%s on %s", self.what, self.url)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
