"""The tables engine/ owns (DESIGN section 4). Schemas for the API live in engine/schemas.py.

Decisions, overrides, reactions and outcomes are append-only. Cell statistics are keyed by the
finest segment (every declared attribute binned, names in order), so any segmentation of the tree
is a sum over these rows and changing the segmentation needs no replay.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column, Dialect, Index, UniqueConstraint, text
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always time-zone aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = _DateTime()
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to an aware column")
        return None if value is None else value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def timestamp_field(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(), **kwargs))


def json_field(**kwargs: Any) -> Any:
    return Field(sa_column=Column(JSON, **kwargs))


def _unique_when_set(name: str, column: str) -> Index:
    """A unique index over the rows where ``column`` is not NULL (SQLite and PostgreSQL)."""
    where = text(f"{column} IS NOT NULL")
    return Index(name, column, unique=True, sqlite_where=where, postgresql_where=where)


class AttributeSpecRow(SQLModel, table=True):
    __tablename__ = "attribute_specs"

    name: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=16)
    levels: list[str] = json_field(nullable=False)
    bins: list[float] = json_field(nullable=False)
    labels: list[str] = json_field(nullable=False)
    description: str = Field(default="", max_length=500)
    created_at: dt.datetime = timestamp_field(nullable=False)
    updated_at: dt.datetime = timestamp_field(nullable=False)


class Customer(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=128)
    name: str | None = Field(default=None, max_length=200, index=True)
    attributes: dict[str, Any] = json_field(nullable=False)
    created_at: dt.datetime = timestamp_field(nullable=False)
    updated_at: dt.datetime = timestamp_field(nullable=False)


class Experience(SQLModel, table=True):
    __tablename__ = "experiences"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=2000)
    cost: float = 0.0
    cost_attribute: str | None = Field(default=None, max_length=64)
    cost_factor: float = 1.0
    cost_on: list[str] | None = json_field(nullable=True)
    is_control: bool = False
    eligibility: str | None = Field(default=None, max_length=2000)
    active: bool = True
    channels: list[str] = json_field(nullable=False)
    created_at: dt.datetime = timestamp_field(nullable=False)
    updated_at: dt.datetime = timestamp_field(nullable=False)


class OutcomeScaleRow(SQLModel, table=True):
    """The single outcome scale (id 1): ordered levels, worst first."""

    __tablename__ = "outcome_scale"

    id: int = Field(default=1, primary_key=True)
    levels: list[dict[str, Any]] = json_field(nullable=False)
    attribution_days: float = 30.0
    default_result: str = Field(max_length=64)
    updated_at: dt.datetime = timestamp_field(nullable=False)


class SegmentationRow(SQLModel, table=True):
    """The single segmentation (id 1): the ordered attributes of the segment tree."""

    __tablename__ = "segmentation"

    id: int = Field(default=1, primary_key=True)
    attributes: list[str] = json_field(nullable=False)
    auto: bool = False
    updated_at: dt.datetime = timestamp_field(nullable=False)


class EngineState(SQLModel, table=True):
    """Settings that give stored statistics their meaning (id 1).

    A result at time t adds weight 2^((t - epoch) / half_life) to its cell, so increments commute
    and plain atomic adds stay exact; the decayed count at time now is weight x 2^(-(now - epoch) /
    half_life). Changing either setting rescales every stored weight.
    """

    __tablename__ = "engine_state"

    id: int = Field(default=1, primary_key=True)
    epoch: dt.datetime = Field(sa_column=Column(DateTime(), nullable=False))
    half_life_days: float = 90.0
    catalog_version: int = 0
    """Bumped by every catalog change so that workers know to reload their snapshot."""


class Decision(SQLModel, table=True):
    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_customer_created", "customer_id", "created_at"),
        Index("ix_decisions_experience_created", "experience_key", "created_at"),
        Index("ix_decisions_experiment_created", "experiment_key", "created_at"),
        Index("ix_decisions_customer_experiment", "customer_id", "experiment_key", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    customer_id: str = Field(foreign_key="customers.id", max_length=128)
    created_at: dt.datetime = timestamp_field(nullable=False, index=True)
    channel: str | None = Field(default=None, max_length=64)
    agent_id: str | None = Field(default=None, max_length=128)
    attributes: dict[str, Any] = json_field(nullable=False)
    segment: str = Field(max_length=2000)
    candidates: list[dict[str, Any]] = json_field(nullable=False)
    experience_key: str = Field(foreign_key="experiences.key", max_length=64)
    propensity: float
    source: str = Field(max_length=32)
    rule_id: str | None = Field(default=None, max_length=128)
    ruleset_version: int | None = None
    experiment_key: str | None = Field(default=None, max_length=64)
    arm: str | None = Field(default=None, max_length=64)
    overrides: dict[str, Any] = json_field(nullable=False)
    """Per-decision level values and experience costs the caller supplied."""


class DecisionOverride(SQLModel, table=True):
    __tablename__ = "decision_overrides"

    decision_id: str = Field(primary_key=True, foreign_key="decisions.id", max_length=36)
    experience_key: str = Field(foreign_key="experiences.key", max_length=64)
    note: str = Field(max_length=2000)
    reason_code: str | None = Field(default=None, max_length=64)
    agent_id: str | None = Field(default=None, max_length=128)
    created_at: dt.datetime = timestamp_field(nullable=False)


class DecisionReaction(SQLModel, table=True):
    __tablename__ = "decision_reactions"

    id: int | None = Field(default=None, primary_key=True)
    decision_id: str = Field(foreign_key="decisions.id", max_length=36, index=True)
    reaction: str = Field(max_length=32)
    created_at: dt.datetime = timestamp_field(nullable=False)


class Outcome(SQLModel, table=True):
    """A result: of a logged decision, or a historical triple (no decision)."""

    __tablename__ = "outcomes"
    # Most results (historical triples) have neither a decision nor an idempotency key: partial
    # unique indexes leave those rows out of both indexes. No index by customer: nothing reads
    # results by customer (exposures and decisions are), and on SQLite it doubled the cost of
    # storing a result.
    __table_args__ = (
        _unique_when_set("ux_outcomes_decision", "decision_id"),
        _unique_when_set("ux_outcomes_idempotency_key", "idempotency_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    decision_id: str | None = Field(default=None, foreign_key="decisions.id", max_length=36)
    customer_id: str = Field(foreign_key="customers.id", max_length=128)
    experience_key: str = Field(foreign_key="experiences.key", max_length=64)
    result: str = Field(max_length=64)
    value: float | None = None
    cost: float | None = None
    occurred_at: dt.datetime = Field(sa_column=Column(DateTime(), nullable=False))
    recorded_at: dt.datetime = timestamp_field(nullable=False)
    attributes: dict[str, Any] = json_field(nullable=False)
    exposure: int = 0
    """How many earlier results this customer had with this experience."""
    source: str = Field(max_length=16)
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)
    held_for: str | None = Field(default=None, max_length=64)
    """The isolated experiment whose result this is: it trains the cells once that experiment is
    concluded (experiments.service), not before."""


class Exposure(SQLModel, table=True):
    __tablename__ = "exposures"

    customer_id: str = Field(primary_key=True, foreign_key="customers.id", max_length=128)
    experience_key: str = Field(primary_key=True, foreign_key="experiences.key", max_length=64)
    count: int = 0


class CellStat(SQLModel, table=True):
    """Sufficient statistics of one finest segment x experience x exposure bucket x level.

    ``weight`` is the decay-scaled count (see EngineState); value and cost sums carry the same
    scaled weights and count only results that reported a realised value or cost.
    """

    __tablename__ = "cell_stats"

    segment: str = Field(primary_key=True, max_length=2000)
    experience_key: str = Field(primary_key=True, max_length=64)
    exposure_bucket: int = Field(primary_key=True)
    level: str = Field(primary_key=True, max_length=64)
    weight: float = 0.0
    value_weight: float = 0.0
    value_sum: float = 0.0
    cost_weight: float = 0.0
    cost_sum: float = 0.0


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    prefix: str = Field(max_length=16, index=True)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: dt.datetime = timestamp_field(nullable=False)
    revoked_at: dt.datetime | None = Field(
        default=None, sa_column=Column(DateTime(), nullable=True)
    )


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime = timestamp_field(nullable=False, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    entity: str = Field(max_length=64)
    entity_id: str = Field(max_length=200)
    before: dict[str, Any] | None = json_field(nullable=True)
    after: dict[str, Any] | None = json_field(nullable=True)


class ImportRun(SQLModel, table=True):
    """One CSV import; a rerun of the same file resumes after the last committed batch."""

    __tablename__ = "import_runs"
    __table_args__ = (UniqueConstraint("kind", "sha256"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    sha256: str = Field(max_length=64)
    filename: str = Field(max_length=500)
    rows_committed: int = 0
    rows_rejected: int = 0
    finished: bool = False
    started_at: dt.datetime = timestamp_field(nullable=False)
    finished_at: dt.datetime | None = Field(
        default=None, sa_column=Column(DateTime(), nullable=True)
    )
