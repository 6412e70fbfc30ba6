"""The rules every job spec obeys, whichever client built it.

:func:`validate_spec` raises :class:`SpecError` for the first problem, with
the field as a proto path ("spec.resources.accelerators", "spec.env[FOO]")
so the API can return it as a field violation. Limits keep one tenant from
hurting the control plane (huge specs, thousands of env entries) and catch
mistakes early (unknown chip names, vendor variables the agent owns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from controlplane.model.catalogue import Catalogue, default_catalogue
from controlplane.model.spec_units import NANOS_PER_SECOND, SpecError
from xinhe.v1 import common_pb2

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
QUEUE_PART_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIX = "XINHE_"
CPU_FAMILY = "cpu"

MAX_SPEC_BYTES = 1024 * 1024
MAX_REPLICAS = 1024
MAX_ACCELERATORS = 64
MAX_DEVICE_MEMORY_BYTES = 4 * 1000**4  # 4 TB
MAX_CPU_MILLIS = 1024 * 1000
MAX_PRIORITY = 1000
MAX_ARG_CHARS = 4095
MAX_ARGS = 1024
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE_BYTES = 32 * 1024 - 1
MAX_DURATION_NANOS = 365 * 86400 * NANOS_PER_SECOND - 1
MAX_ATTEMPTS = 100
MAX_IMAGE_CHARS = 512
# A container image reference as the distribution spec defines it:
# [registry[:port]/]path[:tag][@algorithm:hex]. Lower-case path components.
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")


def _check_name(spec: common_pb2.JobSpec) -> None:
    if not NAME_RE.fullmatch(spec.name):
        raise SpecError("spec.name", f"{spec.name!r} is not a valid name: 1-128 characters "
                        "of [A-Za-z0-9._-], starting with a letter or digit")


def _check_job_type(spec: common_pb2.JobSpec) -> None:
    """Empty (the name is the type) or a name: learned throughput is keyed,
    stored and shown by it."""
    if spec.job_type and not NAME_RE.fullmatch(spec.job_type):
        raise SpecError("spec.job_type", f"{spec.job_type[:80]!r} is not a valid job type: "
                        "empty (the job's name is used) or 1-128 characters of "
                        "[A-Za-z0-9._-], starting with a letter or digit")


def _check_queue(spec: common_pb2.JobSpec) -> None:
    parts = spec.queue.split("/")
    if len(parts) != 2 or not all(QUEUE_PART_RE.fullmatch(p) for p in parts):
        raise SpecError("spec.queue", f"{spec.queue!r} is not a queue: expected "
                        "'tenant/queue', each part lower-case [a-z0-9-], at most 63 characters")


def _check_argv(command: Sequence[str], args: Sequence[str], path: str,
                required: bool) -> None:
    if required and not command:
        raise SpecError(f"{path}.command", "a command is required (run: or command:)")
    for i, word in enumerate(command):
        if not word:
            raise SpecError(f"{path}.command[{i}]", "must not be empty")
        if len(word) > MAX_ARG_CHARS or "\0" in word:
            raise SpecError(f"{path}.command[{i}]",
                            f"must be shorter than {MAX_ARG_CHARS + 1} characters, without NUL")
    if len(args) > MAX_ARGS:
        raise SpecError(f"{path}.args", f"{len(args)} arguments; at most {MAX_ARGS}")


def _vendor_env_names(catalogue: Catalogue) -> frozenset[str]:
    return frozenset(
        name for fam in catalogue.families.values()
        for name in (*fam.visible_devices_env, *fam.container_visible_devices_env)
    )


def _check_env(env: Mapping[str, str], path: str, vendor_names: frozenset[str]) -> None:
    if len(env) > MAX_ENV_ENTRIES:
        raise SpecError(path, f"{len(env)} variables; at most {MAX_ENV_ENTRIES}")
    for name in sorted(env):
        field = f"{path}[{name}]"
        if not ENV_NAME_RE.fullmatch(name):
            raise SpecError(field, f"{name!r} is not a valid variable name")
        if name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(field, "names starting with XINHE_ are reserved for the runtime "
                            "environment Xinhe sets")
        if name in vendor_names:
            raise SpecError(field, f"{name} must not be set: the agent sets it for the chip "
                            "the job lands on")
        if len(env[name].encode("utf-8")) > MAX_ENV_VALUE_BYTES or "\0" in env[name]:
            raise SpecError(field, f"value must be under {MAX_ENV_VALUE_BYTES + 1} bytes, "
                            "without NUL")


def _check_families(families: Iterable[str], catalogue: Catalogue) -> None:
    for name in families:
        if name in catalogue.families:
            continue
        if catalogue.has_family(name):
            hint = f"family names are lower case: {name.lower()!r}"
        elif catalogue.find_model(name) is not None:
            hint = f"{name!r} is a model: list it under models"
        else:
            hint = "known: " + ", ".join(sorted(catalogue.families))
        raise SpecError("spec.resources.families",
                        f"unknown accelerator family {name!r} ({hint})")


def _check_models(models: Iterable[str], catalogue: Catalogue) -> None:
    for name in models:
        if catalogue.find_model(name) is None:
            known = ", ".join(sorted(catalogue.models))
            raise SpecError("spec.resources.models",
                            f"unknown accelerator model {name!r} (known: {known})")


def _check_cpu_only(res: common_pb2.Resources, catalogue: Catalogue) -> None:
    """A replica with no accelerators cannot ask for accelerator chips."""
    if res.accelerators:
        return
    families = [f for f in res.families if f != CPU_FAMILY]
    if families:
        raise SpecError("spec.resources.families", "a job with accelerators: 0 cannot require "
                        f"accelerator families ({', '.join(families)}); set accelerators")
    models = [m for m in res.models if catalogue.chip(m).family != CPU_FAMILY]
    if models:
        raise SpecError("spec.resources.models", "a job with accelerators: 0 cannot require "
                        f"accelerator models ({', '.join(models)}); set accelerators")


def _check_resources(res: common_pb2.Resources, catalogue: Catalogue) -> None:
    if res.accelerators > MAX_ACCELERATORS:
        raise SpecError("spec.resources.accelerators",
                        f"{res.accelerators} per replica; at most {MAX_ACCELERATORS}")
    _check_families(res.families, catalogue)
    _check_models(res.models, catalogue)
    _check_cpu_only(res, catalogue)
    if res.min_device_memory_bytes > MAX_DEVICE_MEMORY_BYTES:
        raise SpecError("spec.resources.min_device_memory_bytes",
                        f"{res.min_device_memory_bytes} bytes; at most 4 TB")
    if res.cpu_millis > MAX_CPU_MILLIS:
        raise SpecError("spec.resources.cpu_millis",
                        f"{res.cpu_millis / 1000:g} cores; at most {MAX_CPU_MILLIS // 1000}")


def _check_numbers(spec: common_pb2.JobSpec) -> None:
    if not 1 <= spec.replicas <= MAX_REPLICAS:
        raise SpecError("spec.replicas", f"{spec.replicas} replicas; must be 1..{MAX_REPLICAS}")
    if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise SpecError("spec.priority",
                        f"{spec.priority}; must be {-MAX_PRIORITY}..{MAX_PRIORITY}")
    for name in ("reference_runtime", "max_runtime"):
        nanos = getattr(spec, name).ToNanoseconds()
        if not 0 <= nanos <= MAX_DURATION_NANOS:
            raise SpecError(f"spec.{name}", "must be non-negative and under 365 days")
    if spec.retry.max_attempts > MAX_ATTEMPTS:
        raise SpecError("spec.retry.max_attempts",
                        f"{spec.retry.max_attempts}; at most {MAX_ATTEMPTS}")


def _check_image(image: str, path: str) -> None:
    """Empty (the executor's default) or a sane image reference."""
    if not image:
        return
    if len(image) > MAX_IMAGE_CHARS or not IMAGE_RE.fullmatch(image):
        raise SpecError(path, f"{image[:80]!r} is not a container image reference: expected "
                        "[registry[:port]/]name[:tag][@sha256:digest], name in lower case")


def _check_variants(spec: common_pb2.JobSpec, catalogue: Catalogue,
                    vendor_names: frozenset[str]) -> None:
    for key in sorted(spec.variants):
        path = f"spec.variants[{key}]"
        if key not in catalogue.families and catalogue.find_model(key) is None:
            raise SpecError(path, f"{key!r} is neither an accelerator family nor a model "
                            "in the catalogue")
        variant = spec.variants[key]
        _check_argv(variant.command, variant.args, path, required=False)
        _check_env(variant.env, f"{path}.env", vendor_names)
        _check_image(variant.image, f"{path}.image")


REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _check_placement(spec: common_pb2.JobSpec) -> None:
    """objective, data_region and latency_class: known values only."""
    if spec.objective not in common_pb2.Objective.values():
        known = ", ".join(v.name.removeprefix("OBJECTIVE_")
                          for v in common_pb2.Objective.DESCRIPTOR.values)
        raise SpecError("spec.objective", f"unknown objective {spec.objective} (known: {known})")
    if spec.latency_class not in common_pb2.LatencyClass.values():
        known = ", ".join(v.name.removeprefix("LATENCY_CLASS_")
                          for v in common_pb2.LatencyClass.DESCRIPTOR.values)
        raise SpecError("spec.latency_class",
                        f"unknown latency class {spec.latency_class} (known: {known})")
    if spec.data_region and not REGION_RE.fullmatch(spec.data_region):
        raise SpecError("spec.data_region", f"{spec.data_region[:80]!r} is not a region name: "
                        "1-63 characters of [A-Za-z0-9._-], starting with a letter or digit")
    res = spec.resources
    if spec.objective == common_pb2.OBJECTIVE_PINNED and not (res.families or res.models):
        raise SpecError("spec.objective", "PINNED keeps the job on the family it names first: "
                        "name one in resources.families or resources.models")


def validate_spec(spec: common_pb2.JobSpec, catalogue: Catalogue | None = None) -> None:
    """Raise :class:`SpecError` for the first rule ``spec`` breaks; return None
    when it is acceptable. Pure: no I/O beyond the (cached) catalogue."""
    catalogue = catalogue or default_catalogue()
    if spec.ByteSize() > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{spec.ByteSize()} bytes serialized; at most 1 MiB")
    _check_name(spec)
    _check_job_type(spec)
    _check_queue(spec)
    _check_argv(spec.command, spec.args, "spec", required=True)
    _check_numbers(spec)
    _check_resources(spec.resources, catalogue)
    vendor_names = _vendor_env_names(catalogue)
    _check_env(spec.env, "spec.env", vendor_names)
    _check_image(spec.image, "spec.image")
    _check_variants(spec, catalogue, vendor_names)
    _check_placement(spec)
