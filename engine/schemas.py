"""Request and response models of the HTTP API (one family per resource).

Validation happens here, at the boundary; services trust what passes. Checks that need the
database (does this level exist?) live in the services and raise engine.errors.
"""

from __future__ import annotations

import datetime as dt
import math
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.attributes import AttributeType

Key = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]
AttrName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
CustomerId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s/\x00]+$")]
Money = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]
Role = Literal["agent", "marketer", "service", "admin"]
ROLES: tuple[Role, ...] = ("agent", "marketer", "service", "admin")
DecisionSource = Literal["rule", "experiment", "explore", "thompson", "exploit", "agent_override"]
Reaction = Literal["accepted", "declined"]


class Strict(BaseModel):
    """A request body: unknown fields are errors, and no text anywhere in it holds a NUL."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        where = nul_path(data)
        if where is not None:
            raise ValueError(f"{where or 'body'}: text cannot contain NUL (\\u0000) characters")
        return data


def nul_path(data: Any) -> str | None:
    """The dotted path of the first string (value or key) in ``data`` holding a NUL character.

    PostgreSQL cannot store NUL in text, so such input would fail at the database; it is bad
    input and is refused here, naming where it is. Iterative: JSON nests as deep as a parser let
    it.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and "\x00" in key:
                    return child
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


# Errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable: invalid, not_found, conflict, forbidden, ...")
    message: str = Field(description="What is wrong, for a person")
    field: str | None = Field(description="The input at fault, e.g. events.1.result")
    valid: list[Any] | None = Field(default=None, description="The accepted values, if few")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Every problem: per field, or per row of a batch"
    )


class ErrorBody(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail


# Outcome scale --------------------------------------------------------------------------------


class OutcomeLevel(Strict):
    label: Label
    value: Money | None = None
    value_attribute: AttrName | None = None
    value_factor: Money = 1.0

    @model_validator(mode="after")
    def _one_value_source(self) -> OutcomeLevel:
        if self.value is not None and self.value_attribute is not None:
            raise ValueError("give either value or value_attribute, not both")
        return self


class OutcomeScaleIn(Strict):
    levels: list[OutcomeLevel] = Field(min_length=2, max_length=20)
    attribution_days: float = Field(default=30.0, gt=0, le=3650)
    default_result: Label

    @model_validator(mode="after")
    def _labels(self) -> OutcomeScaleIn:
        labels = [level.label for level in self.levels]
        duplicated = sorted({x for x in labels if labels.count(x) > 1})
        if duplicated:
            raise ValueError(f"level labels must be unique; repeated: {', '.join(duplicated)}")
        if self.default_result not in labels:
            raise ValueError(
                f"default_result {self.default_result!r} is not a level; levels: "
                + ", ".join(labels)
            )
        return self


class OutcomeScalePublic(OutcomeScaleIn):
    updated_at: dt.datetime


# Attribute specs ------------------------------------------------------------------------------


class AttributeSpecIn(Strict):
    name: AttrName
    type: AttributeType
    levels: list[Label] = Field(default_factory=list, max_length=200)
    bins: list[float | dt.date] = Field(default_factory=list, max_length=50)
    labels: list[Label] = Field(default_factory=list, max_length=51)
    description: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _shape(self) -> AttributeSpecIn:
        if self.type == "categorical":
            if not self.levels:
                raise ValueError("a categorical attribute needs levels")
            if len(set(self.levels)) != len(self.levels):
                raise ValueError("levels must be unique")
            if "unknown" in self.levels:
                raise ValueError("'unknown' is reserved for a missing value")
        elif self.levels:
            raise ValueError(f"levels apply to categorical attributes, not {self.type}")
        if self.type in ("categorical", "boolean") and (self.bins or self.labels):
            raise ValueError(f"bins apply to numeric and date attributes, not {self.type}")
        edges = self.bin_edges()
        if any(not math.isfinite(e) for e in edges):
            raise ValueError("bins must be finite numbers")
        if any(b <= a for a, b in pairwise(edges)):
            raise ValueError("bins must be strictly ascending")
        if self.labels and len(self.labels) != len(edges) + 1:
            raise ValueError(
                f"{len(edges)} bins make {len(edges) + 1} labels, not {len(self.labels)}"
            )
        return self

    def bin_edges(self) -> list[float]:
        edges: list[float] = []
        for edge in self.bins:
            if self.type == "date":
                if not isinstance(edge, dt.date):
                    raise ValueError("bins of a date attribute must be ISO dates")
                edges.append(float(edge.toordinal()))
            elif isinstance(edge, dt.date):
                raise ValueError("bins of a numeric attribute must be numbers")
            else:
                edges.append(float(edge))
        return edges

    @field_validator("bins", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [dt.date.fromisoformat(v) if isinstance(v, str) else v for v in value]
        return value


class AttributeSpecsIn(Strict):
    attributes: list[AttributeSpecIn] = Field(max_length=100)

    @model_validator(mode="after")
    def _unique(self) -> AttributeSpecsIn:
        names = [a.name for a in self.attributes]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"attribute names must be unique; repeated: {', '.join(duplicated)}")
        return self


class AttributeSpecPublic(BaseModel):
    name: str
    type: AttributeType
    levels: list[str]
    bins: list[float | str]
    labels: list[str]
    segment_levels: list[str]
    description: str


class AttributeSpecsPublic(BaseModel):
    attributes: list[AttributeSpecPublic]


# Experiences ----------------------------------------------------------------------------------


class ExperienceFields(Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    cost: Money = 0.0
    cost_attribute: AttrName | None = None
    cost_factor: Money = 1.0
    cost_on: list[Label] | None = Field(
        default=None, description="Levels on which the cost is incurred; null means always"
    )
    is_control: bool = False
    eligibility: str | None = Field(default=None, max_length=2000)
    active: bool = True
    channels: list[Key] = Field(default_factory=list, max_length=20)


class ExperienceCreate(ExperienceFields):
    key: Key


class ExperienceUpdate(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    cost: Money | None = None
    cost_attribute: AttrName | None = None
    cost_factor: Money | None = None
    cost_on: list[Label] | None = None
    is_control: bool | None = None
    eligibility: str | None = Field(default=None, max_length=2000)
    active: bool | None = None
    channels: list[Key] | None = Field(default=None, max_length=20)


class ExperiencePublic(ExperienceCreate):
    created_at: dt.datetime
    updated_at: dt.datetime


class ExperiencesPublic(BaseModel):
    data: list[ExperiencePublic]


# Segmentation ---------------------------------------------------------------------------------


class SegmentationIn(Strict):
    attributes: list[AttrName] | None = Field(default=None, max_length=8)
    auto: bool = False

    @model_validator(mode="after")
    def _either(self) -> SegmentationIn:
        if self.auto == (self.attributes is not None):
            raise ValueError('give either "attributes" (an ordered list) or "auto": true')
        if self.attributes is not None and len(set(self.attributes)) != len(self.attributes):
            raise ValueError("attributes must not repeat")
        return self


class SegmentationPublic(BaseModel):
    attributes: list[str]
    auto: bool
    updated_at: dt.datetime


class DecayIn(Strict):
    half_life_days: float = Field(
        gt=0, le=36_500, description="Days after which a result counts half as much as a new one"
    )


class DecayPublic(BaseModel):
    half_life_days: float
    epoch: dt.datetime


# Customers ------------------------------------------------------------------------------------

Attributes = Annotated[dict[str, Any], Field(max_length=100)]


class CustomerIn(Strict):
    name: str | None = Field(default=None, max_length=200)
    attributes: Attributes = Field(default_factory=dict)


class CustomerPublic(BaseModel):
    id: str
    name: str | None
    attributes: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class CustomersPublic(BaseModel):
    data: list[CustomerPublic]
    next_cursor: str | None


# Triples --------------------------------------------------------------------------------------


class EventIn(Strict):
    customer_id: CustomerId
    experience: Key
    result: Label
    occurred_at: dt.datetime
    value: Money | None = None
    cost: Money | None = None
    attributes: Attributes = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at needs a time zone, e.g. 2026-10-01T10:00:00Z")
        return value.astimezone(dt.UTC)


class EventsBatchIn(Strict):
    events: list[Any] = Field(min_length=1, description="Event objects; each row is checked")


class EventPublic(BaseModel):
    id: int
    customer_id: str
    experience: str
    result: str
    occurred_at: dt.datetime
    exposure: int


class BatchPublic(BaseModel):
    stored: int
    first_id: int | None
    last_id: int | None


# Decisions and outcomes -----------------------------------------------------------------------


class DecisionIn(Strict):
    customer_id: CustomerId
    attributes: Attributes | None = None
    channel: Key | None = None
    agent_id: str | None = Field(default=None, max_length=128)
    top_k: int = Field(default=3, ge=1, le=50)
    values: dict[Label, Money] | None = Field(default=None, max_length=20)
    costs: dict[Key, Money] | None = Field(default=None, max_length=100)
    exploit: bool = Field(default=False, description="Return the posterior-best, no exploration")


class RankedExperience(BaseModel):
    experience: str
    expected_net_value: float
    ci90: tuple[float, float]
    p_best: float


class RulePublic(BaseModel):
    id: str
    version: int
    text: str


class DecisionExplanation(BaseModel):
    """Why: the customer's segment path, the cell behind each candidate's estimate (its segment,
    exposure bucket and decayed number of results) and the chosen experience's expected result
    distribution."""

    segment_path: list[str]
    evidence: list[dict[str, Any]]
    outcome_distribution: dict[str, float]


class Suppressed(BaseModel):
    experience: str
    guardrail_id: int
    name: str
    kind: str


class DecisionPublic(BaseModel):
    decision_id: str
    customer_id: str
    experience: str
    propensity: float
    source: DecisionSource
    rule: RulePublic | None
    experiment: dict[str, Any] | None
    ranked: list[RankedExperience]
    segment: str
    explanation: DecisionExplanation
    suppressed: list[Suppressed] = Field(
        default_factory=list, description="Candidates a guardrail removed, and which one"
    )
    created_at: dt.datetime


class OutcomeIn(Strict):
    decision_id: str = Field(min_length=1, max_length=36)
    result: Label
    value: Money | None = None
    cost: Money | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: dt.datetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("occurred_at needs a time zone, e.g. 2026-10-01T10:00:00Z")
        return None if value is None else value.astimezone(dt.UTC)


class OutcomePublic(BaseModel):
    id: int
    decision_id: str | None
    customer_id: str
    experience: str
    result: str
    value: float | None
    cost: float | None
    occurred_at: dt.datetime
    recorded_at: dt.datetime


class OverrideIn(Strict):
    experience: Key
    note: str = Field(min_length=1, max_length=2000, description="Why the agent chose otherwise")
    agent_id: str | None = Field(default=None, max_length=128)
    reason_code: Key | None = None

    @field_validator("note")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a note is required: say why you chose otherwise")
        return value.strip()


class OverridePublic(BaseModel):
    decision_id: str
    engine_experience: str
    experience: str
    note: str
    reason_code: str | None
    agent_id: str | None
    created_at: dt.datetime


class ReactionIn(Strict):
    reaction: Reaction


class ReactionPublic(BaseModel):
    decision_id: str
    reaction: Reaction
    created_at: dt.datetime


# Keys -----------------------------------------------------------------------------------------


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="Shown once; only its hash is stored")


# Audit -----------------------------------------------------------------------------------------


class AuditEventPublic(BaseModel):
    id: int
    at: dt.datetime
    actor: str = Field(description="role:name of the key that made the change (or cli, system)")
    action: str
    entity: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditEventsPublic(BaseModel):
    data: list[AuditEventPublic]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page")


# Insights --------------------------------------------------------------------------------------


class NodeExperience(BaseModel):
    experience: str
    n: float = Field(description="Decayed number of results in this cell")
    distribution: dict[str, float] = Field(description="Posterior mean of each result level")
    expected_net_value: float
    ci90: tuple[float, float]
    p_best: float = Field(description="P(this experience is best at this node)")


class SegmentNode(BaseModel):
    segment: str = Field(description='"" is everyone; "plan=basic|tenure_months=<12" a path')
    depth: int
    experiences: list[NodeExperience]


class SegmentInsights(BaseModel):
    segmentation: list[str]
    exposure: int
    levels: list[str]
    half_life_days: float
    as_of: dt.datetime
    kappas: dict[str, list[float]] = Field(
        description="Fitted prior concentration per experience and depth (root first)"
    )
    additive_weights: dict[str, list[float]] = Field(
        description="Weight of the additive model (the attributes' main effects) against the "
        "parent in each fresh cell's prior mean, per experience and depth (root first; 0: the "
        "parent alone, 1: the additive model alone)"
    )
    nodes: list[SegmentNode]


class CustomerScorePublic(BaseModel):
    customer_id: str
    name: str | None
    attributes: dict[str, Any]
    segment: str
    best_experience: str
    best_net_value: float
    control_experience: str
    control_net_value: float
    gain: float = Field(description="Expected net value of the best experience over the control")
    uplift: float = Field(description="Expected gross value of the best over the control")
    cost: float = Field(description="Expected cost of the best experience")
    value_at_stake: float = Field(
        description="Under the control: P(worst result) x the other results' worth over it"
    )


class WorklistPublic(BaseModel):
    items: list[CustomerScorePublic]
    matched: int = Field(description="Customers that pass the filters")
    next_offset: int | None
    as_of: dt.datetime


# Rule sets -------------------------------------------------------------------------------------


class RulesetCompileIn(Strict):
    budget: int = Field(default=25, ge=1, le=200, description="At most this many rules")
    min_support: float = Field(
        default=30.0, ge=0, le=1e9, description="A segment with fewer results folds into its parent"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the posterior draws")


class RulesetSummary(BaseModel):
    version: int
    created_at: dt.datetime
    created_by: str
    active: bool
    activated_at: dt.datetime | None
    activated_by: str | None
    settings: dict[str, Any]
    metrics: dict[str, Any]


class RulesetPublic(RulesetSummary):
    rules: list[dict[str, Any]]
    text: str = Field(description="The whole version as Markdown, one sentence per rule")


class RulesetsPublic(BaseModel):
    data: list[RulesetSummary]
    next_before: int | None


class RulesetDiff(BaseModel):
    from_version: int = Field(alias="from")
    to_version: int = Field(alias="to")
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    metrics: dict[str, Any]

    model_config = {"populate_by_name": True, "serialize_by_alias": True}


# Guardrails ------------------------------------------------------------------------------------


class GuardrailIn(Strict):
    kind: Literal["forbid", "contact_limit", "cooldown", "max_exposures", "budget"]
    name: str = Field(min_length=1, max_length=200)
    experience: Key | None = None
    condition: str | None = Field(default=None, min_length=1, max_length=2000)
    channel: Key | None = None
    limit: int | None = Field(default=None, ge=1, le=10**9)
    period_days: float | None = Field(default=None, gt=0, le=3650)


class GuardrailPublic(BaseModel):
    id: int
    kind: str
    name: str
    experience: str | None
    condition: str | None
    channel: str | None
    limit: int | None
    period_days: float | None
    active: bool
    created_at: dt.datetime
    created_by: str


class GuardrailsPublic(BaseModel):
    data: list[GuardrailPublic]


# Off-policy evaluation -------------------------------------------------------------------------


class EvaluateIn(Strict):
    days: float = Field(default=90.0, gt=0, le=3650, description="Decisions of the last N days")
    where: str | None = Field(default=None, min_length=1, max_length=2000)
    clip: float | None = Field(default=None, ge=1, le=1e6, description="Cap importance weights")


class PolicyValue(BaseModel):
    """Estimates of policies' value per decision from logged decisions (engine.ope)."""

    window: dict[str, Any]
    decisions: dict[str, int]
    overrides: dict[str, Any] = Field(description="Decisions an agent overrode, on their own")
    engine: dict[str, Any] = Field(description="Decisions the engine's choice was delivered for")
    policies: dict[str, Any]


# Agents' view and the marketer's analytics -----------------------------------------------------


class CustomerHistory(BaseModel):
    """A customer's latest decisions, each with its override, reaction and outcome, and the
    number of results on record per experience."""

    customer_id: str
    name: str | None
    last_contact: dt.datetime | None
    decisions: list[dict[str, Any]]
    results_by_experience: dict[str, int]


class OverrideInsights(BaseModel):
    """Override rates (Wilson 95% intervals) and the realised value of overrides against the
    engine's estimate of its own pick (95% intervals); observational (engine.override_insights)."""

    window: dict[str, Any]
    decisions: int
    overrides: int
    override_rate: dict[str, Any]
    value: dict[str, Any]
    by_agent: list[dict[str, Any]]
    by_reason: list[dict[str, Any]]
    note: str


class CustomerValue(BaseModel):
    """Realised net value per customer: its concentration and its segments
    (engine.customer_value)."""

    window: dict[str, Any]
    customers: int
    customers_with_results: int
    total: float
    mean: float | None
    negative_customers: int
    top: float
    top_share: float | None = Field(description="Share of value from the top customers")
    curve: list[dict[str, float]]
    depth: int
    segmentation: list[str]
    by_segment: list[dict[str, Any]]
    as_of: dt.datetime
