"""The portable job spec as tenants write it (YAML), and back.

The YAML is shaped for people who know SkyPilot or Kubernetes::

    name: llama-sft
    queue: lab-a/default
    replicas: 2
    resources: {accelerators: 8, accelerator_models: [H100, 910B], min_device_memory: 64GB}
    run: python sft.py
    variants: {ascend: {env: {HCCL_CONNECT_TIMEOUT: "1200"}}}

:func:`spec_from_yaml` turns it into a ``xinhe.v1.JobSpec`` and rejects any
key it does not know (a typo must not silently drop a requirement);
:func:`spec_to_yaml_dict` is its inverse; :func:`validate_spec` checks the
rules every spec obeys, whichever client sent it; :func:`resolve_variant`
gives the command and environment for the chip a job lands on.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Collection, Mapping
from typing import Any

import yaml
from google.protobuf import duration_pb2

from controlplane.model.catalogue import Catalogue, default_catalogue, normalise
from controlplane.model.spec_units import (
    SpecError,
    duration_nanos,
    format_cpu,
    format_duration,
    format_quantity,
    parse_cpu,
    parse_duration,
    parse_quantity,
)
from controlplane.model.spec_validation import validate_spec
from xinhe.v1 import common_pb2

__all__ = [
    "SpecError", "parse_cpu", "parse_duration", "parse_quantity", "resolve_image",
    "resolve_variant", "spec_from_yaml", "spec_to_yaml_dict", "validate_spec",
]

SHELL = ("/bin/sh", "-c")

_TOP_KEYS = (
    "name", "queue", "priority", "replicas", "resources", "estimate", "max_runtime",
    "checkpoint", "retry", "retries", "env", "working_dir", "run", "command", "args",
    "variants", "image", "objective", "data_region", "latency_class",
)
_RESOURCE_KEYS = (
    "accelerators", "accelerator_families", "accelerator_models", "min_device_memory",
    "cpu", "memory",
)
_VARIANT_KEYS = ("run", "command", "args", "env", "image")
# The C loader when libyaml is present (~50x faster), else the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


# -- small readers ------------------------------------------------------------
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(raw: Mapping[Any, Any], allowed: Collection[str], path: str) -> None:
    """Refuse unknown keys, suggesting the closest known one."""
    for key in raw:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
        raise SpecError(_join(path, str(key)), f"unknown key {key!r} ({hint})")


def _mapping(value: Any, field: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, f"expected a mapping, got {type(value).__name__}")
    return value


def _text(value: Any, field: str) -> str:
    """A string; numbers are accepted and stringified (YAML reads 2024 as int)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SpecError(field, f"expected a string, got {value!r}")
    return str(value)


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(field, f"{value} is out of range [{low}, {high}]")
    return value


def _text_list(value: Any, field: str) -> list[str]:
    """A list of strings; a single string counts as a one-element list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise SpecError(field, f"expected a list, got {value!r}")
    return [_text(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _argv(value: Any, field: str) -> list[str]:
    """A command line: a list of words, or a string split like a shell would."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise SpecError(field, f"cannot split {value!r}: {exc}") from None
    return _text_list(value, field)


def _env(value: Any, field: str) -> dict[str, str]:
    env = {}
    for key, item in _mapping(value, field).items():
        name = str(key)
        if isinstance(item, bool):
            env[name] = "true" if item else "false"
        elif item is None:
            env[name] = ""
        elif isinstance(item, str | int | float):
            env[name] = str(item)
        else:
            raise SpecError(f"{field}.{name}", f"expected a string, number or boolean, "
                                               f"got {type(item).__name__}")
    return env


def _duration(value: Any, field: str) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(duration_nanos(value, field))
    return out


def _command_and_args(raw: Mapping[Any, Any], path: str) -> tuple[list[str], list[str]]:
    """``run:`` (a shell script) or ``command:`` plus optional ``args:``."""
    if "run" in raw and "command" in raw:
        raise SpecError(_join(path, "run"), "give either run or command, not both")
    if "run" in raw:
        if "args" in raw:
            raise SpecError(_join(path, "args"), "args cannot follow run: put them in the script")
        if not isinstance(raw["run"], str):
            raise SpecError(_join(path, "run"), f"expected a shell script, got {raw['run']!r}")
        return [*SHELL, raw["run"]], []
    command = _argv(raw.get("command"), _join(path, "command"))
    return command, _argv(raw.get("args"), _join(path, "args"))


# -- YAML -> JobSpec ----------------------------------------------------------
def _load(source: str | bytes | Mapping[str, Any]) -> Mapping[Any, Any]:
    if isinstance(source, bytes):
        source = source.decode("utf-8")
    if isinstance(source, str):
        try:
            source = yaml.load(source, Loader=_YAML_LOADER)  # a safe loader, C or Python
        except yaml.YAMLError as exc:
            raise SpecError("", f"invalid YAML: {exc}") from None
    if source is None:
        raise SpecError("", "the job spec is empty")
    if not isinstance(source, Mapping):
        raise SpecError("", f"a job spec is a mapping, got {type(source).__name__}")
    return source


def _fill_resources(res: common_pb2.Resources, raw: Mapping[Any, Any],
                    catalogue: Catalogue) -> None:
    _check_keys(raw, _RESOURCE_KEYS, "resources")
    res.SetInParent()
    if raw.get("accelerators") is not None:
        res.accelerators = _integer(raw["accelerators"], "resources.accelerators",
                                    0, _UINT32_MAX)
    families = [f.lower() for f in _text_list(raw.get("accelerator_families"),
                                              "resources.accelerator_families")]
    models: list[str] = []
    # A family named among the models ("[H100, ascend]") means the whole family.
    for name in _text_list(raw.get("accelerator_models"), "resources.accelerator_models"):
        if catalogue.has_family(name):
            families.append(name.lower())
        else:
            models.append(name)
    res.families.extend(dict.fromkeys(families))
    res.models.extend(dict.fromkeys(models))
    for key, attr, parse, high in (
        ("min_device_memory", "min_device_memory_bytes", parse_quantity, _UINT64_MAX),
        ("cpu", "cpu_millis", parse_cpu, _UINT32_MAX),
        ("memory", "memory_bytes", parse_quantity, _UINT64_MAX),
    ):
        if raw.get(key) is not None:
            field = f"resources.{key}"
            setattr(res, attr, _integer(parse(raw[key], field), field, 0, high))


def _fill_variant(variant: common_pb2.Variant, raw: Mapping[Any, Any], path: str) -> None:
    _check_keys(raw, _VARIANT_KEYS, path)
    command, args = _command_and_args(raw, path)
    variant.command.extend(command)
    variant.args.extend(args)
    variant.env.update(_env(raw.get("env"), _join(path, "env")))
    if raw.get("image") is not None:
        variant.image = _text(raw["image"], _join(path, "image"))


def _fill_variants(spec: common_pb2.JobSpec, raw: Mapping[Any, Any],
                   catalogue: Catalogue) -> None:
    for key, body in raw.items():
        name = _text(key, "variants")
        # Family keys are stored as catalogue names; model keys as written.
        if catalogue.has_family(name):
            name = name.lower()
        if name in spec.variants:
            raise SpecError(f"variants.{key}", f"variant {name!r} is given twice")
        path = f"variants.{key}"
        _fill_variant(spec.variants[name], _mapping(body, path), path)


def _fill_policies(spec: common_pb2.JobSpec, raw: Mapping[Any, Any]) -> None:
    """estimate, max_runtime, checkpoint and retry."""
    estimate = _mapping(raw.get("estimate"), "estimate")
    _check_keys(estimate, ("reference_runtime",), "estimate")
    if estimate.get("reference_runtime") is not None:
        spec.reference_runtime.CopyFrom(
            _duration(estimate["reference_runtime"], "estimate.reference_runtime"))
    if raw.get("max_runtime") is not None:
        spec.max_runtime.CopyFrom(_duration(raw["max_runtime"], "max_runtime"))
    checkpoint = _mapping(raw.get("checkpoint"), "checkpoint")
    _check_keys(checkpoint, ("dir", "migratable"), "checkpoint")
    if checkpoint.get("dir") is not None:
        spec.checkpoint_dir = _text(checkpoint["dir"], "checkpoint.dir")
    # Every job with a checkpoint dir can be migrated; the spec has no way to
    # say "checkpoint but never move me", so refuse that rather than ignore it.
    if checkpoint.get("migratable", True) is not True:
        raise SpecError("checkpoint.migratable", "only true is supported: a job with a "
                        "checkpoint dir may always be migrated")
    _fill_retry(spec, raw)


def _fill_retry(spec: common_pb2.JobSpec, raw: Mapping[Any, Any]) -> None:
    if "retry" in raw and "retries" in raw:
        raise SpecError("retries", "give either retries or retry.max_attempts, not both")
    if raw.get("retries") is not None:
        spec.retry.max_attempts = _integer(raw["retries"], "retries", 0, _UINT32_MAX - 1) + 1
    if raw.get("retry") is not None:
        retry = _mapping(raw["retry"], "retry")
        _check_keys(retry, ("max_attempts",), "retry")
        spec.retry.SetInParent()
        if retry.get("max_attempts") is not None:
            spec.retry.max_attempts = _integer(retry["max_attempts"], "retry.max_attempts",
                                               0, _UINT32_MAX)


def _enum(value: Any, field: str, enum: Any, prefix: str) -> int:
    """``cost`` -> OBJECTIVE_COST: an enum value by its short name, any case."""
    name = _text(value, field)
    full = prefix + name.upper()
    names = [k for k in enum.keys() if not k.endswith("_UNSPECIFIED")]  # noqa: SIM118
    if full not in names:
        known = ", ".join(k.removeprefix(prefix).lower() for k in names)
        raise SpecError(field, f"unknown {field.replace('_', ' ')} {name!r} (known: {known})")
    return int(enum.Value(full))


def _fill_placement(spec: common_pb2.JobSpec, raw: Mapping[Any, Any]) -> None:
    """objective (fastest|cost|energy|pinned), data_region, latency_class."""
    if raw.get("objective") is not None:
        spec.objective = _enum(raw["objective"], "objective", common_pb2.Objective,
                               "OBJECTIVE_")  # type: ignore[assignment]
    if raw.get("latency_class") is not None:
        spec.latency_class = _enum(raw["latency_class"], "latency_class",
                                   common_pb2.LatencyClass,
                                   "LATENCY_CLASS_")  # type: ignore[assignment]
    if raw.get("data_region") is not None:
        spec.data_region = _text(raw["data_region"], "data_region")


def spec_from_yaml(source: str | bytes | Mapping[str, Any],
                   catalogue: Catalogue | None = None) -> common_pb2.JobSpec:
    """Parse a tenant's YAML (text or an already-loaded mapping) into a JobSpec.

    Raises :class:`SpecError` naming the YAML path of the first malformed or
    unknown key. Parsing checks shapes and units only; call
    :func:`validate_spec` for the rules (limits, known chips, reserved names).
    """
    catalogue = catalogue or default_catalogue()
    raw = _load(source)
    _check_keys(raw, _TOP_KEYS, "")
    spec = common_pb2.JobSpec()
    for key in ("name", "queue", "working_dir", "image"):
        if raw.get(key) is not None:
            setattr(spec, key, _text(raw[key], key))
    if raw.get("priority") is not None:
        spec.priority = _integer(raw["priority"], "priority", -(2**31), 2**31 - 1)
    # A job that does not say otherwise is one replica.
    spec.replicas = 1
    if raw.get("replicas") is not None:
        spec.replicas = _integer(raw["replicas"], "replicas", 0, _UINT32_MAX)
    if raw.get("resources") is not None:
        _fill_resources(spec.resources, _mapping(raw["resources"], "resources"), catalogue)
    _fill_policies(spec, raw)
    _fill_placement(spec, raw)
    spec.env.update(_env(raw.get("env"), "env"))
    command, args = _command_and_args(raw, "")
    spec.command.extend(command)
    spec.args.extend(args)
    _fill_variants(spec, _mapping(raw.get("variants"), "variants"), catalogue)
    return spec


# -- JobSpec -> YAML ----------------------------------------------------------
def _command_dict(command: list[str], args: list[str]) -> dict[str, Any]:
    if len(command) == 3 and tuple(command[:2]) == SHELL and not args:
        return {"run": command[2]}
    out: dict[str, Any] = {}
    if command:
        out["command"] = command
    if args:
        out["args"] = args
    return out


def _resources_dict(res: common_pb2.Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.accelerators:
        out["accelerators"] = res.accelerators
    if res.families:
        out["accelerator_families"] = list(res.families)
    if res.models:
        out["accelerator_models"] = list(res.models)
    if res.min_device_memory_bytes:
        out["min_device_memory"] = format_quantity(res.min_device_memory_bytes)
    if res.cpu_millis:
        out["cpu"] = format_cpu(res.cpu_millis)
    if res.memory_bytes:
        out["memory"] = format_quantity(res.memory_bytes)
    return out


def _variant_dict(variant: common_pb2.Variant) -> dict[str, Any]:
    out = _command_dict(list(variant.command), list(variant.args))
    if variant.env:
        out["env"] = dict(sorted(variant.env.items()))
    if variant.image:
        out["image"] = variant.image
    return out


def spec_to_yaml_dict(spec: common_pb2.JobSpec) -> dict[str, Any]:
    """The YAML mapping a tenant would write for ``spec`` (defaults omitted).

    ``spec_from_yaml(spec_to_yaml_dict(s)) == s`` for every spec that parsing
    can produce; quantities are spelt exactly (``80GiB``, ``1h30m``).
    """
    out: dict[str, Any] = {}
    for key in ("name", "queue", "priority", "replicas"):
        if getattr(spec, key):
            out[key] = getattr(spec, key)
    if spec.HasField("resources"):
        out["resources"] = _resources_dict(spec.resources)
    if spec.HasField("reference_runtime"):
        out["estimate"] = {"reference_runtime": format_duration(
            spec.reference_runtime.ToNanoseconds())}
    if spec.HasField("max_runtime"):
        out["max_runtime"] = format_duration(spec.max_runtime.ToNanoseconds())
    if spec.checkpoint_dir:
        out["checkpoint"] = {"dir": spec.checkpoint_dir}
    if spec.HasField("retry"):
        out["retry"] = {"max_attempts": spec.retry.max_attempts} if spec.retry.max_attempts else {}
    if spec.env:
        out["env"] = dict(sorted(spec.env.items()))
    if spec.working_dir:
        out["working_dir"] = spec.working_dir
    if spec.image:
        out["image"] = spec.image
    if spec.objective:
        out["objective"] = common_pb2.Objective.Name(spec.objective).removeprefix(
            "OBJECTIVE_").lower()
    if spec.data_region:
        out["data_region"] = spec.data_region
    if spec.latency_class:
        out["latency_class"] = common_pb2.LatencyClass.Name(spec.latency_class).removeprefix(
            "LATENCY_CLASS_").lower()
    out.update(_command_dict(list(spec.command), list(spec.args)))
    if spec.variants:
        out["variants"] = {k: _variant_dict(v) for k, v in sorted(spec.variants.items())}
    return out


# -- per-chip rendering -------------------------------------------------------
def _variant_for_model(spec: common_pb2.JobSpec, model: str,
                       catalogue: Catalogue) -> common_pb2.Variant | None:
    """The variant keyed by ``model`` or one of its catalogue aliases."""
    chip = catalogue.find_model(model) if model else None
    for key, variant in spec.variants.items():
        if catalogue.has_family(key):
            continue
        if normalise(key) == normalise(model):
            return variant
        key_chip = catalogue.find_model(key)
        if chip is not None and key_chip is not None and key_chip.model == chip.model:
            return variant
    return None


def resolve_image(spec: common_pb2.JobSpec, family: str, model: str,
                  catalogue: Catalogue | None = None) -> str:
    """The container image of a replica on a ``model`` chip of ``family``: the
    model's variant image, else the family's, else the spec's ("" = the
    executor's default). Only image-running executors use it."""
    catalogue = catalogue or default_catalogue()
    for variant in (_variant_for_model(spec, model, catalogue),
                    spec.variants.get(family.lower())):
        if variant is not None and variant.image:
            return variant.image
    return spec.image


def resolve_variant(spec: common_pb2.JobSpec, family: str, model: str,
                    catalogue: Catalogue | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv (command + args) and environment a replica runs with on a
    ``model`` chip of ``family``.

    Layers, later wins: the spec, the family's variant, the model's variant.
    A variant's non-empty command or args replace the layer below; its env is
    merged over it.
    """
    catalogue = catalogue or default_catalogue()
    command, args, env = list(spec.command), list(spec.args), dict(spec.env)
    layers = [spec.variants.get(family.lower()), _variant_for_model(spec, model, catalogue)]
    for variant in layers:
        if variant is None:
            continue
        command = list(variant.command) or command
        args = list(variant.args) or args
        env.update(variant.env)
    return command + args, env
