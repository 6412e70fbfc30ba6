"""The Helm chart lints, renders manifests the Kubernetes API accepts for the
default values and every example, and what it renders matches the product:
the server's settings, the agent's flags and the chip catalogue."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml

from controlplane.cli.main import build_parser
from controlplane.model.catalogue import parse_catalogue
from controlplane.settings import ServerSettings
from tests.deploy.chart import (
    CASES,
    EXAMPLES,
    NAMESPACE,
    RELEASE,
    containers,
    env_of,
    helm,
    of_kind,
    render,
    render_case,
    value_args,
)
from tests.deploy.custom_resources import SPEC_FIELDS, validate_custom
from tests.deploy.k8s_schema import validate

# Server variables the chart sets ahead of the server reading them (documented
# in values.yaml as planned); every other XINHE_* must be a ServerSettings field.
PLANNED_SERVER_ENV: set[str] = set()
BUILTIN_RESOURCES = ("cpu", "memory", "ephemeral-storage", "hugepages-")


@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=lambda p: p.stem if p else "default")
def test_helm_lint_passes_strictly(values: Any) -> None:
    args = ["lint", "--strict", "--namespace", NAMESPACE]
    if values is not None:
        args.append(f"--values={values}")
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_matches_the_kubernetes_api(case: str) -> None:
    docs = render_case(case)
    assert of_kind(docs, "Deployment"), "the control plane must render"
    errors = []
    for doc in docs:
        found = validate_custom(doc) if doc["kind"] in SPEC_FIELDS else validate(doc)
        errors += [f"{doc['kind']}/{doc['metadata']['name']} {e}" for e in found]
    assert not errors, "\n".join(errors)


CLUSTER_SCOPED = frozenset({"ClusterRole", "ClusterRoleBinding"})


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_labelled_and_namespaced(case: str) -> None:
    for doc in render_case(case):
        meta = doc["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, meta["name"]
        expected = None if doc["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert meta.get("namespace") == expected, f"{doc['kind']}/{meta['name']}"
        assert len(meta["name"]) <= 63, meta["name"]


def test_cluster_scoped_rbac_is_only_read_access_to_nodes() -> None:
    for case in CASES:
        for role in of_kind(render_case(case), "ClusterRole"):
            assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                                      "verbs": ["get", "list", "watch"]}], case


def rendered_catalogue(docs: tuple[dict[str, Any], ...]) -> Any:
    config = next(d for d in of_kind(docs, "ConfigMap")
                  if d["metadata"]["name"].endswith("-config"))
    return parse_catalogue(yaml.safe_load(config["data"]["chips.yaml"]))


@pytest.mark.parametrize("case", CASES)
def test_agent_resource_names_are_those_of_the_chip_catalogue(case: str) -> None:
    docs = render_case(case)
    catalogue = rendered_catalogue(docs)
    for ds in of_kind(docs, "DaemonSet"):
        family = ds["metadata"]["labels"]["xinhe.io/family"]
        assert catalogue.has_family(family), f"{family} is not a catalogue family"
        profile = catalogue.family(family)
        limits = containers(ds)[0]["resources"].get("limits", {})
        for name in limits:
            if name.startswith(BUILTIN_RESOURCES):
                continue
            known = name in profile.resource_names or name.startswith(
                profile.resource_name_prefixes)
            assert known, f"{ds['metadata']['name']}: {name} is not a {family} resource"


def test_every_family_of_the_values_requests_a_catalogue_resource() -> None:
    docs = render_case("every-family")
    requested = {ds["metadata"]["labels"]["xinhe.io/family"]:
                 containers(ds)[0]["resources"]["limits"] for ds in of_kind(docs, "DaemonSet")}
    assert set(requested) == {"nvidia", "ascend", "cambricon", "hygon", "kunlunxin", "amd"}
    catalogue = rendered_catalogue(docs)
    for family, limits in requested.items():
        vendor = [n for n in limits if not n.startswith(BUILTIN_RESOURCES)]
        assert vendor and vendor[0] in catalogue.family(family).resource_names, family


def expand(args: list[str], env: dict[str, Any]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args, for literal env values."""
    out = []
    for arg in args:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value if isinstance(value, str) else "10.0.0.7")
        out.append(arg)
    return out


@pytest.mark.parametrize("case", CASES)
def test_agent_arguments_parse_with_the_real_cli(case: str) -> None:
    for ds in of_kind(render_case(case), "DaemonSet"):
        container = containers(ds)[0]
        assert "command" not in container, "the image's entrypoint is `xinhe`"
        env = env_of(container)
        args = build_parser().parse_args(expand(container["args"], env))
        assert args.command == "agent"
        assert args.node == "10.0.0.7" and args.address == "10.0.0.7"  # from the downward API
        assert args.pool == ds["metadata"]["labels"]["xinhe.io/pool"]
        assert {"XINHE_SERVER", "NODE_NAME", "NODE_IP"} <= env.keys()
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert args.metrics_port == ports.get("metrics", 0), "serve /metrics where scraped"


def control_plane(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return next(d for d in of_kind(docs, "Deployment")
                if d["metadata"]["labels"]["app.kubernetes.io/component"] == "control-plane")


@pytest.mark.parametrize("case", CASES)
def test_server_environment_is_the_server_settings(case: str) -> None:
    deployment = control_plane(render_case(case))
    server = containers(deployment)[0]
    args = build_parser().parse_args(server["args"])
    assert args.command == "server"
    env = env_of(server)
    fields = {"XINHE_" + name.upper() for name in ServerSettings.__dataclass_fields__}
    unknown = {k for k in env if k.startswith("XINHE_")} - fields - PLANNED_SERVER_ENV
    assert not unknown, f"not server settings: {sorted(unknown)}"
    literal = {k: v for k, v in env.items() if k in fields and isinstance(v, str)}
    settings = ServerSettings.from_env(literal)
    assert settings.listen.endswith(f":{server['ports'][0]['containerPort']}")
    assert str(settings.catalogue_path).startswith("/etc/xinhe/config/")


@pytest.mark.parametrize("case", CASES)
def test_control_plane_pod_is_hardened_and_probed_over_grpc(case: str) -> None:
    deployment = control_plane(render_case(case))
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["resources"]["requests"], "requests let the scheduler place the pod"
    tls = "XINHE_TLS_CERT_FILE" in env_of(server)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if tls:  # kubelet gRPC probes speak plain text only
            assert server[probe]["tcpSocket"]["port"] == "grpc"
        else:
            assert server[probe]["grpc"]["port"] == server["ports"][0]["containerPort"]
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_sqlite_default_is_one_replica_on_a_claim() -> None:
    docs = render_case("default")
    deployment = of_kind(docs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    claim = of_kind(docs, "PersistentVolumeClaim")[0]["metadata"]["name"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in volumes
    assert not of_kind(docs, "Role"), "one replica elects no leader: no API access"
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_postgres_ha_elects_a_leader_with_least_privilege() -> None:
    docs = render_case("values-postgres-ha")
    deployment = of_kind(docs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 3
    assert not of_kind(docs, "PersistentVolumeClaim")
    env = env_of(containers(deployment)[0])
    assert env["XINHE_STORE_DSN"] == {"secretKeyRef": {"name": "xinhe-store", "key": "dsn"}}
    assert env["XINHE_AUTH_TOKEN"] == {"secretKeyRef": {"name": "xinhe-token", "key": "token"}}
    assert env["XINHE_RAY_ADDRESS"] == "ray://ray-head.ray.svc:10001"
    # Leader election on a Lease: a Role for that one Lease, nothing else.
    assert env["XINHE_LEADER_ELECTION"] == "kubernetes"
    assert env["XINHE_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert float(env["XINHE_LEADER_POLL_S"]) > 0
    [role], [binding] = of_kind(docs, "Role"), of_kind(docs, "RoleBinding")
    lease = env["XINHE_LEASE_NAME"]
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    pod = deployment["spec"]["template"]["spec"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": role["metadata"]["namespace"]}]
    assert pod["automountServiceAccountToken"] is True
    assert not of_kind(docs, "Secret"), "every secret comes from an existing one"


def test_postgres_election_needs_no_kubernetes_api_access() -> None:
    sets = ("controlPlane.replicas=2", "storage.type=postgres",
            "storage.postgres.existingSecret=xinhe-store")
    docs = render(sets=sets)
    env, settings = server_settings(docs)
    assert settings.leader_election == "postgres" and "XINHE_LEASE_NAME" not in env
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    pod = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    _, lease = server_settings(render(sets=(*sets, "leaderElection.mode=kubernetes",
                                            "leaderElection.leaseName=cp-lease")))
    assert (lease.leader_election, lease.lease_name) == ("kubernetes", "cp-lease")


def server_settings(docs: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ServerSettings]:
    """The server container's env and the settings its literal XINHE_* values make."""
    env = env_of(containers(control_plane(docs))[0])
    literal = {k: v for k, v in env.items() if k.startswith("XINHE_") and isinstance(v, str)}
    return env, ServerSettings.from_env(literal)


def test_scheduler_shards_and_store_timeout_reach_the_server() -> None:
    sets = ("controlPlane.schedulerShards=4", "storage.type=postgres",
            "storage.postgres.existingSecret=xinhe-store", "storage.postgres.timeoutSeconds=2")
    env, settings = server_settings(render(sets=sets))
    assert (env["XINHE_SCHEDULER_SHARDS"], env["XINHE_STORE_TIMEOUT_S"]) == ("4", "2")
    assert (settings.scheduler_shards, settings.store_timeout_s) == (4, 2.0)
    # The chart's defaults are the server's; SQLite gets no PostgreSQL timeout.
    env, settings = server_settings(render_case("default"))
    assert settings.scheduler_shards == ServerSettings().scheduler_shards
    assert "XINHE_STORE_TIMEOUT_S" not in env
    _env, settings = server_settings(render_case("values-postgres-ha"))
    assert settings.store_timeout_s == ServerSettings().store_timeout_s


def test_kuberay_falls_back_to_embedded_ray_without_the_crd() -> None:
    example = ("examples/values-mixed-multiregion.yaml",)
    without = helm("template", RELEASE, "--namespace", NAMESPACE, *value_args(example))
    assert without.returncode == 0, without.stderr
    docs = [d for d in yaml.safe_load_all(without.stdout) if d]
    assert not of_kind(docs, "RayCluster")
    assert "XINHE_RAY_ADDRESS" not in env_of(containers(of_kind(docs, "Deployment")[0])[0])
    with_crd = render_case("values-mixed-multiregion")
    cluster = of_kind(with_crd, "RayCluster")[0]["metadata"]["name"]
    env = env_of(containers(of_kind(with_crd, "Deployment")[0])[0])
    assert env["XINHE_RAY_ADDRESS"] == f"ray://{cluster}-head-svc.{NAMESPACE}.svc:10001"


def test_mixed_example_runs_four_vendors_in_two_regions() -> None:
    daemonsets = of_kind(render_case("values-mixed-multiregion"), "DaemonSet")
    families = {d["metadata"]["labels"]["xinhe.io/family"] for d in daemonsets}
    assert families == {"nvidia", "ascend", "cambricon", "hygon"}
    regions = {}
    for ds in daemonsets:
        args = containers(ds)[0]["args"]
        region = args[args.index("--region") + 1]
        regions[region] = regions.get(region, 0) + 1
        selector = ds["spec"]["template"]["spec"]["nodeSelector"]
        assert selector["topology.kubernetes.io/region"] == region
    assert regions == {"east": 2, "west": 3}


def test_notes_tell_the_operator_how_to_reach_the_api_and_submit_a_job() -> None:
    from controlplane.model.spec import spec_from_yaml

    result = helm("install", RELEASE, "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"port-forward svc/{RELEASE}-xinhe 50051:50051" in notes
    assert "XINHE_TOKEN=$(kubectl" in notes
    assert "no agent family is enabled" in notes
    spec_text = notes.split("<<'YAML'", 1)[1].split("YAML", 1)[0]
    spec = spec_from_yaml("\n".join(line.strip() for line in spec_text.splitlines()))
    assert spec.name == "hello"
    submit = next(line for line in notes.splitlines() if "xinhe submit" in line)
    assert shlex.split(submit)[:3] == ["xinhe", "submit", "hello.yaml"]


def test_agents_have_no_kubernetes_api_access() -> None:
    docs = render_case("every-family")
    for ds in of_kind(docs, "DaemonSet"):
        pod = ds["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"].endswith("-agent")
