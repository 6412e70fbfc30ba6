"""The manifest checker itself finds what the API server would reject."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.custom_resources import validate_custom
from tests.deploy.k8s_schema import validate

POD = {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                       "resources": {"limits": {"cpu": 1, "nvidia.com/gpu": "8"}}}]}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
    "spec": {"selector": {"matchLabels": {"a": "b"}},
             "template": {"metadata": {"labels": {"a": "b"}}, "spec": POD}},
}


def broken(path: str, value: Any) -> dict[str, Any]:
    """DEPLOYMENT with the dotted ``path`` set to ``value`` (None deletes it)."""
    doc = copy.deepcopy(DEPLOYMENT)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


def test_a_valid_deployment_has_no_errors() -> None:
    assert validate(DEPLOYMENT) == []


@pytest.mark.parametrize(("path", "value", "error"), [
    ("spec.template.spec.containers.0.imagePullPolisy", "Always",
     "containers[0].imagePullPolisy: unknown field of V1Container"),
    ("spec.template.spec.containers.0.name", None, "containers[0]: required field name missing"),
    ("spec.template.spec.containers.0.ports.0.containerPort", "80", "expected int"),
    ("spec.selector.matchLabels.a", True, "matchLabels.a: expected str"),
    ("spec.template.spec.containers.0.args", "serve", "args: expected a list"),
    ("apiVersion", "v1", "v1/Deployment is not a kind the Kubernetes API serves"),
    ("kind", "Deploymnet", "is not a kind the Kubernetes API serves"),
])
def test_schema_errors_are_found_with_their_path(path: str, value: Any, error: str) -> None:
    errors = validate(broken(path, value))
    assert any(error in e for e in errors), errors


def test_custom_resources_are_checked_against_their_crd_fields() -> None:
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "m"},
               "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "x"}]}}
    assert validate_custom(monitor) == []
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    assert validate_custom(monitor) == ["$.spec: required field endpoints missing",
                                        "$.spec.endpoint: unknown field of ServiceMonitor"]
    both = {"alert": "A", "record": "r", "expr": "1"}
    rule = {"kind": "PrometheusRule", "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": [both]}]}}
    assert validate_custom(rule) == [
        "$.spec.groups[0].rules[0]: needs expr and exactly one of alert/record"]
