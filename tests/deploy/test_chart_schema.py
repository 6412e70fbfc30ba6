"""values.schema.json and the chart's own checks reject bad values with a
message that names the value to fix."""

from __future__ import annotations

import json

import pytest

from tests.deploy.chart import CHART, NAMESPACE, RELEASE, helm

BAD_VALUES = [
    (["controlPlane.replicas=3"], "/storage/type"),
    (["controlPlane.replicas=0"], "/controlPlane/replicas"),
    (["controlPlane.scheduler=fast"], "value must be one of 'ray', 'inline'"),
    (["storage.type=mysql"], "/storage/type"),
    (["ray.mode=external"], "/ray/address"),
    (["ray.mode=remote"], "/ray/mode"),
    (["agents.families.quantum.enabled=true"], "invalid propertyName 'quantum'"),
    (["agents.families.nvidia.resourceName=gpu"], "/agents/families/nvidia/resourceName"),
    (["agents.families.nvidia.deviceAccess=magic"], "/agents/families/nvidia/deviceAccess"),
    (["agents.families.ascend.simulate[0]=910B"], "/agents/families/ascend/simulate/0"),
    (["agents.families.nvidia.pools[0].name=H100_East"], "/agents/families/nvidia/pools/0/name"),
    (["controlPlane.resources.requests.cpu=lots"], "/controlPlane/resources/requests/cpu"),
    (["service.type=Ingress"], "/service/type"),
    (["metrics.port=70000"], "/metrics/port"),
    (["controlPlane.replicaz=2"], "additional properties 'replicaz' not allowed"),
    (["policy.waitForFasterMargin=0.5"], "/policy/waitForFasterMargin"),
    (["controlPlane.schedulerShards=0"], "/controlPlane/schedulerShards"),
    (["controlPlane.schedulerShards=-2"], "/controlPlane/schedulerShards"),
    (["storage.postgres.timeoutSeconds=-1"], "/storage/postgres/timeoutSeconds"),
    (["storage.postgres.timeoutSeconds=0"], "/storage/postgres/timeoutSeconds"),
    # Cross-field rules the templates check, with their own message.
    (["storage.type=postgres"], "storage.type=postgres needs storage.postgres.existingSecret"),
    (["tls.enabled=true"], "tls.enabled needs tls.existingSecret"),
]


@pytest.mark.parametrize(("sets", "message"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_are_rejected_with_a_clear_message(sets: list[str], message: str) -> None:
    result = helm("template", RELEASE, "--namespace", NAMESPACE, *(f"--set={s}" for s in sets))
    assert result.returncode != 0, f"{sets} was accepted"
    assert message in result.stderr, result.stderr


def test_schema_forbids_unknown_keys_everywhere_it_knows_the_shape() -> None:
    """Every object of the schema with properties closes additionalProperties,
    so a misspelt key is an error rather than silently ignored."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "#")
    assert [p for p in open_objects if "/allOf/" not in p] == []
