"""Checks of the custom resources the chart renders when their CRDs exist
(Prometheus operator, KubeRay). Their schemas are not in the Kubernetes
client, so this checks what the operators require and what they would reject:
the fields below are those of the operators' CRDs (monitoring.coreos.com/v1,
ray.io/v1), and embedded pod templates and label selectors are checked with
the Kubernetes models.
"""

from __future__ import annotations

from typing import Any

from tests.deploy.k8s_schema import check

# kind -> (required spec fields, known spec fields) from the CRDs.
SPEC_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "ServiceMonitor": ({"selector", "endpoints"}, {
        "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
        "podTargetLabels", "sampleLimit", "attachMetadata"}),
    "PodMonitor": ({"selector"}, {
        "selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
        "podTargetLabels", "sampleLimit", "attachMetadata"}),
    "PrometheusRule": ({"groups"}, {"groups"}),
    "RayCluster": ({"headGroupSpec"}, {
        "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
        "workerGroupSpecs", "headServiceAnnotations", "suspend"}),
}
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                   "honorLabels", "relabelings", "metricRelabelings", "params"}
RULE_FIELDS = {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Errors of one custom resource; empty when valid."""
    kind, spec = doc.get("kind", ""), doc.get("spec")
    if kind not in SPEC_FIELDS:
        return [f"$: no schema known for {doc.get('apiVersion')}/{kind}"]
    if not isinstance(spec, dict):
        return ["$.spec: required"]
    required, known = SPEC_FIELDS[kind]
    errors = [f"$.spec: required field {f} missing" for f in sorted(required - spec.keys())]
    errors += [f"$.spec.{f}: unknown field of {kind}" for f in sorted(spec.keys() - known)]
    errors += check(doc.get("metadata", {}), "V1ObjectMeta", "$.metadata")
    return errors + _KIND_CHECKS[kind](spec)


def _monitor(spec: dict[str, Any], endpoints_key: str) -> list[str]:
    errors = check(spec["selector"], "V1LabelSelector", "$.spec.selector")
    for i, endpoint in enumerate(spec.get(endpoints_key, [])):
        errors += [f"$.spec.{endpoints_key}[{i}].{k}: unknown field"
                   for k in endpoint if k not in ENDPOINT_FIELDS]
        if "port" not in endpoint and "targetPort" not in endpoint:
            errors.append(f"$.spec.{endpoints_key}[{i}]: needs port or targetPort")
    return errors


def _rules(spec: dict[str, Any]) -> list[str]:
    errors = []
    for i, group in enumerate(spec["groups"]):
        if not group.get("name"):
            errors.append(f"$.spec.groups[{i}]: name required")
        for j, rule in enumerate(group.get("rules") or []):
            where = f"$.spec.groups[{i}].rules[{j}]"
            errors += [f"{where}.{k}: unknown field" for k in rule if k not in RULE_FIELDS]
            if not rule.get("expr") or ("alert" in rule) == ("record" in rule):
                errors.append(f"{where}: needs expr and exactly one of alert/record")
    return errors


def _ray_cluster(spec: dict[str, Any]) -> list[str]:
    groups = [("$.spec.headGroupSpec", spec["headGroupSpec"])]
    groups += [(f"$.spec.workerGroupSpecs[{i}]", g)
               for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    errors = []
    for where, group in groups:
        if "template" not in group:
            errors.append(f"{where}: required field template missing")
        else:
            errors += check(group["template"], "V1PodTemplateSpec", f"{where}.template")
        if "worker" in where and not group.get("groupName"):
            errors.append(f"{where}: required field groupName missing")
    return errors


_KIND_CHECKS = {
    "ServiceMonitor": lambda spec: _monitor(spec, "endpoints"),
    "PodMonitor": lambda spec: _monitor(spec, "podMetricsEndpoints"),
    "PrometheusRule": _rules,
    "RayCluster": _ray_cluster,
}
