"""Check rendered manifests against the Kubernetes API schema, using the
models of the official ``kubernetes`` Python client as the schema.

The client is generated from the API server's OpenAPI document: every model
lists its fields (``attribute_map``: python name -> JSON name), their types
(``openapi_types``) and which are required. Walking a manifest through them
finds unknown fields (a typo the API server would reject or, worse, silently
drop), wrong types and missing required fields, with a JSON path to each.
Both the older (``list[X]``/``dict(str, X)``) and the pydantic-based
(``List[X]``/``Dict[str, X]``) generations of the client are understood.
"""

from __future__ import annotations

import inspect
import re
from datetime import datetime
from typing import Any

import kubernetes.client as k8s

PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "bytes": (str,),  # base64 text in YAML
    "datetime": (str, datetime),
    "date": (str,),
    "object": (object,),  # IntOrString, RawExtension: anything
}
# Resource quantities are strings in the schema, but the API server also
# accepts plain numbers (cpu: 1); so do we, under these keys only.
QUANTITY_PARENTS = {"limits", "requests", "capacity", "allocatable"}

_LIST = re.compile(r"^(?:List|list)\[(.+)\]$")
_DICT = re.compile(r"^(?:Dict\[str, (.+)\]|dict\(str, (.+)\))$")


def model_for(api_version: str, kind: str) -> type | None:
    """The client model of a built-in kind, or None when the client does not
    serve that kind at that apiVersion (e.g. a Deployment under ``v1``)."""
    group, _, version = api_version.rpartition("/")
    api_class = _api_class_name(group, version)
    api = getattr(k8s, api_class, None)
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    if api is None or not any(hasattr(api, f"{verb}_{snake}")
                              for verb in ("create_namespaced", "create")):
        return None
    model = getattr(k8s, f"{version.capitalize()}{kind}", None)
    return model if inspect.isclass(model) else None


def _api_class_name(group: str, version: str) -> str:
    """``apps``/``v1`` -> AppsV1Api; ``rbac.authorization.k8s.io`` -> RbacAuthorization...;
    the core group (empty) -> CoreV1Api."""
    if not group:
        return f"Core{version.capitalize()}Api"
    words = group.removesuffix(".k8s.io").split(".")
    return "".join(w.capitalize() for w in words) + version.capitalize() + "Api"


def validate(doc: dict[str, Any]) -> list[str]:
    """Errors of one manifest ("<path>: <problem>"); empty when it is valid."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["$: apiVersion and kind are required"]
    model = model_for(api_version, kind)
    if model is None:
        return [f"$: {api_version}/{kind} is not a kind the Kubernetes API serves"]
    return check(doc, model.__name__, "$")


def check(value: Any, type_name: str, path: str) -> list[str]:
    """Errors of ``value`` against the client type ``type_name`` at ``path``."""
    if (m := _LIST.match(type_name)) is not None:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in check(item, m[1], f"{path}[{i}]")]
    if (m := _DICT.match(type_name)) is not None:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        inner = m[1] or m[2]
        return [e for key, item in value.items() for e in _check_entry(item, inner, path, key)]
    if type_name in PRIMITIVES:
        return _check_primitive(value, type_name, path)
    model = getattr(k8s, type_name, None)
    if model is None:
        return [f"{path}: unknown schema type {type_name}"]
    return _check_model(value, model, path)


def _check_entry(item: Any, inner: str, path: str, key: str) -> list[str]:
    parent = path.rsplit(".", 1)[-1]
    if inner == "str" and parent in QUANTITY_PARENTS and isinstance(item, int | float):
        return []
    return check(item, inner, f"{path}.{key}")


def _check_primitive(value: Any, type_name: str, path: str) -> list[str]:
    allowed = PRIMITIVES[type_name]
    if value is None or (isinstance(value, bool) and bool not in allowed and object not in allowed):
        return [f"{path}: expected {type_name}, got {value!r}"]
    if not isinstance(value, allowed):
        return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
    return []


def _check_model(value: Any, model: type, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({model.__name__}), got {type(value).__name__}"]
    by_json = {json: attr for attr, json in model.attribute_map.items()}
    errors = [f"{path}.{key}: unknown field of {model.__name__}"
              for key in value if key not in by_json]
    for key, item in value.items():
        if key in by_json and item is not None:
            errors += check(item, model.openapi_types[by_json[key]], f"{path}.{key}")
    errors += [f"{path}: required field {model.attribute_map[attr]} missing"
               for attr in required_fields(model) if value.get(model.attribute_map[attr]) is None]
    return errors


def required_fields(model: type) -> list[str]:
    """Python names of the fields the API requires in ``model``."""
    fields = getattr(model, "model_fields", None)
    if fields is not None:  # pydantic generation
        return [name for name, info in fields.items() if info.is_required()]
    # Older generation: the setters of required fields refuse None.
    required = []
    config = k8s.Configuration()
    config.client_side_validation = True
    for attr in model.openapi_types:
        probe = model.__new__(model)
        probe.local_vars_configuration = config
        try:
            setattr(probe, attr, None)
        except ValueError:
            required.append(attr)
    return required
