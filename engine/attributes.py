"""Customer attribute specs: validation of attribute values and binning into segment levels.

Pure code, no I/O. An ``AttributeSpec`` is the validated, immutable form of one declared attribute;
the database row (``engine.models.AttributeSpecRow``) stores the same fields.
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any, Literal

from engine.errors import InvalidInput

AttributeType = Literal["categorical", "numeric", "boolean", "date"]
ATTRIBUTE_TYPES: tuple[AttributeType, ...] = ("categorical", "numeric", "boolean", "date")
MISSING = "unknown"
"""The segment level of a customer whose attribute is missing."""

AttributeValue = str | float | int | bool | dt.date


@dataclass(frozen=True)
class AttributeSpec:
    """One declared customer attribute.

    categorical: ``levels`` lists the allowed values. numeric: optional ascending ``bins`` edges cut
    the line into ``len(bins) + 1`` half-open intervals ``[lo, hi)`` labelled ``<12``, ``12-36``,
    ``36+`` (or ``labels``). boolean: levels ``true``/``false``. date: ISO dates, binned by ``bins``
    given as ISO dates when present.
    """

    name: str
    type: AttributeType
    levels: tuple[str, ...] = ()
    bins: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()

    def segment_levels(self) -> tuple[str, ...]:
        """The levels this attribute takes in the segment tree (without ``unknown``)."""
        return self._segment_levels

    @cached_property
    def _segment_levels(self) -> tuple[str, ...]:
        if self.type == "categorical":
            return self.levels
        if self.type == "boolean":
            return ("true", "false")
        if self.labels:
            return self.labels
        return default_bin_labels(self.bins, dates=self.type == "date")

    def bin(self, value: AttributeValue | None) -> str:
        """The segment level of a validated value (``unknown`` when missing)."""
        if value is None:
            return MISSING
        if self.type == "categorical":
            return str(value)
        if self.type == "boolean":
            return "true" if value else "false"
        if not self.bins:
            return "all"
        x = value.toordinal() if isinstance(value, dt.date) else float(value)
        return self.segment_levels()[bisect_right(self.bins, x)]


def default_bin_labels(edges: Sequence[float], *, dates: bool = False) -> tuple[str, ...]:
    """Labels for the intervals cut by ``edges``: ``<a``, ``a-b``, ..., ``z+``; ``all`` if none."""
    if not edges:
        return ("all",)
    shown = [_show_edge(e, dates=dates) for e in edges]
    inner = [f"{lo}-{hi}" for lo, hi in pairwise(shown)]
    return (f"<{shown[0]}", *inner, f"{shown[-1]}+")


def _show_edge(edge: float, *, dates: bool) -> str:
    if dates:
        return dt.date.fromordinal(int(edge)).isoformat()
    return str(int(edge)) if float(edge).is_integer() else f"{edge:g}"


def coerce_value(spec: AttributeSpec, value: Any, *, field: str) -> AttributeValue | None:
    """Validate one raw value (JSON or CSV text) against its spec; ``None``/"" mean missing."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if spec.type == "categorical":
        text = value if isinstance(value, str) else None
        if text is None or text not in spec.levels:
            raise InvalidInput(
                f"{value!r} is not a level of {spec.name}; valid levels: {', '.join(spec.levels)}",
                field=field,
                valid=list(spec.levels),
            )
        return text
    if spec.type == "numeric":
        number = _as_number(value)
        if number is None:
            raise InvalidInput(f"{spec.name} must be a number, got {value!r}", field=field)
        return number
    if spec.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOLEAN_TEXT:
            return BOOLEAN_TEXT[value.strip().lower()]
        raise InvalidInput(f"{spec.name} must be true or false, got {value!r}", field=field)
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else _reject_date(value)
    except ValueError:
        raise InvalidInput(
            f"{spec.name} must be an ISO date (YYYY-MM-DD), got {value!r}", field=field
        ) from None


BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _reject_date(value: Any) -> dt.date:
    raise ValueError(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def validate_attributes(
    specs: Mapping[str, AttributeSpec], raw: Mapping[str, Any], *, field: str = "attributes"
) -> dict[str, AttributeValue | None]:
    """Validate a dict of raw attribute values; unknown names are rejected with the valid ones."""
    clean: dict[str, AttributeValue | None] = {}
    for name, value in raw.items():
        spec = specs.get(name)
        if spec is None:
            valid = sorted(specs)
            raise InvalidInput(
                f"unknown attribute {name!r}; declared attributes: "
                + (", ".join(valid) if valid else "none (declare them with PUT /v1/attributes)"),
                field=f"{field}.{name}",
                valid=valid,
            )
        clean[name] = coerce_value(spec, value, field=f"{field}.{name}")
    return clean


def to_json_value(value: AttributeValue | None) -> str | float | bool | None:
    """The JSON form of a validated value (dates as ISO strings, integral floats kept as floats)."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_json_value(spec: AttributeSpec, value: Any) -> AttributeValue | None:
    """Inverse of ``to_json_value`` for values already validated when stored."""
    if value is None:
        return None
    if spec.type == "date" and isinstance(value, str):
        return dt.date.fromisoformat(value)
    return value  # type: ignore[no-any-return]


def segment_key(
    specs: Mapping[str, AttributeSpec],
    order: Sequence[str],
    attributes: Mapping[str, Any],
    depth: int | None = None,
) -> str:
    """The key of the segment node at ``depth`` along ``order`` for a customer; root is ``""``.

    ``attributes`` holds JSON values as stored. The key reads ``plan=premium|tenure_months=<12``.
    """
    parts = []
    for name in order[: len(order) if depth is None else depth]:
        spec = specs[name]
        parts.append(f"{name}={spec.bin(from_json_value(spec, attributes.get(name)))}")
    return "|".join(parts)


def segment_path(
    specs: Mapping[str, AttributeSpec], order: Sequence[str], attributes: Mapping[str, Any]
) -> list[str]:
    """Keys of every node from the root down to the leaf for a customer: shape (len(order) + 1,)."""
    keys = [""]
    for name in order:
        spec = specs[name]
        part = f"{name}={spec.bin(from_json_value(spec, attributes.get(name)))}"
        keys.append(part if not keys[-1] else f"{keys[-1]}|{part}")
    return keys
