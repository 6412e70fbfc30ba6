"""Hypothesis strategies for arbitrary protobuf messages, built from their
descriptors, so a new field or RPC is fuzzed without touching this file.

Values lean adversarial: extreme and negative integers, NaN and infinities,
unknown enum numbers, unicode (any plane, no surrogates: protobuf strings
are UTF-8), occasional huge strings and bytes, and nested messages a few
levels deep. Every field is optional, so missing fields are covered too.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
MAX_DEPTH = 3
HUGE = 300_000  # big enough to hurt, well under the 4 MiB message limit

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [x for x in (lo, hi, 0, -1, 1, 2, 8, 1024, 2**31 - 1, 2**31, 2**32) if lo <= x <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _rarely(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``rare`` about one draw in twenty, so most messages stay small."""
    return st.integers(0, 19).flatmap(lambda i: rare if i == 0 else common)


def text(huge: bool = True) -> st.SearchStrategy[str]:
    small = st.one_of(
        st.text(max_size=40),
        st.text(st.characters(codec="utf-8"), max_size=200),
        st.sampled_from(["", " ", "a/b", "lab-a/default", "../../etc/passwd", "\x00",
                         "j-000000000000", "H100", "910B", "nvidia", "ascend", "-1", "1e309",
                         "Ω≈ç√∫", "😀" * 50, "DROP TABLE jobs;--", "%s%n%x"]),
    )
    if not huge:
        return small
    return _rarely(small, st.integers(1, 3).map(lambda n: "x" * (HUGE * n // 3)))


def binary(huge: bool = True) -> st.SearchStrategy[bytes]:
    small = st.binary(max_size=200)
    return _rarely(small, st.just(b"\xff" * HUGE)) if huge else small


def _scalar(field: FieldDescriptor, huge: bool = True) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _ints(*_INT_RANGES[t])
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        width = 32 if t == F.TYPE_FLOAT else 64
        return st.one_of(st.floats(width=width), st.sampled_from([0.0, -1.0, 1e30, -1e30]))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return text(huge)
    if t == F.TYPE_BYTES:
        return binary(huge)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _ints(-(2**31), 2**31 - 1))
    raise TypeError(f"unhandled field type {t} of {field.full_name}")


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == F.TYPE_MESSAGE:
        if depth >= MAX_DEPTH:
            return None
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def _field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if _is_map(field):
        key = _scalar(field.message_type.fields_by_name["key"])
        value = _value(field.message_type.fields_by_name["value"], depth)
        return None if value is None else st.dictionaries(key, value, max_size=4)
    value = _value(field, depth)
    if value is None:
        return None
    if field.is_repeated:
        many = st.lists(_scalar(field, huge=False), min_size=50, max_size=300) \
            if field.type != F.TYPE_MESSAGE else st.lists(value, max_size=4)
        return _rarely(st.lists(value, max_size=4), many)
    return value


def _message_class(descriptor: Descriptor) -> type[pb_message.Message]:
    return message_factory.GetMessageClass(descriptor)


def _fill(cls: type[pb_message.Message], values: dict[str, Any]) -> pb_message.Message:
    msg = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if _is_map(field):
            for k, v in value.items():
                if isinstance(v, pb_message.Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[pb_message.Message]:
    """Arbitrary instances of the message type ``descriptor``."""
    optional = {}
    for field in descriptor.fields:
        strategy = _field_strategy(field, depth)
        if strategy is not None:
            optional[field.name] = strategy
    cls = _message_class(descriptor)
    return st.fixed_dictionaries({}, optional=optional).map(lambda v: _fill(cls, v))
