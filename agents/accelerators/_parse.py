"""Text helpers shared by the vendor adapters: readings, box tables, ``-q`` trees, JSON.

Vendor tools print three kinds of output: nvidia-smi-style box tables
(``npu-smi info``, ``mx-smi``), indented ``key : value`` reports (``-q`` of
``mthreads-gmi`` and friends) and JSON that may be wrapped in warnings
(``rocm-smi``/``hy-smi --json``, ``cnmon``). The parsers here are tolerant by
design: a reading they cannot understand becomes ``None`` (telemetry 0) rather
than an exception, because one odd field must not hide a node's devices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024

#: Values a tool prints for "not supported here": telemetry reads 0, healthy.
NOT_AVAILABLE = {"", "n/a", "na", "[n/a]", "-", "--", "not supported", "[not supported]",
                 "unsupported", "none"}
#: Fragments that mean the tool could not read the device: unhealthy.
_ERROR_WORDS = re.compile(r"\berr\b|err!|error|\bfail|gpu is lost|\blost\b|\bhang|unknown error",
                          re.IGNORECASE)
# A header name: words joined by single spaces, ending at "|" or 2+ spaces.
_HEADER_NAME = re.compile(r"[^|\s](?:[^\s|]| (?![ |]))*")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": MIB, "mib": MIB, "gb": 1024 * MIB,
          "gib": 1024 * MIB}


def is_missing(text: Any) -> bool:
    """True for a reading the device does not offer (``N/A``, ``-``, empty)."""
    return text is None or str(text).strip().lower() in NOT_AVAILABLE


def is_error(text: Any) -> bool:
    """True for a reading that reports a device fault (``ERR!``, ``[GPU is lost]``...)."""
    return text is not None and bool(_ERROR_WORDS.search(str(text)))


def number(text: Any) -> float | None:
    """The first number in a reading (``"93.6W"`` -> 93.6); None when there is none."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if is_missing(text) or is_error(text):
        return None
    found = _NUMBER.search(str(text))
    return float(found.group()) if found else None


def reading(text: Any) -> float:
    """Like :func:`number` but 0 for missing readings (telemetry fields)."""
    value = number(text)
    return 0.0 if value is None else value


def memory_bytes(text: Any, default_unit: str = "MiB") -> int:
    """A memory size with an optional unit (``"65536 MiB"``, ``"64GB"``) in bytes."""
    value = number(text)
    return 0 if value is None else int(value * unit_scale(text, default_unit))


def unit_scale(text: Any, default_unit: str = "MiB") -> int:
    """Bytes per unit of the size unit named in ``text`` (``default_unit`` if none)."""
    unit = re.search(r"([KMG]i?B|B)\b", str(text), re.IGNORECASE)
    return _UNITS[(unit.group(1) if unit else default_unit).lower()]


def used_total(text: Any) -> tuple[float, float] | None:
    """``"3386 / 65536"`` (any spacing, optional unit) -> (3386.0, 65536.0).

    An unreadable used part reads 0; an unreadable total gives None.
    """
    if text is None:
        return None
    parts = str(text).split("/")
    if len(parts) != 2:
        return None
    used, total = number(parts[0]), number(parts[1])
    if total is None:
        return None
    return (used or 0.0), total


def field(record: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` in ``record``, matched on a normalised prefix.

    Vendor spellings drift between versions (``"Card series"`` /
    ``"Card Series"``, ``"Power(W)"`` / ``"Power"``), so keys are compared
    lower-cased without spaces, and a key matches when it starts with a name.
    """
    keys = {_norm(k): k for k in record}
    for name in names:
        wanted = _norm(name)
        if wanted in keys:
            return record[keys[wanted]]
        for norm, key in keys.items():
            if norm.startswith(wanted):
                return record[key]
    return None


def _norm(name: str) -> str:
    return re.sub(r"\s+", "", name.lower())


# -- box tables (npu-smi info, mx-smi, nvidia-smi style) ------------------------------
@dataclass(frozen=True)
class _Column:
    name: str
    start: int
    end: int


def _columns(header: str) -> list[_Column]:
    """Column names of one header line and the character range each one owns.

    Names are separated by two or more spaces or by ``|``; a name owns the
    text from where it starts up to where the next name starts.
    """
    found = [(m.group(), m.start()) for m in _HEADER_NAME.finditer(header)]
    bars = [i for i, ch in enumerate(header) if ch == "|"]
    columns = []
    for n, (name, start) in enumerate(found):
        limit = next((b for b in bars if b > start), len(header))
        end = found[n + 1][1] if n + 1 < len(found) else len(header)
        columns.append(_Column(name.lower(), start, min(end, limit)))
    return columns


def _cells(row: str, columns: list[_Column]) -> dict[str, str]:
    """Values of a data row under ``columns``, by where each token starts.

    A value spanning several tokens (``"0    / 0"``, ``"69W / 350W"``) is
    glued first; a token that starts before the first column of its cell
    (right-aligned numbers) counts for the column it overlaps.
    """
    values: dict[str, list[str]] = {c.name: [] for c in columns}
    for match in re.finditer(r"[^|\s]+(?:\s*/\s*[^|\s]+)?", row):
        start, end = match.span()
        owner = next((c for c in columns if c.start <= start < c.end), None)
        owner = owner or next((c for c in columns if start < c.start < end + 1), None)
        if owner is not None:
            values[owner.name].append(match.group())
    return {name: " ".join(tokens) for name, tokens in values.items()}


def box_groups(text: str, stop: str = "process") -> Iterator[list[dict[str, str]]]:
    """Device blocks of a box-drawn table, each a list of rows keyed by header name.

    The header is the run of ``|`` lines just before the first ``+===`` rule;
    each later block of ``|`` lines between rules is one device, its n-th
    row read with the n-th header line (later rows reuse the last one, as
    in npu-smi's extra chip rows). Reading stops at a block mentioning
    ``stop`` (the process table) or at a blank line after the data began.
    """
    lines = text.splitlines()
    rule = next((i for i, line in enumerate(lines) if line.lstrip().startswith("+=")
                 or line.lstrip().startswith("|=")), None)
    if rule is None:
        return
    headers: list[list[_Column]] = []
    for line in reversed(lines[:rule]):
        if not line.lstrip().startswith("|") or set(line.strip()) <= set("|-+"):
            break
        headers.insert(0, _columns(line))
    if not headers:
        return
    block: list[str] = []
    for line in [*lines[rule + 1:], ""]:
        stripped = line.strip()
        if stripped.startswith("|") and not set(stripped) <= set("|-+="):
            block.append(line)
            continue
        if block:
            if stop and stop in block[0].lower():
                return
            yield [_cells(row, headers[min(n, len(headers) - 1)]) for n, row in enumerate(block)]
            block = []
        if not stripped:
            return


# -- indented "-q" reports (mthreads-gmi -q, xpu-smi -q, nvidia-smi -q style) -------------
def query_tree(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Top-level sections of an indented ``Key : value`` report, as nested dicts.

    A line without a colon opens a section; its indented lines belong to it.
    Returns ``[(section title, contents)]`` for the sections at the outermost
    indentation that has sections (``"GPU 00000000:3B:00.0"`` and so on);
    loose ``key : value`` lines at the top are returned under the title "".
    """
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.strip()[0] in "=-+":
            continue  # banners and rules
        indent = len(raw) - len(raw.lstrip())
        while len(stack) > 1 and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        pair = _KEY_VALUE.match(raw.strip())
        if pair:
            parent.setdefault(pair.group(1), pair.group(2))
        else:
            child: dict[str, Any] = {}
            parent[_unique(parent, raw.strip().rstrip(":").strip())] = child
            stack.append((indent, child))
    loose = {k: v for k, v in root.items() if not isinstance(v, dict)}
    sections = [(k, v) for k, v in root.items() if isinstance(v, dict)]
    return ([("", loose)] if loose else []) + sections


# "Key : value": the separator is a colon followed by a space, so bus ids
# ("GPU 00000000:1B:00.0") and times stay whole.
_KEY_VALUE = re.compile(r"^(.*?)\s*:\s+(\S.*)$")


def _unique(parent: Mapping[str, Any], key: str) -> str:
    candidate, n = key, 1
    while candidate in parent:
        n += 1
        candidate = f"{key}#{n}"
    return candidate


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Every ``(dotted key, value)`` of a nested report, depth first."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            yield from leaves(value, path)
        else:
            yield path, value


def error_fields(record: Mapping[str, Any]) -> list[str]:
    """``"key=value"`` for every leaf of ``record`` that reports a fault."""
    return [f"{key}={value}" for key, value in leaves(record) if is_error(value)]


# -- JSON that may come wrapped in warnings --------------------------------------------
def embedded_json(text: str) -> Any:
    """The first JSON object in ``text`` (tools print warnings around it).

    Raises ValueError when there is none or it is cut short.
    """
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the output")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise ValueError(f"truncated or malformed JSON ({err.msg} at {err.pos})") from None
    return value
