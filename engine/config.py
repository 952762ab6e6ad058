"""Settings, read from the environment (prefix ``NEXTBEST_``) or passed in by tests and the CLI."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.posterior import MIN_EXPLORATION


class Settings(BaseSettings):
    """Every knob of a nextbest process. Environment variables: ``NEXTBEST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./nextbest.db",
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
    )
    bootstrap_admin_key: str | None = Field(
        default=None, description="When set, an admin key with this value exists after start-up"
    )
    min_exploration: float = Field(
        default=MIN_EXPLORATION,
        ge=0,
        lt=1,
        description="Share of decisions chosen uniformly among eligible experiences",
    )
    experiment_refresh_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Longest a worker assigns with an outdated list of running experiments",
    )
    posterior_draws: int = Field(
        default=2000, ge=100, le=100_000, description="Joint posterior draws per decision"
    )
    stats_refresh_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Bound on the staleness of a worker's cached statistics: no decision uses "
        "cells read longer ago, so a result stored through any worker counts in every worker's "
        "decisions within this time (0: re-check on every decision)",
    )
    auth_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How long a worker trusts an API key it checked; a key revoked elsewhere "
        "stops working on every worker within this time (0: check every request)",
    )
    maintenance_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How often each worker settles overdue decisions in the background (0: never)",
    )
    rule_runtime: Literal["durable", "python"] = Field(
        default="durable",
        description="What runs the active rule set: durable-rules (contained, with the Python "
        "evaluator as fallback) or the Python evaluator alone",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)"
    )
    max_batch_rows: int = Field(
        default=10_000, ge=1, description="Largest POST /v1/events:batch accepted (413 above)"
    )
    rate_limit_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests a minute each API key may make on each worker, with a burst of as "
        "many (429 with Retry-After above; 0: no limit)",
    )
    session_secret: str | None = Field(
        default=None,
        description="Key that signs the consoles' session cookies; when unset each process "
        "generates one at start (sessions then end with the process, and `nextbest serve` "
        "shares one generated secret among its workers)",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve GET /metrics without an API key (for a scraper on a private network); "
        "by default it needs a service or admin key",
    )
    seed: int | None = Field(
        default=None, description="Seed of the decision sampler (reproducible runs and tests)"
    )
