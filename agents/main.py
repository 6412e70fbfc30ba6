"""``xinhe agent``: run the node agent on this host.

Examples::

    xinhe agent --server cp.example:50051 --pool h100-east
    xinhe agent --simulate 910B:8 --node sim-ascend-0 --pool ascend-sim
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from agents.accelerators.base import AcceleratorAdapter, adapters_for_host
from agents.accelerators.simulated import simulated_adapters
from agents.agent import Agent, AgentConfig
from controlplane.api.tls import TLSError, channel_credentials

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``xinhe agent``."""
    parser.add_argument("--server", default=os.environ.get("XINHE_SERVER", "127.0.0.1:50051"),
                        help="control plane host:port, or a comma-separated list of the "
                             "replicas of an HA control plane (env XINHE_SERVER)")
    parser.add_argument("--token", default=os.environ.get("XINHE_TOKEN"),
                        help="bearer token for the control plane (env XINHE_TOKEN)")
    parser.add_argument("--tls-ca", default=os.environ.get("XINHE_TLS_CA") or None,
                        help="PEM CA that signed the control plane's certificate: connect "
                             "over TLS (env XINHE_TLS_CA)")
    parser.add_argument("--tls-cert", default=os.environ.get("XINHE_TLS_CERT") or None,
                        help="PEM client certificate for mutual TLS (env XINHE_TLS_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("XINHE_TLS_KEY") or None,
                        help="PEM private key of --tls-cert (env XINHE_TLS_KEY)")
    parser.add_argument("--node", default=socket.gethostname(),
                        help="node name, unique in the control plane (default: host name)")
    parser.add_argument("--pool", default="default", help="pool this node belongs to")
    parser.add_argument("--region", default="local", help="region of this node")
    parser.add_argument("--cost-per-device-hour", type=_price, default=0.0, metavar="PRICE",
                        help="price of one device-hour in this pool (any currency, one per "
                             "control plane) for the cost objective; 0 = unknown")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address gang peers reach this node on")
    parser.add_argument("--simulate", action="append", default=[], metavar="MODEL:COUNT",
                        help="present simulated devices instead of real ones, e.g. 910B:8 "
                             "(repeatable)")
    parser.add_argument("--simulated-count", type=int, default=0, metavar="N",
                        help="host N simulated agents in this process (nodes <node>-0000 ...), "
                             "each with the --simulate devices; replicas run no process "
                             "(soaks, load tests)")
    parser.add_argument("--simulated-seconds", type=float, default=0.0,
                        help="how long a simulated replica runs when its job's env sets no "
                             "XINHE_SIMULATED_SECONDS")
    parser.add_argument("--cpu-slots", type=int, default=1,
                        help="CPU devices to present when no accelerator is found")
    parser.add_argument("--work-dir", default=None,
                        help="where replicas run (default ./xinhe-agent/<node>)")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help="seconds between heartbeats (default: the control plane's)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus /metrics on this port of --address (0 = off)")
    parser.add_argument("--stop-grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping replicas")
    executor = parser.add_argument_group("Kubernetes executor (--executor kubernetes)")
    executor.add_argument("--executor", choices=["process", "kubernetes"], default="process",
                          help="run replicas as local processes (default) or as pods of "
                               "the cluster this agent manages")
    executor.add_argument("--namespace", default=os.environ.get("XINHE_NAMESPACE", "default"),
                          help="namespace of the job pods (env XINHE_NAMESPACE)")
    executor.add_argument("--kubeconfig", default=None,
                          help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                               "then the in-cluster service account)")
    executor.add_argument("--default-image", "--image", dest="image",
                          default=os.environ.get("XINHE_JOB_IMAGE"),
                          help="container image of job pods whose spec names none (env "
                               "XINHE_JOB_IMAGE); a job sets `image` in its spec or variant")
    executor.add_argument("--family-image", action="append", default=[],
                          metavar="FAMILY=IMAGE", help="image for one family (repeatable)")
    executor.add_argument("--pod-service-account", default=None,
                          help="service account of job pods (default: the namespace's)")
    # SUPPRESS: `xinhe --log-level X agent` must not be overridden by a default here.
    parser.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default INFO)")


def _price(text: str) -> float:
    """--cost-per-device-hour: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def build_adapters(args: argparse.Namespace) -> list[AcceleratorAdapter]:
    """Simulated devices when asked for, else what the host has (CPU fallback)."""
    if args.simulate:
        return list(simulated_adapters(args.simulate, node=args.node))
    return adapters_for_host(cpu_slots=args.cpu_slots)


def build_config(args: argparse.Namespace) -> AgentConfig:
    work_dir = Path(args.work_dir) if args.work_dir else Path("xinhe-agent") / args.node
    return AgentConfig(
        server=args.server, node_name=args.node, pool=args.pool, region=args.region,
        address=args.address, work_dir=work_dir, token=args.token or None,
        cost_per_device_hour=args.cost_per_device_hour,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        heartbeat_interval=args.heartbeat_interval, stop_grace=args.stop_grace)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; then stop every replica and exit 0."""
    level = str(getattr(args, "log_level", None) or "INFO").upper()
    logging.basicConfig(level=level,  # a no-op when the xinhe CLI configured logging
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if args.executor == "kubernetes":
        return _run_kubernetes(args)
    if args.simulated_count:
        return _run_simulated_fleet(args)
    try:
        adapters = build_adapters(args)
    except ValueError as err:
        log.error("%s", err)
        return 2
    config = build_config(args)
    try:  # bad TLS files stop the agent now, not on every reconnect
        channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
    except TLSError as err:
        log.error("%s", err)
        return 2
    config.work_dir.mkdir(parents=True, exist_ok=True)
    agent = Agent(config, adapters)
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    devices = sum(len(a.detect()) for a in adapters)
    log.info("agent %s: %d devices (%s), control plane %s", config.node_name, devices,
             ", ".join(sorted({a.family for a in adapters})), config.server)
    if args.metrics_port:
        from agents.metrics import AgentMetricsServer

        AgentMetricsServer(agent).serve(config.address, args.metrics_port)
    agent.start()
    stop_requested.wait()
    agent.shutdown()
    return 0


def _wait_for_signal() -> None:
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stop_requested.wait()


def _run_simulated_fleet(args: argparse.Namespace) -> int:
    """``--simulated-count N``: N simulated agents in this one process."""
    from agents.sim_fleet import SimulatedFleet

    try:
        fleet = SimulatedFleet(build_config(args), args.simulate, args.simulated_count,
                               args.simulated_seconds)
    except (ValueError, TLSError) as err:
        log.error("%s", err)
        return 2
    fleet.start()
    log.info("%d simulated agents (%s), control plane %s", len(fleet.agents),
             ", ".join(args.simulate), args.server)
    _wait_for_signal()
    fleet.shutdown()
    return 0


def _run_kubernetes(args: argparse.Namespace) -> int:
    """One agent per accelerator node of the cluster, replicas as pods."""
    from agents.kubernetes.run import start_executor  # needs the optional client

    config = build_config(args)
    try:
        _cluster, fleet = start_executor(args, config)
    except (ValueError, RuntimeError) as err:
        log.error("%s", err)
        return 2
    if args.metrics_port:
        log.warning("--metrics-port is not served by the Kubernetes executor yet")
    _wait_for_signal()
    fleet.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xinhe agent", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
