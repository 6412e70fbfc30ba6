"""End to end with a real Prometheus: a control plane and two agents as
processes, a workload (successes, a failure with a retry, a cancellation, a
job that has to wait), Prometheus scraping every second; then every PromQL
expression of every dashboard panel and alert rule runs against Prometheus'
HTTP API: each must parse, and each panel must return data."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, xinhe_command
from controlplane.model.states import is_terminal
from controlplane.observability import promlocal
from xinhe.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
J = common_pb2
# What Grafana would put in the template variables: "All" and a rate window
# a few scrape intervals long.
SUBSTITUTE = {"$__rate_interval": "10s", "$pool": ".*", "$family": ".*", "$tenant": ".*"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if promlocal.find_tool("prometheus") is None or promlocal.find_tool("promtool") is None:
        pytest.skip("prometheus/promtool not installed: run bash scripts/tools/prometheus.sh")
    root = tmp_path_factory.mktemp("observed")
    cp_port, prom_port = free_port(), free_port()
    agent_ports = {"n-910b": free_port(), "n-h100": free_port()}
    agents = [AgentSpec("n-910b", "910b", "west", ("910B:4",),
                        ("--metrics-port", str(agent_ports["n-910b"]))),
              AgentSpec("n-h100", "h100", "east", ("H100:2",),
                        ("--metrics-port", str(agent_ports["n-h100"])))]
    # A quota (within which acme's blocker runs: nothing is preempted) so the
    # quota-use panel has data.
    policy = root / "policy.yaml"
    policy.write_text("quotas:\n  acme:\n    ascend: {devices: 4}\n")
    server_args = ["--schedule-interval", "0.2", "--stop-grace", "1", "--heartbeat-interval",
                   "0.5", "--metrics-port", str(cp_port), "--policy", str(policy)]
    config = promlocal.write_config(root / "prometheus.yml", f"127.0.0.1:{cp_port}",
                                    [f"127.0.0.1:{p}" for p in agent_ports.values()])
    with LocalFleet(root, agents, scheduler="inline", server_args=server_args) as fleet:
        prom = promlocal.start_prometheus(config, root / "tsdb", prom_port)
        try:
            yield {"fleet": fleet, "prom": prom, "config": config, "started": time.time(),
                   "metrics_url": f"http://127.0.0.1:{cp_port}/metrics"}
        finally:
            prom.stop()


def spec(name: str, tenant: str, devices: int, family: str, command: list[str],
         retries: int = 0) -> J.JobSpec:
    job = J.JobSpec(name=name, queue=f"{tenant}/default", replicas=1, command=command)
    job.resources.accelerators = devices
    job.resources.families.append(family)
    job.retry.max_attempts = retries + 1
    return job


def train(steps: int) -> list[str]:
    return [sys.executable, "-m", "xinhe_runtime.examples.train", "--steps", str(steps),
            "--step-sleep", "0.1"]


SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
FAIL = [sys.executable, "-c", "import sys; sys.exit(3)"]


def run_workload(stack: dict) -> None:
    prom = stack["prom"]
    with XinheClient(stack["fleet"].address) as client:
        client.wait_ready(60)
        wait_for(lambda: len([n for n in client.nodes()
                              if n.status == J.NODE_STATUS_READY]) == 2, 60, "2 agents")
        blocker = client.submit(spec("blocker", "acme", 4, "ascend", SLEEP))
        waiter = client.submit(spec("waiter", "lab-a", 4, "ascend", train(10)))
        ids = [blocker.id, waiter.id]
        ids += [client.submit(spec(f"short-{i}", ("lab-a", "acme")[i % 2], 1, "nvidia",
                                   train(15))).id for i in range(4)]
        ids.append(client.submit(spec("crash", "uni-b", 1, "nvidia", FAIL, retries=1)).id)
        wait_for(lambda: client.get(blocker.id).state == J.JOB_STATE_RUNNING, 60, "blocker")
        # Let Prometheus see a running blocker and a waiting job before moving on.
        wait_for(lambda: prom.query('xinhe_jobs{state="QUEUED", tenant="lab-a"} > 0')
                 and prom.query('xinhe_tenant_accelerators_allocated{tenant="acme"} > 0'),
                 30, "a queued job and a busy tenant scraped")
        client.cancel(blocker.id)
        finals = wait_for(lambda: (jobs := [client.get(i) for i in ids])
                          and all(is_terminal(j.state) for j in jobs) and jobs, 90, "all jobs")
    by_name = {j.spec.name: j.state for j in finals}
    assert by_name["blocker"] == J.JOB_STATE_CANCELLED
    assert by_name["crash"] == J.JOB_STATE_FAILED
    assert by_name["waiter"] == J.JOB_STATE_SUCCEEDED, by_name


def panel_queries() -> list[tuple[str, str, list[str]]]:
    """(dashboard, panel title, expressions with variables substituted)."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            exprs = []
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in SUBSTITUTE.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"unsubstituted variable in {expr}"
                exprs.append(expr)
            out.append((dash["title"], panel["title"], exprs))
    return out


def empty_panels(prom: promlocal.LocalPrometheus, start: float) -> list[str]:
    """Panels none of whose expressions returned a point over the test so far;
    an invalid expression raises (ValueError with Prometheus' message)."""
    end = time.time()
    empty = []
    for dash, title, exprs in panel_queries():
        if not any(prom.query_range(e, start, end, step=1) for e in exprs):
            empty.append(f"{dash} / {title}")
    return empty


def test_every_panel_and_rule_works_against_a_real_prometheus(stack: dict) -> None:
    prom = stack["prom"]
    run_workload(stack)
    missing: list[str] = []

    def all_panels_have_data() -> bool:
        missing[:] = empty_panels(prom, stack["started"])
        return not missing

    try:
        wait_for(all_panels_have_data, 40, "data in every panel")
    except AssertionError as err:
        raise AssertionError(f"panels without data: {missing}") from err
    rules = [r for g in yaml.safe_load(promlocal.RULES.read_text())["groups"]
             for r in g["rules"]]
    for rule in rules:
        prom.query(rule["expr"])  # raises on an invalid expression
    loaded = wait_for(lambda: [r for g in prom.api("rules")["groups"] for r in g["rules"]
                               if r.get("lastEvaluation", "").startswith("2")
                               and not r["lastEvaluation"].startswith("0001")],
                      30, "rules evaluated")
    assert {r["name"] for r in loaded} == {r["alert"] for r in rules}
    assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]
    targets = prom.api("targets")["activeTargets"]
    assert len(targets) == 3 and all(t["health"] == "up" for t in targets), targets


def test_promtool_accepts_the_generated_config(stack: dict) -> None:
    tool = promlocal.find_tool("promtool")
    result = subprocess.run([str(tool), "check", "config", str(stack["config"])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_xinhe_top_renders_the_live_numbers(stack: dict) -> None:
    result = subprocess.run(xinhe_command("top", "--once", "--metrics", stack["metrics_url"]),
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    for expected in ("910b", "h100", "ascend", "nvidia", "lab-a", "placements/s"):
        assert expected in result.stdout, result.stdout
    assert re.search(r"agents connected\D+2", result.stdout), result.stdout
