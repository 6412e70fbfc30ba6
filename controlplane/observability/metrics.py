"""Every Prometheus metric Xinhe exports, defined once: name, type, help, labels.

The control plane's instruments and scrape-time collector, the agent's
exporter, the Grafana dashboards (``deploy/grafana/generate.py``) and the
alert rules all take their names from here, and tests check that every name a
panel or rule uses is defined, so a renamed metric fails a test instead of
silently emptying a panel.

Conventions (https://prometheus.io/docs/practices/naming/): ``xinhe_`` prefix,
base units (seconds, bytes, ratios 0..1), ``_total`` only on counters, help on
every metric, and bounded labels only: pools, regions, families, models,
tenants, nodes and device indices are few; job ids are never labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Source(Enum):
    """Which process exports the metric (and so which scrape job has it)."""

    CONTROL_PLANE = "controlplane"
    AGENT = "agent"


# Queue waits run from milliseconds (idle fleet) to days (a big gang on a busy
# centre); run times from seconds (evaluations) to weeks (pre-training).
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 1800, 3600,
                      7200, 14400, 43200, 86400, 259200, 604800)
RUN_TIME_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400,
                    259200, 604800, 1209600, 2592000)
ROUND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                 5, 10)
PLACEMENT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
               10, 30, 60, 300, 3600)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1, 2.5, 5)

JOB = ("tenant", "family")
# Why a migration started (the bounded ``trigger`` label of xinhe_jobs_migrated_total).
MIGRATION_TRIGGERS = ("request", "policy")
POOL = ("pool", "region", "family")
DEVICE = ("node", "pool", "family", "model", "device")


@dataclass(frozen=True)
class MetricDef:
    """One exported metric. ``name`` is the exposed name (counters end in
    ``_total``); ``buckets`` only for histograms."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    source: Source = Source.CONTROL_PLANE
    buckets: tuple[float, ...] = ()

    @property
    def base_name(self) -> str:
        """The name prometheus_client wants (it appends ``_total`` itself)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name

    def series_names(self) -> tuple[str, ...]:
        """Every series name this metric produces in the exposition format."""
        if self.kind is Kind.HISTOGRAM:
            return tuple(self.name + s for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


def _def(name: str, kind: Kind, help_text: str, labels: tuple[str, ...] = (),
         source: Source = Source.CONTROL_PLANE, buckets: tuple[float, ...] = ()) -> MetricDef:
    return MetricDef(name, kind, help_text, labels, source, buckets)


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
A = Source.AGENT

DEFINITIONS: tuple[MetricDef, ...] = (
    # -- control plane: process -------------------------------------------
    _def("xinhe_controlplane_build_info", G,
         "Always 1; the control plane's version in a label.", ("version",)),
    _def("xinhe_controlplane_ready", G,
         "1 while the control plane serves its API, 0 while starting or shutting down."),
    _def("xinhe_api_frontends", G,
         "API front-end processes of this control plane (--api-workers), by state: "
         "configured or running.", ("state",)),
    _def("xinhe_api_frontend_restarts_total", C,
         "API front ends started again after one exited."),
    # -- jobs (gauges computed at scrape time from the store) ---------------
    _def("xinhe_jobs", G,
         "Jobs not yet finished, by state, tenant and accelerator family (the placed "
         "family, the one requested family, or 'any'). Finished jobs are counted by the "
         "xinhe_jobs_*_total counters.", ("state", *JOB)),
    _def("xinhe_queue_oldest_job_age_seconds", G,
         "Age of each tenant's oldest queued job (since submission).", ("tenant",)),
    _def("xinhe_tenant_accelerators_allocated", G,
         "Accelerators held by each tenant's scheduled and running jobs, by family.", JOB),
    _def("xinhe_tenant_quota_devices", G,
         "Quota use per tenant and quota (the family or model the policy file names): "
         "kind=nominal (the quota), used (devices held by scheduled and running jobs), "
         "borrowed (used beyond nominal). Only tenants with a quota.",
         ("tenant", "family", "kind")),
    # -- jobs (counters, incremented as transitions are committed) ----------
    _def("xinhe_jobs_submitted_total", C, "Jobs accepted (idempotent repeats excluded).",
         ("tenant",)),
    _def("xinhe_jobs_succeeded_total", C, "Jobs that finished with every replica exiting 0.",
         JOB),
    _def("xinhe_jobs_failed_total", C, "Jobs that failed with no retry left.", JOB),
    _def("xinhe_jobs_cancelled_total", C, "Jobs cancelled by a tenant or operator.", JOB),
    _def("xinhe_jobs_retried_total", C,
         "Job attempts requeued after a replica failure or a lost node.", JOB),
    _def("xinhe_jobs_preempted_total", C, "Jobs evicted for higher-priority work.", JOB),
    _def("xinhe_jobs_migrated_total", C,
         "Jobs told to checkpoint and move to other devices, by trigger: request (a "
         "tenant's or operator's migrate call) or policy (the policy file's migration "
         "section). Preemptions are counted by xinhe_jobs_preempted_total.",
         (*JOB, "trigger")),
    _def("xinhe_job_queue_wait_seconds", H,
         "Time from entering the queue (submission or requeue) to placement.", JOB,
         buckets=QUEUE_WAIT_BUCKETS),
    _def("xinhe_job_run_duration_seconds", H,
         "Time from all replicas running (or from placement, for a job that ended "
         "sooner) to the job's end, by final state.",
         ("state", *JOB), buckets=RUN_TIME_BUCKETS),
    # -- scheduler ---------------------------------------------------------
    _def("xinhe_scheduler_round_duration_seconds", H,
         "Wall time of scheduling rounds that had queued jobs (load, decide, apply).",
         buckets=ROUND_BUCKETS),
    _def("xinhe_scheduler_round_placements", H,
         "Jobs placed per scheduling round that had queued jobs.", buckets=PLACEMENT_BUCKETS),
    _def("xinhe_scheduler_placements_total", C, "Jobs placed by the scheduler."),
    # -- fleet (gauges computed at scrape time) -----------------------------
    _def("xinhe_accelerators", G,
         "Accelerators by pool, region, family, model and state; states partition the "
         "total: allocated (held by a job), free, unhealthy, unavailable (healthy but on "
         "a cordoned or disconnected node).", (*POOL, "model", "state")),
    _def("xinhe_accelerator_utilization_ratio", G,
         "Allocated / healthy accelerators per pool and family (0..1).", POOL),
    _def("xinhe_nodes", G, "Nodes by pool, region and status (READY, CORDONED, "
         "DISCONNECTED).", ("pool", "region", "status")),
    _def("xinhe_agents_connected", G, "Agents with a live stream to the control plane."),
    # -- API and store -----------------------------------------------------
    _def("xinhe_grpc_requests_total", C, "Handled gRPC calls, by service, method and status.",
         ("service", "method", "code")),
    _def("xinhe_grpc_request_duration_seconds", H,
         "Handling time of gRPC calls (the whole stream for streaming calls).",
         ("service", "method"), buckets=RPC_BUCKETS),
    _def("xinhe_store_write_duration_seconds", H,
         "Duration of store write transactions (durable on return), by operation.",
         ("operation",), buckets=STORE_BUCKETS),
    _def("xinhe_store_errors_total", C,
         "Store operations that failed (guard conflicts excluded), by operation and error.",
         ("operation", "error")),
    # -- agents ------------------------------------------------------------
    _def("xinhe_agent_build_info", G,
         "Always 1; the agent's version and identity in labels.",
         ("version", "node", "pool", "region"), A),
    _def("xinhe_agent_connected", G, "1 while the agent's stream to the control plane is up.",
         ("node",), A),
    _def("xinhe_agent_replicas_running", G, "Job replicas running on this node.", ("node",), A),
    _def("xinhe_device_utilization_ratio", G, "Device busy ratio (0..1) from the adapter.",
         DEVICE, A),
    _def("xinhe_device_memory_used_bytes", G, "Device memory in use.", DEVICE, A),
    _def("xinhe_device_memory_bytes", G, "Device memory capacity.", DEVICE, A),
    _def("xinhe_device_temperature_celsius", G, "Device temperature.", DEVICE, A),
    _def("xinhe_device_power_watts", G, "Device power draw.", DEVICE, A),
    _def("xinhe_device_healthy", G, "1 when the adapter reports the device healthy, else 0.",
         DEVICE, A),
)

BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}


def get(name: str) -> MetricDef:
    """The definition of ``name``; KeyError naming the metric if undefined."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not defined in "
                       "controlplane/observability/metrics.py") from None


def series_names() -> frozenset[str]:
    """Every series name Xinhe exports, histogram suffixes included."""
    return frozenset(s for d in DEFINITIONS for s in d.series_names())


def of(source: Source) -> tuple[MetricDef, ...]:
    return tuple(d for d in DEFINITIONS if d.source is source)
