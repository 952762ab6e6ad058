"""Request and response models of experiments (validated at the boundary; the service checks
what needs the catalog: experiences, levels, the eligibility expression)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from engine.schemas import Key, Label, Strict

__all__ = [
    "Allocation",
    "ArmIn",
    "ConcludeIn",
    "ExperimentIn",
    "ExperimentPublic",
    "ExperimentReport",
    "ExperimentStatus",
    "ExperimentUpdate",
    "ExperimentsPublic",
    "GuardrailMetricIn",
    "SegmentWinnerIn",
    "StatusChangeIn",
    "StoppingIn",
]

Allocation = Literal["fixed", "adaptive"]
ExperimentStatus = Literal["draft", "running", "paused", "stopped", "concluded"]
MAX_ARMS = 10


class ArmIn(Strict):
    experience: Key
    weight: float | None = Field(
        default=None, gt=0, le=1e6, description="Fixed allocation only; relative to the others"
    )


class StoppingIn(Strict):
    """Stop when one arm is P(best) >= p_best with expected loss <= expected_loss (both after the
    burn-in), or when max_sample results are in, or at the end date."""

    p_best: float = Field(default=0.95, gt=0.5, lt=1.0)
    expected_loss: float = Field(
        default=1.0, ge=0, le=1e9, description="In the outcome scale's value units per customer"
    )
    max_sample: int | None = Field(default=None, ge=1, le=10**9)
    on_stop: Literal["pause", "conclude"] = "pause"


class GuardrailMetricIn(Strict):
    """Stop an arm whose share of ``level`` exceeds control's by more than ``margin`` with
    posterior probability at least ``probability``."""

    level: Label
    margin: float = Field(default=0.0, ge=0, lt=1)
    probability: float = Field(default=0.99, gt=0.5, lt=1)


class _Definition(Strict):
    name: str = Field(min_length=1, max_length=200)
    hypothesis: str = Field(default="", max_length=2000)
    eligibility: str | None = Field(default=None, min_length=1, max_length=2000)
    allocation: Allocation = "fixed"
    arms: list[ArmIn] = Field(min_length=2, max_length=MAX_ARMS)
    holdout_share: float = Field(default=0.0, ge=0, le=0.5)
    min_share: float = Field(default=0.05, ge=0, le=0.5)
    burn_in: int = Field(default=100, ge=0, le=10**7, description="Results per arm")
    update_minutes: float = Field(default=60.0, ge=1, le=7 * 24 * 60)
    priority: int = Field(default=0, ge=-1000, le=1000)
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    stopping: StoppingIn = Field(default_factory=StoppingIn)
    guardrail: GuardrailMetricIn | None = None
    isolate: bool = Field(
        default=False,
        description="Its customers' results train the main policy only once it is concluded",
    )

    # Field validators (not one model validator) so that each error names its field; fields
    # are declared in the order these checks read them (info.data holds the earlier ones).
    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[ArmIn], info: ValidationInfo) -> list[ArmIn]:
        keys = [arm.experience for arm in arms]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"each experience once; repeated: {', '.join(repeated)}")
        weighted = [arm.weight is not None for arm in arms]
        allocation = info.data.get("allocation", "fixed")
        if allocation == "adaptive" and any(weighted):
            raise ValueError("weights are for fixed allocation; adaptive allocation sets them")
        if allocation == "fixed" and any(weighted) and not all(weighted):
            raise ValueError("give every arm a weight, or none for an equal split")
        return arms

    @field_validator("min_share")
    @classmethod
    def _min_share(cls, min_share: float, info: ValidationInfo) -> float:
        arms = info.data.get("arms") or []
        if info.data.get("allocation") == "adaptive" and min_share * len(arms) > 1:
            raise ValueError(f"{min_share} x {len(arms)} arms is more than all the traffic")
        return min_share

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, for example 2026-12-01T00:00:00Z")
        return value

    @field_validator("end_at")
    @classmethod
    def _after_start(cls, end_at: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        start_at = info.data.get("start_at")
        if end_at is not None and start_at is not None and end_at <= start_at:
            raise ValueError("must be after start_at")
        return end_at


class ExperimentIn(_Definition):
    key: Key


class ExperimentUpdate(Strict):
    """A change to a draft: the fields given replace the stored ones."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    hypothesis: str | None = Field(default=None, max_length=2000)
    eligibility: str | None = Field(default=None, min_length=1, max_length=2000)
    arms: list[ArmIn] | None = Field(default=None, min_length=2, max_length=MAX_ARMS)
    allocation: Allocation | None = None
    holdout_share: float | None = Field(default=None, ge=0, le=0.5)
    min_share: float | None = Field(default=None, ge=0, le=0.5)
    burn_in: int | None = Field(default=None, ge=0, le=10**7)
    update_minutes: float | None = Field(default=None, ge=1, le=7 * 24 * 60)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    stopping: StoppingIn | None = None
    guardrail: GuardrailMetricIn | None = None
    isolate: bool | None = None


class StatusChangeIn(Strict):
    reason: str | None = Field(default=None, max_length=500)


class SegmentWinnerIn(Strict):
    where: str = Field(min_length=1, max_length=2000, description="A rule-language condition")
    experience: Key


class ConcludeIn(Strict):
    """The marketer's decision: one winner, winners per segment, or none."""

    decision: Literal["winner", "segment_winners", "none"]
    winner: Key | None = None
    segment_winners: list[SegmentWinnerIn] | None = Field(default=None, min_length=1, max_length=25)
    note: str = Field(min_length=1, max_length=2000)
    promote: bool = Field(
        default=True, description="Put the winner(s) into the next compiled rule-set version"
    )

    @model_validator(mode="after")
    def _matches_decision(self) -> ConcludeIn:
        if self.decision == "winner" and self.winner is None:
            raise ValueError("winner: name the winning arm when the decision is 'winner'")
        if self.decision != "winner" and self.winner is not None:
            raise ValueError("winner: only for the decision 'winner'")
        if self.decision == "segment_winners" and not self.segment_winners:
            raise ValueError("segment_winners: give at least one when the decision is that")
        if self.decision != "segment_winners" and self.segment_winners:
            raise ValueError("segment_winners: only for the decision 'segment_winners'")
        return self


class ExperimentPublic(BaseModel):
    key: str
    name: str
    hypothesis: str
    eligibility: str | None
    arms: list[dict[str, Any]]
    allocation: str
    control: str | None
    holdout_share: float
    min_share: float
    burn_in: int
    update_minutes: float
    priority: int
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    stopping: dict[str, Any]
    guardrail: dict[str, Any] | None
    isolate: bool
    status: ExperimentStatus
    weights: dict[str, float]
    arm_status: dict[str, Any]
    history: list[dict[str, Any]]
    conclusion: dict[str, Any] | None
    released_at: dt.datetime | None
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    next_cursor: str | None = None


class ExperimentReport(BaseModel):
    """What an experiment shows so far (experiments.report)."""

    key: str
    name: str
    status: ExperimentStatus
    hypothesis: str
    allocation: str
    generated_at: dt.datetime
    levels: list[str]
    arms: list[dict[str, Any]]
    sample_ratio: dict[str, Any]
    stopping: dict[str, Any]
    allocation_over_time: list[dict[str, Any]]
    cumulative_value: list[dict[str, Any]]
    conclusion: dict[str, Any] | None
    plots: dict[str, str]
