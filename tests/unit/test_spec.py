"""The portable job spec: what tenants write, what it becomes, what is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.model.catalogue import default_catalogue
from controlplane.model.spec import (
    SpecError,
    parse_cpu,
    parse_duration,
    parse_quantity,
    resolve_variant,
    spec_from_yaml,
    spec_to_yaml_dict,
    validate_spec,
)
from controlplane.model.spec_units import duration_nanos, format_duration, format_quantity
from xinhe.v1 import common_pb2

# The example of "What a tenant writes" in DESIGN.md.
DESIGN_EXAMPLE = """
name: llama-sft
queue: lab-a/default
priority: 1
replicas: 2                      # gang: both start together or not at all
resources:                       # per replica
  accelerators: 8                # any family, or pick some:
  accelerator_models: [H100, A100, 910B]   # any-of, like SkyPilot's {A100:8, H100:8}
  min_device_memory: 64GB
  cpu: 32
  memory: 256GB
estimate:
  reference_runtime: 6h          # on the reference chip (A100); the scheduler scales it
checkpoint:
  dir: /mnt/shared/ckpt/llama-sft
  migratable: true
env:
  EPOCHS: "3"
run: python sft.py --config cfg.yaml
variants:                        # only where a family really needs something else
  ascend:
    env: {HCCL_CONNECT_TIMEOUT: "1200"}
"""

MINIMAL = {"name": "train", "queue": "lab-a/default", "replicas": 1,
           "command": ["python", "train.py"]}


def spec(**overrides: object) -> common_pb2.JobSpec:
    """A valid spec from MINIMAL with YAML-level overrides (None removes a key)."""
    raw = {**MINIMAL, **overrides}
    return spec_from_yaml({k: v for k, v in raw.items() if v is not None})


def field_of(exc: pytest.ExceptionInfo[SpecError]) -> str:
    return exc.value.field


# -- parsing ---------------------------------------------------------------------
def test_design_example_parses_into_the_proto() -> None:
    s = spec_from_yaml(DESIGN_EXAMPLE)
    assert (s.name, s.queue, s.priority, s.replicas) == ("llama-sft", "lab-a/default", 1, 2)
    assert s.resources.accelerators == 8
    assert list(s.resources.models) == ["H100", "A100", "910B"]
    assert list(s.resources.families) == []
    assert s.resources.min_device_memory_bytes == 64 * 10**9
    assert s.resources.cpu_millis == 32_000
    assert s.resources.memory_bytes == 256 * 10**9
    assert s.reference_runtime.ToSeconds() == 6 * 3600
    assert s.checkpoint_dir == "/mnt/shared/ckpt/llama-sft"
    assert dict(s.env) == {"EPOCHS": "3"}
    assert list(s.command) == ["/bin/sh", "-c", "python sft.py --config cfg.yaml"]
    assert dict(s.variants["ascend"].env) == {"HCCL_CONNECT_TIMEOUT": "1200"}
    validate_spec(s, default_catalogue())


def test_family_named_among_models_means_the_family() -> None:
    s = spec(resources={"accelerators": 1, "accelerator_models": ["H100", "Ascend"],
                        "accelerator_families": ["Cambricon", "ascend"]})
    assert list(s.resources.families) == ["cambricon", "ascend"]
    assert list(s.resources.models) == ["H100"]


def test_command_forms() -> None:
    assert list(spec(command="python -m x --name 'a b'").command) == [
        "python", "-m", "x", "--name", "a b"]
    s = spec(command=["python", "x.py"], args=["--epochs", 3])
    assert (list(s.command), list(s.args)) == (["python", "x.py"], ["--epochs", "3"])
    assert list(spec(command=None, run="echo hi && sleep 1").command) == [
        "/bin/sh", "-c", "echo hi && sleep 1"]


@pytest.mark.parametrize(("raw", "field"), [
    ({"run": "x", "command": ["y"]}, "run"),
    ({"command": None, "run": "x", "args": ["a"]}, "args"),
    ({"command": None, "run": ["x"]}, "run"),
    ({"command": "python 'unterminated"}, "command"),
])
def test_command_mistakes(raw: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**raw)
    assert field_of(info) == field


def test_env_values_are_stringified() -> None:
    s = spec(env={"A": 3, "B": True, "C": 1.5, "D": None, "E": "x"})
    assert dict(s.env) == {"A": "3", "B": "true", "C": "1.5", "D": "", "E": "x"}
    with pytest.raises(SpecError) as info:
        spec(env={"A": [1]})
    assert field_of(info) == "env.A"


def test_retries_mean_extra_attempts() -> None:
    assert spec(retries=2).retry.max_attempts == 3
    assert spec(retry={"max_attempts": 4}).retry.max_attempts == 4
    with pytest.raises(SpecError) as info:
        spec(retries=1, retry={"max_attempts": 2})
    assert field_of(info) == "retries"


def test_policies() -> None:
    s = spec(max_runtime="1h30m", estimate={"reference_runtime": 90},
             checkpoint={"dir": "/ckpt"}, working_dir="/work", priority=-5)
    assert s.max_runtime.ToSeconds() == 5400
    assert s.reference_runtime.ToSeconds() == 90
    assert (s.checkpoint_dir, s.working_dir, s.priority) == ("/ckpt", "/work", -5)


def test_variants() -> None:
    s = spec(variants={"Ascend": {"run": "python npu.py", "image": "img:npu"},
                       "910B": {"command": ["a"], "args": ["b"], "env": {"X": 1}}})
    assert list(s.variants["ascend"].command) == ["/bin/sh", "-c", "python npu.py"]
    assert s.variants["ascend"].image == "img:npu"
    assert (list(s.variants["910B"].args), dict(s.variants["910B"].env)) == (["b"], {"X": "1"})
    with pytest.raises(SpecError):
        spec(variants={"ascend": {}, "ASCEND": {}})


@pytest.mark.parametrize(("raw", "field", "hint"), [
    ({"acelerators": 1}, "acelerators", ""),
    ({"resources": {"acelerators": 1}}, "resources.acelerators", "accelerators"),
    ({"resources": {"accelerator_model": ["H100"]}}, "resources.accelerator_model",
     "accelerator_models"),
    ({"variants": {"ascend": {"evn": {}}}}, "variants.ascend.evn", "env"),
    ({"estimate": {"reference_runtim": "1h"}}, "estimate.reference_runtim", "reference_runtime"),
    ({"checkpoint": {"directory": "/x"}}, "checkpoint.directory", ""),
    ({"retry": {"attempts": 3}}, "retry.attempts", "max_attempts"),
    ({"enviroment": {}}, "enviroment", ""),
])
def test_unknown_keys_are_refused_by_name(raw: dict, field: str, hint: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**raw)
    assert field_of(info) == field
    assert field.rsplit(".", 1)[-1] in str(info.value)
    assert hint in str(info.value)


@pytest.mark.parametrize(("raw", "field"), [
    ({"replicas": "two"}, "replicas"),
    ({"replicas": True}, "replicas"),
    ({"replicas": -1}, "replicas"),
    ({"priority": 1.5}, "priority"),
    ({"resources": {"accelerators": "8"}}, "resources.accelerators"),
    ({"resources": {"min_device_memory": "64XB"}}, "resources.min_device_memory"),
    ({"resources": {"cpu": "lots"}}, "resources.cpu"),
    ({"resources": {"memory": -1}}, "resources.memory"),
    ({"resources": ["H100"]}, "resources"),
    ({"max_runtime": "soon"}, "max_runtime"),
    ({"env": ["A=1"]}, "env"),
    ({"checkpoint": {"dir": "/c", "migratable": False}}, "checkpoint.migratable"),
    ({"name": ["x"]}, "name"),
])
def test_malformed_values_name_their_field(raw: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**raw)
    assert field_of(info) == field


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "name: [unclosed\n"])
def test_documents_that_are_not_specs(text: str) -> None:
    with pytest.raises(SpecError):
        spec_from_yaml(text)


# -- quantities ------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (1024, 1024), ("64GB", 64 * 10**9), ("64G", 64 * 10**9), ("64GiB", 64 * 2**30),
    ("64Gi", 64 * 2**30), ("512MB", 512 * 10**6), ("512Mi", 512 * 2**20),
    ("1TB", 10**12), ("1.5GiB", 3 * 2**29), ("64 gb", 64 * 10**9), ("100", 100),
    ("2Ki", 2048), ("0", 0),
])
def test_parse_quantity(value: object, expected: int) -> None:
    assert parse_quantity(value, "resources.memory") == expected


@pytest.mark.parametrize("value", ["64XB", "-1", "GB", "1.2.3GB", True, None, [1], -5,
                                   float("nan")])
def test_parse_quantity_refuses(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_quantity(value, "resources.min_device_memory")
    assert info.value.field == "resources.min_device_memory"
    assert str(info.value).startswith("resources.min_device_memory: ")


def test_memory_error_message() -> None:
    with pytest.raises(SpecError, match=r"resources.min_device_memory: cannot parse '64XB' "
                                        r"as a memory size"):
        parse_quantity("64XB", "resources.min_device_memory")


@pytest.mark.parametrize(("value", "expected"), [
    (32, 32_000), ("500m", 500), ("2.5", 2500), (2.5, 2500), ("1", 1000), (0, 0),
])
def test_parse_cpu(value: object, expected: int) -> None:
    assert parse_cpu(value, "resources.cpu") == expected


@pytest.mark.parametrize("value", ["1.0005", "0.5m", "x", "-1", "m", -1, False])
def test_parse_cpu_refuses(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_cpu(value, "resources.cpu")
    assert info.value.field == "resources.cpu"


@pytest.mark.parametrize(("value", "expected"), [
    (90, 90.0), (1.5, 1.5), ("6h", 21600.0), ("30m", 1800.0), ("90s", 90.0),
    ("1h30m", 5400.0), ("1d", 86400.0), ("250ms", 0.25), ("1h 30m", 5400.0), ("45", 45.0),
])
def test_parse_duration(value: object, expected: float) -> None:
    assert parse_duration(value, "max_runtime") == expected


@pytest.mark.parametrize("value", ["6x", "h", "1h30", "", "-1s", -3, "soon", True])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_duration(value, "max_runtime")
    assert info.value.field == "max_runtime"


@given(st.integers(min_value=0, max_value=2**62))
def test_formatted_quantities_parse_back(num_bytes: int) -> None:
    assert parse_quantity(format_quantity(num_bytes), "m") == num_bytes


@given(st.integers(min_value=0, max_value=400 * 86400 * 10**9))
def test_formatted_durations_parse_back(nanos: int) -> None:
    assert duration_nanos(format_duration(nanos), "d") == nanos


# -- round trip ------------------------------------------------------------------
ROUND_TRIP_CASES = [
    DESIGN_EXAMPLE,
    MINIMAL,
    {**MINIMAL, "args": ["--lr", "0.1"], "retries": 0, "max_runtime": "250ms",
     "resources": {}, "working_dir": "/w"},
    {**MINIMAL, "resources": {"accelerators": 4, "accelerator_families": ["nvidia"],
                              "min_device_memory": "80GiB", "cpu": "1500m",
                              "memory": 123456789}},
    {**MINIMAL, "retry": {}, "estimate": {"reference_runtime": 0}, "priority": -1000},
    {**MINIMAL, "command": None, "run": "echo hi",
     "variants": {"910B": {"command": ["/bin/sh", "-c", "npu"], "args": ["x"]},
                  "nvidia": {"image": "img", "env": {"A": "1"}}, "cpu": {}}},
]


@pytest.mark.parametrize("source", ROUND_TRIP_CASES)
def test_round_trip(source: object) -> None:
    parsed = spec_from_yaml({k: v for k, v in source.items() if v is not None}
                            if isinstance(source, dict) else source)
    assert spec_from_yaml(spec_to_yaml_dict(parsed)) == parsed


def test_yaml_dict_is_what_a_tenant_would_write() -> None:
    out = spec_to_yaml_dict(spec_from_yaml(DESIGN_EXAMPLE))
    assert out["run"] == "python sft.py --config cfg.yaml"
    assert out["resources"]["min_device_memory"] == "64GB"
    assert out["resources"]["cpu"] == 32
    assert out["estimate"] == {"reference_runtime": "6h"}
    assert "command" not in out


# -- validation ------------------------------------------------------------------
Mutate = Callable[[common_pb2.JobSpec], object]


def _set(**fields: object) -> Mutate:
    def mutate(s: common_pb2.JobSpec) -> None:
        for name, value in fields.items():
            target, attr = s, name
            while "." in attr:
                head, attr = attr.split(".", 1)
                target = getattr(target, head)
            setattr(target, attr, value)
    return mutate


INVALID = [
    (_set(name=""), "spec.name", ""),
    (_set(name="-lead"), "spec.name", ""),
    (_set(name="a" * 129), "spec.name", ""),
    (_set(name="has space"), "spec.name", ""),
    (_set(name="trailing-newline\n"), "spec.name", ""),
    (_set(queue=""), "spec.queue", ""),
    (_set(queue="lab-a"), "spec.queue", ""),
    (_set(queue="Lab-A/default"), "spec.queue", ""),
    (_set(queue="lab-a/default/x"), "spec.queue", ""),
    (_set(queue="lab-a/" + "q" * 64), "spec.queue", ""),
    (_set(queue="lab-a/default\n"), "spec.queue", ""),
    (lambda s: s.ClearField("command"), "spec.command", "required"),
    (lambda s: s.command.append(""), "spec.command[2]", "empty"),
    (lambda s: s.command.append("x" * 4096), "spec.command[2]", ""),
    (lambda s: s.args.extend(["a"] * 1025), "spec.args", "1024"),
    (_set(replicas=0), "spec.replicas", ""),
    (_set(replicas=1025), "spec.replicas", ""),
    (_set(priority=1001), "spec.priority", ""),
    (_set(priority=-1001), "spec.priority", ""),
    (_set(**{"resources.accelerators": 65}), "spec.resources.accelerators", "64"),
    (lambda s: s.resources.families.append("foo"), "spec.resources.families",
     "unknown accelerator family 'foo' (known: amd, ascend"),
    (lambda s: s.resources.families.append("NVIDIA"), "spec.resources.families", "lower case"),
    (lambda s: s.resources.families.append("h100"), "spec.resources.families", "model"),
    (lambda s: s.resources.models.append("X9000"), "spec.resources.models", "'X9000'"),
    (_set(**{"resources.min_device_memory_bytes": 4 * 10**12 + 1}),
     "spec.resources.min_device_memory_bytes", "4 TB"),
    (_set(**{"resources.cpu_millis": 1_024_001}), "spec.resources.cpu_millis", "1024"),
    (lambda s: s.env.update({"1BAD": "x"}), "spec.env[1BAD]", ""),
    (lambda s: s.env.update({"BAD-NAME": "x"}), "spec.env[BAD-NAME]", ""),
    (lambda s: s.env.update({"XINHE_RANK": "0"}), "spec.env[XINHE_RANK]", "reserved"),
    (lambda s: s.env.update({"CUDA_VISIBLE_DEVICES": "0"}), "spec.env[CUDA_VISIBLE_DEVICES]",
     "the agent sets it for the chip"),
    (lambda s: s.env.update({"ASCEND_RT_VISIBLE_DEVICES": "0"}),
     "spec.env[ASCEND_RT_VISIBLE_DEVICES]", "agent"),
    (lambda s: s.env.update({"NVIDIA_VISIBLE_DEVICES": "all"}),
     "spec.env[NVIDIA_VISIBLE_DEVICES]", "agent"),
    (lambda s: s.env.update({f"V{i}": "x" for i in range(257)}), "spec.env", "256"),
    (lambda s: s.env.update({"BIG": "x" * 32 * 1024}), "spec.env[BIG]", ""),
    (lambda s: s.reference_runtime.FromSeconds(-1), "spec.reference_runtime", ""),
    (lambda s: s.max_runtime.FromSeconds(365 * 86400), "spec.max_runtime", "365 days"),
    (_set(**{"retry.max_attempts": 101}), "spec.retry.max_attempts", "100"),
    (lambda s: s.variants["foo"].SetInParent(), "spec.variants[foo]", "'foo'"),
    (lambda s: s.variants["ascend"].env.update({"XINHE_X": "1"}),
     "spec.variants[ascend].env[XINHE_X]", "reserved"),
    (lambda s: s.variants["910B"].command.append(""), "spec.variants[910B].command[0]", ""),
    (lambda s: s.env.update({"PAD": "x" * 30000} | {f"P{i}": "x" * 30000 for i in range(40)}),
     "spec", "1 MiB"),
]


@pytest.mark.parametrize(("mutate", "field", "fragment"), INVALID)
def test_validation_names_the_field(mutate: Mutate, field: str, fragment: str) -> None:
    s = spec(resources={"accelerators": 1})
    validate_spec(s, default_catalogue())
    mutate(s)
    with pytest.raises(SpecError) as info:
        validate_spec(s, default_catalogue())
    assert info.value.field == field
    assert fragment in str(info.value)


def test_cpu_only_job_cannot_require_accelerator_families() -> None:
    cpu_job = spec(resources={"accelerators": 0, "accelerator_families": ["cpu"]})
    validate_spec(cpu_job, default_catalogue())
    for resources, field in (({"accelerator_families": ["nvidia"]}, "spec.resources.families"),
                             ({"accelerator_models": ["H100"]}, "spec.resources.models")):
        with pytest.raises(SpecError) as info:
            validate_spec(spec(resources=resources), default_catalogue())
        assert info.value.field == field


@pytest.mark.parametrize("models", [["h100"], ["Ascend910B3"], ["MI300X", "mlu370"]])
def test_models_are_matched_like_the_catalogue(models: list[str]) -> None:
    validate_spec(spec(resources={"accelerators": 1, "accelerator_models": models}))


def test_limits_themselves_are_allowed() -> None:
    s = spec(name="a" * 128, replicas=1024, priority=-1000, retry={"max_attempts": 100},
             resources={"accelerators": 64, "cpu": 1024, "min_device_memory": "4TB"},
             max_runtime=365 * 86400 - 1, env={"A": "x" * (32 * 1024 - 1)},
             queue="a" * 63 + "/default")
    validate_spec(s, default_catalogue())


def test_first_problem_wins() -> None:
    s = spec(name="", replicas=0)
    with pytest.raises(SpecError) as info:
        validate_spec(s)
    assert info.value.field == "spec.name"


# -- variants --------------------------------------------------------------------
def test_resolve_variant_layers_model_over_family_over_spec() -> None:
    s = spec(command=["python", "train.py"], args=["--lr", "1"], env={"A": "spec", "B": "spec"},
             variants={"ascend": {"command": ["python", "npu.py"], "env": {"A": "family"}},
                       "910B": {"args": ["--lr", "2"], "env": {"B": "model"}}})
    assert resolve_variant(s, "nvidia", "H100") == (
        ["python", "train.py", "--lr", "1"], {"A": "spec", "B": "spec"})
    assert resolve_variant(s, "ascend", "910B4") == (
        ["python", "npu.py", "--lr", "1"], {"A": "family", "B": "spec"})
    assert resolve_variant(s, "ascend", "910B") == (
        ["python", "npu.py", "--lr", "2"], {"A": "family", "B": "model"})


@pytest.mark.parametrize("model", ["910b", "Ascend910B3", "ASCEND 910B"])
def test_resolve_variant_matches_model_keys_by_catalogue_name(model: str) -> None:
    s = spec(variants={"910B": {"env": {"M": "1"}}})
    assert resolve_variant(s, "ascend", model)[1] == {"M": "1"}


def test_resolve_variant_matches_family_case_insensitively() -> None:
    s = spec(variants={"ascend": {"run": "npu"}})
    assert resolve_variant(s, "Ascend", "910B")[0] == ["/bin/sh", "-c", "npu"]
    assert "ascend" in s.variants and len(s.variants) == 1
