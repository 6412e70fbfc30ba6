"""Quantities a tenant writes by hand: memory sizes, CPU, durations.

Parsing is exact (``decimal``), so ``1.5GiB`` is exactly 1610612736 bytes and
a formatted value always parses back to the same number. Every error is a
:class:`SpecError` naming the field, because a tenant fixing a YAML file needs
to know *where* the problem is, not only what it is.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANOS_PER_SECOND = 10**9


class SpecError(ValueError):
    """A job spec problem. ``field`` is the path of the offending field
    ("resources.min_device_memory" in YAML terms, "spec.replicas" in proto
    terms); ``message`` says what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_QUANTITY_RE = re.compile(rf"^(?P<num>{_NUMBER})\s*(?P<unit>[A-Za-z]*)$")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")

# Decimal (k, M, G ... = 10^3n) and binary (Ki, Mi, Gi ... = 2^10n) units,
# with or without a trailing B, matched case-insensitively.
_MEMORY_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgtpe", start=1):
    _MEMORY_UNITS[_prefix] = _MEMORY_UNITS[_prefix + "b"] = 1000**_power
    _MEMORY_UNITS[_prefix + "i"] = _MEMORY_UNITS[_prefix + "ib"] = 1024**_power

_DURATION_UNITS_NS = {
    "ms": 10**6, "s": NANOS_PER_SECOND, "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND, "d": 86400 * NANOS_PER_SECOND,
}

# Largest first, so formatting picks the shortest exact spelling.
_FORMAT_UNITS = sorted(
    ((v, u) for u, v in {
        "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "PB": 1000**5,
        "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "PiB": 1024**5,
    }.items()),
    reverse=True,
)


def _exact_number(value: object, field: str, what: str) -> Decimal | None:
    """A non-negative int/float as a Decimal; None when ``value`` is a string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SpecError(field, f"cannot parse {value!r} as {what}")
    if isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(field, f"cannot parse {value!r} as {what}")
    number = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    if number < 0:
        raise SpecError(field, f"{what} must not be negative, got {value!r}")
    return number


def parse_quantity(value: object, field: str) -> int:
    """Bytes from ``64GB`` (10^9), ``64GiB``/``64Gi`` (2^30), ``512MB``,
    ``1.5GiB``, ``1TB`` ... ; a plain number is bytes."""
    what = "a memory size"
    number = _exact_number(value, field, what)
    if number is None:
        match = _QUANTITY_RE.match(str(value).strip())
        unit = _MEMORY_UNITS.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            raise SpecError(field, f"cannot parse {value!r} as {what} (e.g. 64GB, 80GiB, 512Mi)")
        number = Decimal(match["num"]) * unit
    return int(number.to_integral_value(rounding=ROUND_HALF_UP))


def parse_cpu(value: object, field: str) -> int:
    """Millicores from cores (``32``, ``"2.5"``) or millicores (``"500m"``)."""
    what = "a CPU amount"
    number = _exact_number(value, field, what)
    if number is None:
        text = str(value).strip()
        try:
            number = Decimal(text[:-1]) if text.endswith("m") else Decimal(text) * 1000
        except InvalidOperation:
            number = Decimal(-1)
        if not number.is_finite() or number < 0:
            raise SpecError(field, f"cannot parse {value!r} as {what} (e.g. 32, 2.5, 500m)")
    else:
        number *= 1000
    if number != number.to_integral_value():
        raise SpecError(field, f"{value!r} is finer than one millicore (1m)")
    return int(number)


def duration_nanos(value: object, field: str) -> int:
    """Exact nanoseconds of a duration: a number of seconds, a timedelta, or
    a string of parts like ``6h``, ``1h30m``, ``90s``, ``1d``, ``250ms``."""
    what = "a duration"
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise SpecError(field, f"{what} must not be negative, got {value}")
        return (value // timedelta(microseconds=1)) * 1000
    number = _exact_number(value, field, what)
    if number is not None:
        return int((number * NANOS_PER_SECOND).to_integral_value(rounding=ROUND_HALF_UP))
    text = str(value).strip()
    if re.fullmatch(_NUMBER, text):
        return int((Decimal(text) * NANOS_PER_SECOND).to_integral_value(ROUND_HALF_UP))
    text = text.replace(" ", "")
    parts = _DURATION_PART_RE.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise SpecError(field, f"cannot parse {value!r} as {what} (e.g. 90s, 30m, 6h, 1h30m, 1d)")
    total = sum(Decimal(n) * _DURATION_UNITS_NS[u] for n, u in parts)
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


def parse_duration(value: object, field: str) -> float:
    """Seconds of a duration (see :func:`duration_nanos` for the syntax)."""
    return duration_nanos(value, field) / NANOS_PER_SECOND


def format_quantity(num_bytes: int) -> int | str:
    """The shortest exact spelling of a byte count: ``80GiB``, ``64GB``, or
    the plain integer when no unit divides it."""
    for size, unit in _FORMAT_UNITS:
        if num_bytes and num_bytes % size == 0:
            return f"{num_bytes // size}{unit}"
    return num_bytes


def format_cpu(millis: int) -> int | str:
    """Whole cores as an integer, otherwise millicores (``"500m"``)."""
    return millis // 1000 if millis % 1000 == 0 else f"{millis}m"


def format_duration(nanos: int) -> str:
    """An exact duration string: ``1d``, ``1h30m``, ``250ms``, ``1.5s``."""
    if nanos % NANOS_PER_SECOND:
        if nanos < NANOS_PER_SECOND and nanos % 10**6 == 0:
            return f"{nanos // 10**6}ms"
        return f"{Decimal(nanos) / NANOS_PER_SECOND:f}s"
    seconds = nanos // NANOS_PER_SECOND
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
