"""The rules package's tables: rule-set versions and guardrails (DESIGN section 4)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from engine.models import DateTime, json_field, timestamp_field


class RuleSetVersion(SQLModel, table=True):
    """An immutable compiled rule list. ``rules`` holds each rule's AST (JSON), recommendation
    and metrics; ``text`` the whole version as Markdown; ``metrics`` the value loss against the
    full posterior policy and the agreement with it. Only the activation fields ever change."""

    __tablename__ = "rule_sets"

    version: int | None = Field(default=None, primary_key=True)
    created_at: dt.datetime = timestamp_field(nullable=False)
    created_by: str = Field(max_length=200)
    settings: dict[str, Any] = json_field(nullable=False)
    rules: list[dict[str, Any]] = json_field(nullable=False)
    metrics: dict[str, Any] = json_field(nullable=False)
    text: str
    active: bool = Field(default=False, index=True)
    activated_at: dt.datetime | None = Field(
        default=None, sa_column=Column(DateTime(), nullable=True)
    )
    activated_by: str | None = Field(default=None, max_length=200)


class Guardrail(SQLModel, table=True):
    """A marketer's limit, enforced before the engine chooses (rules.guardrails)."""

    __tablename__ = "guardrails"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    name: str = Field(max_length=200)
    experience_key: str | None = Field(default=None, foreign_key="experiences.key", max_length=64)
    condition: str | None = Field(default=None, max_length=2000)
    channel: str | None = Field(default=None, max_length=64)
    limit: int | None = None
    period_days: float | None = None
    active: bool = True
    created_at: dt.datetime = timestamp_field(nullable=False)
    created_by: str = Field(max_length=200)
