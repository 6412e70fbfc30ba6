"""Run the real ``helm`` on the chart and parse what it renders.

helm comes from .tools/bin/helm (scripts/tools/helm.sh, run by ``make test``)
or PATH. A render is cached per (values files, --set, API versions), so every
test module shares one ``helm template`` run per case.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "xinhe"
EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
# The optional CRDs the chart renders objects for when the cluster has them.
CRD_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "ray.io/v1/RayCluster",
)
RELEASE, NAMESPACE = "xh", "xinhe"


def helm_binary() -> str:
    """The helm binary; a clear failure when it was never installed."""
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm not found in .tools/bin or PATH: run `bash scripts/tools/helm.sh`")
    return found


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """Run ``helm <args> <chart>`` (not checked: callers read rc and stderr)."""
    return subprocess.run([helm_binary(), *args, str(chart)], capture_output=True,
                          text=True, timeout=60, check=False)


def value_args(values: tuple[str, ...] = (), sets: tuple[str, ...] = (),
               api_versions: tuple[str, ...] = ()) -> list[str]:
    args = [f"--values={CHART / v}" for v in values]
    args += [f"--set={s}" for s in sets]
    args += [f"--api-versions={a}" for a in api_versions]
    return args


@functools.cache
def render(values: tuple[str, ...] = (), sets: tuple[str, ...] = (),
           api_versions: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """Every manifest ``helm template`` renders, parsed; fails the test on a
    helm error."""
    result = helm("template", RELEASE, "--namespace", NAMESPACE,
                  *value_args(values, sets, api_versions))
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}")
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


# name -> (values files relative to the chart, --set, API versions). Each
# example renders with the optional CRDs present; the default also without.
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), (), ()),
    "default-with-crds": ((), (), CRD_APIS),
    **{p.stem: ((str(p.relative_to(CHART)),), (), CRD_APIS) for p in EXAMPLES},
    "every-family": ((), tuple(f"agents.families.{f}.enabled=true" for f in (
        "nvidia", "ascend", "cambricon", "hygon", "kunlunxin", "amd")), CRD_APIS),
    "executor-pod-network": ((), (
        "agents.kubernetesExecutor.enabled=true", "agents.hostNetwork=false",
        "agents.families.ascend.enabled=true", "agents.families.ascend.deviceAccess=hostDevices",
        "agents.families.nvidia.enabled=true", "agents.families.nvidia.simulate[0]=H100:8",
        "tls.enabled=true", "tls.cert=CERT", "tls.key=KEY"), CRD_APIS),
}


def render_case(name: str) -> tuple[dict[str, Any], ...]:
    return render(*CASES[name])


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers of a workload's pod template."""
    return doc["spec"]["template"]["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping) of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
