"""What a result is worth and what an experience costs, for one customer (DESIGN section 4).

Pure functions. A level's value is fixed, or a numeric attribute times a factor (retained = 1.0 x
clv), or learned from realised values when the level declares neither (NaN here: the posterior
fills it in per cell). An experience's cost is fixed, or an attribute times a factor, and is
incurred only on the levels named in ``cost_on`` (all levels when ``cost_on`` is None). A caller
may override level values and costs for one decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.catalog import ExperienceInfo, Scale


def level_values(
    scale: Scale, attributes: Mapping[str, Any], overrides: Mapping[str, float] | None = None
) -> np.ndarray:
    """Value of each level for this customer: shape (L,); NaN where the value is to be learned."""
    values = np.full(len(scale.levels), np.nan)
    for i, level in enumerate(scale.levels):
        if overrides and level.label in overrides:
            values[i] = overrides[level.label]
        elif level.value_attribute is not None:
            raw = attributes.get(level.value_attribute)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                values[i] = float(raw) * level.value_factor
        elif level.value is not None:
            values[i] = level.value
    return values


def experience_cost(
    experience: ExperienceInfo,
    attributes: Mapping[str, Any],
    overrides: Mapping[str, float] | None = None,
) -> float:
    """The cost of one use of ``experience`` for this customer (before ``cost_on`` applies).

    An attribute-based cost falls back to the fixed cost when the customer lacks the attribute.
    """
    if overrides and experience.key in overrides:
        return float(overrides[experience.key])
    if experience.cost_attribute is not None:
        raw = attributes.get(experience.cost_attribute)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw) * experience.cost_factor
    return experience.cost


def cost_by_level(
    experience: ExperienceInfo,
    scale: Scale,
    attributes: Mapping[str, Any],
    overrides: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Cost incurred on each level: shape (L,); zero on levels outside ``cost_on``."""
    cost = experience_cost(experience, attributes, overrides)
    if experience.cost_on is None:
        return np.full(len(scale.levels), cost)
    return np.array([cost if label in experience.cost_on else 0.0 for label in scale.labels])
