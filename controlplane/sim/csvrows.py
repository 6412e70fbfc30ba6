"""Small helpers for reading CSV rows with errors that name the column."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence

from controlplane.sim.errors import SimInputError

ENCODING = "utf-8-sig"  # a byte-order mark (spreadsheet exports) is not part of a name


def dict_reader(lines: Iterable[str]) -> csv.DictReader:
    """Rows keyed by column name; header names compared without surrounding
    spaces and case (``Pool , MODEL`` reads as ``pool,model``)."""
    reader = csv.DictReader(lines)
    if reader.fieldnames:
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    return reader


def check_header(found: Sequence[str] | None, wanted: Sequence[str], source: str) -> None:
    """All ``wanted`` columns present (extra columns are allowed)."""
    missing = [c for c in wanted if c not in (found or ())]
    if missing:
        raise SimInputError(
            f"{source}:1: missing column(s) {', '.join(missing)}; expected {','.join(wanted)}")


def text(row: Mapping[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def integer(row: Mapping[str, str | None], column: str, *, minimum: int | None = None,
            default: int | None = None) -> int:
    """An integer cell; empty means ``default`` (an error when there is none)."""
    raw = text(row, column)
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SimInputError(f"{column}: expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SimInputError(f"{column}: must be >= {minimum}, got {value}")
    return value


def number(row: Mapping[str, str | None], column: str, *, minimum: float | None = None,
           default: float | None = None) -> float:
    """A float cell; empty means ``default`` (an error when there is none)."""
    raw = text(row, column)
    if not raw and default is not None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SimInputError(f"{column}: expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SimInputError(f"{column}: expected a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise SimInputError(f"{column}: must be >= {minimum:g}, got {value:g}")
    return value
