"""The experiments package's tables: experiment definitions and their allocation history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from engine.models import DateTime, json_field, timestamp_field


class Experiment(SQLModel, table=True):
    """A marketer's experiment. The definition fields change only while it is a draft; after that
    only the status, the current adaptive weights, the arms' status and the conclusion change, and
    every change is audited (``history`` keeps the status changes too)."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_status", "status"),)

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    hypothesis: str = Field(default="", max_length=2000)
    eligibility: str | None = Field(default=None, max_length=2000)
    arms: list[dict[str, Any]] = json_field(nullable=False)
    """[{"experience": key, "weight": float | None}] in the marketer's order."""
    allocation: str = Field(max_length=16)
    control: str | None = Field(default=None, max_length=64)
    """The arm that is the catalog's control experience, if any (holdout and guardrail use it)."""
    holdout_share: float = 0.0
    min_share: float = 0.0
    burn_in: int = 0
    update_minutes: float = 60.0
    priority: int = 0
    start_at: dt.datetime | None = Field(default=None, sa_column=Column(DateTime(), nullable=True))
    end_at: dt.datetime | None = Field(default=None, sa_column=Column(DateTime(), nullable=True))
    stopping: dict[str, Any] = json_field(nullable=False)
    guardrail: dict[str, Any] | None = json_field(nullable=True)
    isolate: bool = False
    """Its results train the main policy only once it is concluded."""
    status: str = Field(max_length=16)
    weights: dict[str, float] = json_field(nullable=False)
    """The current allocation over arms (holdout included), sums to 1."""
    arm_status: dict[str, Any] = json_field(nullable=False)
    """Arms stopped by the guardrail metric: {experience: {"stopped_at", "reason"}}."""
    history: list[dict[str, Any]] = json_field(nullable=False)
    """Status changes: [{"status", "at", "by", "reason"}]."""
    conclusion: dict[str, Any] | None = json_field(nullable=True)
    released_at: dt.datetime | None = Field(
        default=None, sa_column=Column(DateTime(), nullable=True)
    )
    """When its held-back results started training the main policy (isolated experiments)."""
    created_at: dt.datetime = timestamp_field(nullable=False)
    created_by: str = Field(max_length=200)
    updated_at: dt.datetime = timestamp_field(nullable=False)


class ExperimentAllocation(SQLModel, table=True):
    """One allocation in force from ``at`` on: the expected arm shares that the sample-ratio test
    and the allocation plot compare the assignments with."""

    __tablename__ = "experiment_allocations"

    id: int | None = Field(default=None, primary_key=True)
    experiment_key: str = Field(foreign_key="experiments.key", max_length=64, index=True)
    at: dt.datetime = timestamp_field(nullable=False)
    weights: dict[str, float] = json_field(nullable=False)
    reason: str = Field(max_length=200)
