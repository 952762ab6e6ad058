"""The business catalog: outcome scale, attribute specs, experiences and segmentation.

Services take a session and keyword arguments, validate against what is stored, audit every change
and bump ``EngineState.catalog_version`` so that workers reload their ``Catalog`` snapshot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from engine import audit
from engine.attributes import AttributeSpec, segment_key
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import (
    AttributeSpecRow,
    EngineState,
    Experience,
    Outcome,
    OutcomeScaleRow,
    SegmentationRow,
    utcnow,
)
from engine.schemas import (
    AttributeSpecsIn,
    DecayIn,
    ExperienceCreate,
    ExperienceUpdate,
    OutcomeScaleIn,
    SegmentationIn,
)


@dataclass(frozen=True)
class Level:
    label: str
    value: float | None
    value_attribute: str | None = None
    value_factor: float = 1.0


@dataclass(frozen=True)
class Scale:
    levels: tuple[Level, ...]
    attribution_days: float
    default_result: str

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(level.label for level in self.levels)

    @property
    def per_customer(self) -> bool:
        """Whether some level's value comes from the customer's attributes."""
        return any(level.value_attribute is not None for level in self.levels)

    def index(self, label: str) -> int:
        return self.labels.index(label)


@dataclass(frozen=True)
class ExperienceInfo:
    key: str
    name: str
    cost: float
    cost_attribute: str | None
    cost_factor: float
    cost_on: tuple[str, ...] | None
    is_control: bool
    eligibility: str | None
    active: bool
    channels: tuple[str, ...]


SEGMENT_MEMO_SIZE = 100_000


@dataclass(frozen=True)
class Catalog:
    """An immutable snapshot of everything a decision or an event needs from the catalog."""

    version: int
    specs: Mapping[str, AttributeSpec]
    scale: Scale | None
    experiences: Mapping[str, ExperienceInfo]
    segmentation: tuple[str, ...]
    epoch: dt.datetime
    half_life_days: float
    _spec_order: tuple[str, ...] = field(default=())
    _segment_memo: dict[tuple[Any, ...], str] = field(default_factory=dict, compare=False)

    def finest_segment(self, attributes: Mapping[str, Any]) -> str:
        """The cell key: every declared attribute binned, in name order (memoised: customers'
        attribute values repeat, binning them is most of the cost of a large import)."""
        values = tuple(map(attributes.get, self._spec_order))
        found = self._segment_memo.get(values)
        if found is None:
            if len(self._segment_memo) >= SEGMENT_MEMO_SIZE:
                self._segment_memo.clear()
            found = segment_key(self.specs, self._spec_order, attributes)
            self._segment_memo[values] = found
        return found

    def require_scale(self) -> Scale:
        if self.scale is None:
            raise Conflict(
                "no outcome scale is defined yet; define it with PUT /v1/outcome-scale",
                field="result",
            )
        return self.scale

    def experience(self, key: str, *, field: str = "experience") -> ExperienceInfo:
        info = self.experiences.get(key)
        if info is None:
            valid = sorted(self.experiences)
            raise InvalidInput(
                f"unknown experience {key!r}; experiences: {', '.join(valid) or 'none defined'}",
                field=field,
                valid=valid,
            )
        return info

    def result_index(self, label: str, *, field: str = "result") -> int:
        scale = self.require_scale()
        try:
            return scale.index(label)
        except ValueError:
            raise InvalidInput(
                f"unknown result {label!r}; levels: {', '.join(scale.labels)}",
                field=field,
                valid=list(scale.labels),
            ) from None


# Loading ---------------------------------------------------------------------------------------


def engine_state(session: Session) -> EngineState:
    state = session.get(EngineState, 1)
    if state is None:
        today = _midnight(utcnow())
        state = EngineState(id=1, epoch=today, half_life_days=90.0, catalog_version=0)
        session.add(state)
        session.flush()
    return state


def load_catalog(session: Session) -> Catalog:
    state = engine_state(session)
    specs = {row.name: spec_from_row(row) for row in session.exec(select(AttributeSpecRow))}
    scale_row = session.get(OutcomeScaleRow, 1)
    segmentation = session.get(SegmentationRow, 1)
    experiences = {
        row.key: ExperienceInfo(
            key=row.key,
            name=row.name,
            cost=row.cost,
            cost_attribute=row.cost_attribute,
            cost_factor=row.cost_factor,
            cost_on=None if row.cost_on is None else tuple(row.cost_on),
            is_control=row.is_control,
            eligibility=row.eligibility,
            active=row.active,
            channels=tuple(row.channels),
        )
        for row in session.exec(select(Experience).order_by(col(Experience.key)))
    }
    return Catalog(
        version=state.catalog_version,
        specs=specs,
        scale=None if scale_row is None else _scale_from_row(scale_row),
        experiences=experiences,
        segmentation=() if segmentation is None else tuple(segmentation.attributes),
        epoch=state.epoch,
        half_life_days=state.half_life_days,
        _spec_order=tuple(sorted(specs)),
    )


def current_catalog(session: Session, catalog: Catalog) -> Catalog:
    """``catalog`` if it is still current in the caller's transaction, else the catalog reloaded.

    Writers of cell statistics call this before they write. On PostgreSQL it takes a share lock
    on the engine state row until the transaction ends, and every catalog change updates that
    row before it touches the cells: a change either commits before the writer reads the version
    (the writer reloads and bins, weighs and decays as the change says), or waits for the writer
    to commit (and its rebuild sees the writer's rows). On SQLite, BEGIN IMMEDIATE already runs
    writers one at a time.
    """
    statement = select(EngineState.catalog_version).where(col(EngineState.id) == 1)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(read=True)
    version = session.exec(statement).first()
    return catalog if version == catalog.version else load_catalog(session)


def spec_from_row(row: AttributeSpecRow) -> AttributeSpec:
    return AttributeSpec(
        name=row.name,
        type=row.type,  # type: ignore[arg-type]
        levels=tuple(row.levels),
        bins=tuple(row.bins),
        labels=tuple(row.labels),
    )


def _scale_from_row(row: OutcomeScaleRow) -> Scale:
    return Scale(
        levels=tuple(
            Level(
                label=level["label"],
                value=level.get("value"),
                value_attribute=level.get("value_attribute"),
                value_factor=level.get("value_factor", 1.0),
            )
            for level in row.levels
        ),
        attribution_days=row.attribution_days,
        default_result=row.default_result,
    )


def bump_catalog(session: Session) -> None:
    """Move the catalog version: every worker reloads its catalog (and what hangs on it)."""
    engine_state(session)
    session.execute(
        update(EngineState)
        .where(col(EngineState.id) == 1)
        .values(catalog_version=EngineState.catalog_version + 1)
    )


# Outcome scale ---------------------------------------------------------------------------------


def get_outcome_scale(*, session: Session) -> OutcomeScaleRow:
    row = session.get(OutcomeScaleRow, 1)
    if row is None:
        raise NotFound("no outcome scale is defined yet; PUT /v1/outcome-scale defines it")
    return row


def put_outcome_scale(*, session: Session, scale_in: OutcomeScaleIn, actor: str) -> OutcomeScaleRow:
    specs = {row.name: row for row in session.exec(select(AttributeSpecRow))}
    for i, level in enumerate(scale_in.levels):
        if level.value_attribute is None:
            continue
        spec = specs.get(level.value_attribute)
        if spec is None or spec.type != "numeric":
            numeric = sorted(n for n, s in specs.items() if s.type == "numeric")
            raise InvalidInput(
                f"value_attribute {level.value_attribute!r} is not a declared numeric attribute; "
                f"numeric attributes: {', '.join(numeric) or 'none'}",
                field=f"levels.{i}.value_attribute",
                valid=numeric,
            )
    row = session.get(OutcomeScaleRow, 1)
    labels = [level.label for level in scale_in.levels]
    used = _used_results(session)
    missing = sorted(used - set(labels))
    if missing:
        raise Conflict(
            f"results already recorded use levels that the new scale drops: {', '.join(missing)}",
            field="levels",
        )
    _check_cost_levels(session, labels)
    before = None if row is None else _scale_dump(row)
    if row is None:
        row = OutcomeScaleRow(id=1, levels=[], default_result=scale_in.default_result)
    row.levels = [level.model_dump() for level in scale_in.levels]
    row.attribution_days = scale_in.attribution_days
    row.default_result = scale_in.default_result
    row.updated_at = utcnow()
    session.add(row)
    bump_catalog(session)
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="outcome_scale",
        entity_id="1",
        before=before,
        after=_scale_dump(row),
    )
    return row


def _scale_dump(row: OutcomeScaleRow) -> dict[str, Any]:
    return {
        "levels": row.levels,
        "attribution_days": row.attribution_days,
        "default_result": row.default_result,
    }


def _used_results(session: Session) -> set[str]:
    return set(session.exec(select(Outcome.result).distinct()))


def _check_cost_levels(session: Session, labels: Sequence[str]) -> None:
    for experience in session.exec(select(Experience)):
        stale = sorted(set(experience.cost_on or ()) - set(labels))
        if stale:
            raise Conflict(
                f"experience {experience.key!r} incurs its cost on levels the new scale drops: "
                f"{', '.join(stale)}; update the experience first",
                field="levels",
            )


# Attribute specs -------------------------------------------------------------------------------


def list_attribute_specs(*, session: Session) -> list[AttributeSpecRow]:
    return list(session.exec(select(AttributeSpecRow).order_by(col(AttributeSpecRow.name))))


def put_attribute_specs(
    *, session: Session, specs_in: AttributeSpecsIn, actor: str
) -> list[AttributeSpecRow]:
    """Replace the declared attributes. Cells are re-keyed by replaying the log if bins changed."""
    from engine import stats

    old = {row.name: row for row in session.exec(select(AttributeSpecRow))}
    new_names = {a.name for a in specs_in.attributes}
    segmentation = session.get(SegmentationRow, 1)
    dropped = sorted(set(segmentation.attributes if segmentation else ()) - new_names)
    if dropped:
        raise Conflict(
            f"the segmentation uses attributes this change drops: {', '.join(dropped)}; "
            "change the segmentation first",
            field="attributes",
        )
    before = {name: _spec_dump(row) for name, row in old.items()}
    now = utcnow()
    for name, row in old.items():
        if name not in new_names:
            session.delete(row)
    for spec_in in specs_in.attributes:
        row = old.get(spec_in.name) or AttributeSpecRow(
            name=spec_in.name, type=spec_in.type, levels=[], bins=[], labels=[], created_at=now
        )
        row.type = spec_in.type
        row.levels = list(spec_in.levels)
        row.bins = spec_in.bin_edges()
        row.labels = list(spec_in.labels)
        row.description = spec_in.description
        row.updated_at = now
        session.add(row)
    session.flush()
    _check_experience_rules(session)
    after = {row.name: _spec_dump(row) for row in list_attribute_specs(session=session)}
    bump_catalog(session)
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="attribute_specs",
        entity_id="*",
        before=before,
        after=after,
    )
    if _binning(before) != _binning(after):
        stats.rebuild_cells(session=session, catalog=load_catalog(session))
    return list_attribute_specs(session=session)


def _spec_dump(row: AttributeSpecRow) -> dict[str, Any]:
    return {
        "type": row.type,
        "levels": list(row.levels),
        "bins": list(row.bins),
        "labels": list(row.labels),
        "description": row.description,
    }


def _binning(dump: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        n: (d["type"], tuple(d["levels"]), tuple(d["bins"]), tuple(d["labels"]))
        for n, d in dump.items()
    }


def _check_experience_rules(session: Session) -> None:
    from rules.language import parse_rule

    specs = {row.name: spec_from_row(row) for row in session.exec(select(AttributeSpecRow))}
    for experience in session.exec(select(Experience)):
        if experience.eligibility:
            try:
                parse_rule(experience.eligibility, specs)
            except InvalidInput as error:
                raise Conflict(
                    f"experience {experience.key!r} has an eligibility rule this change breaks: "
                    f"{error.message}",
                    field="attributes",
                ) from None
        if experience.cost_attribute and experience.cost_attribute not in specs:
            raise Conflict(
                f"experience {experience.key!r} takes its cost from {experience.cost_attribute!r}, "
                "which this change drops",
                field="attributes",
            )


def public_spec(row: AttributeSpecRow) -> dict[str, Any]:
    spec = spec_from_row(row)
    bins: list[float | str] = (
        [dt.date.fromordinal(int(b)).isoformat() for b in row.bins]
        if row.type == "date"
        else list(row.bins)
    )
    return {
        "name": row.name,
        "type": row.type,
        "levels": row.levels,
        "bins": bins,
        "labels": row.labels,
        "segment_levels": list(spec.segment_levels()),
        "description": row.description,
    }


# Experiences -----------------------------------------------------------------------------------


def list_experiences(*, session: Session, active: bool | None = None) -> list[Experience]:
    query = select(Experience).order_by(col(Experience.key))
    if active is not None:
        query = query.where(col(Experience.active) == active)
    return list(session.exec(query))


def get_experience(*, session: Session, key: str) -> Experience:
    row = session.get(Experience, key)
    if row is None:
        raise NotFound(f"no experience {key!r}", field="key")
    return row


def create_experience(
    *, session: Session, experience_in: ExperienceCreate, actor: str
) -> Experience:
    if session.get(Experience, experience_in.key) is not None:
        raise Conflict(f"experience {experience_in.key!r} exists already", field="key")
    _validate_experience(session, experience_in.model_dump())
    row = Experience(**experience_in.model_dump())
    session.add(row)
    session.flush()
    bump_catalog(session)
    audit.record(
        session,
        actor=actor,
        action="create",
        entity="experience",
        entity_id=row.key,
        before=None,
        after=_experience_dump(row),
    )
    return row


def update_experience(
    *, session: Session, key: str, experience_update: ExperienceUpdate, actor: str
) -> Experience:
    row = get_experience(session=session, key=key)
    before = _experience_dump(row)
    changes = experience_update.model_dump(exclude_unset=True)
    for name in ("name", "cost", "cost_factor", "is_control", "active", "channels"):
        if name in changes and changes[name] is None:
            raise InvalidInput(f"{name} cannot be null", field=name)
    merged = {**before, **changes}
    _validate_experience(session, merged)
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    bump_catalog(session)
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="experience",
        entity_id=key,
        before=before,
        after=_experience_dump(row),
    )
    return row


def _experience_dump(row: Experience) -> dict[str, Any]:
    return row.model_dump(exclude={"created_at", "updated_at"})


def _validate_experience(session: Session, fields: Mapping[str, Any]) -> None:
    from rules.language import parse_rule

    specs = {row.name: spec_from_row(row) for row in session.exec(select(AttributeSpecRow))}
    cost_attribute = fields.get("cost_attribute")
    if cost_attribute is not None and (
        cost_attribute not in specs or specs[cost_attribute].type != "numeric"
    ):
        numeric = sorted(n for n, s in specs.items() if s.type == "numeric")
        raise InvalidInput(
            f"cost_attribute {cost_attribute!r} is not a declared numeric attribute; "
            f"numeric attributes: {', '.join(numeric) or 'none'}",
            field="cost_attribute",
            valid=numeric,
        )
    cost_on = fields.get("cost_on")
    if cost_on is not None:
        scale = session.get(OutcomeScaleRow, 1)
        labels = [level["label"] for level in scale.levels] if scale else []
        unknown = [label for label in cost_on if label not in labels]
        if unknown:
            raise InvalidInput(
                f"cost_on names levels the outcome scale does not have: {', '.join(unknown)}; "
                f"levels: {', '.join(labels) or 'none (define the outcome scale first)'}",
                field="cost_on",
                valid=labels,
            )
    eligibility = fields.get("eligibility")
    if eligibility:
        parse_rule(eligibility, specs, field="eligibility")


# Segmentation ----------------------------------------------------------------------------------


def get_segmentation(*, session: Session) -> SegmentationRow:
    row = session.get(SegmentationRow, 1)
    return row if row is not None else SegmentationRow(id=1, attributes=[], auto=False)


def put_segmentation(
    *, session: Session, segmentation_in: SegmentationIn, actor: str
) -> SegmentationRow:
    from engine import segments

    specs = {row.name: spec_from_row(row) for row in session.exec(select(AttributeSpecRow))}
    if segmentation_in.attributes is not None:
        for i, name in enumerate(segmentation_in.attributes):
            if name not in specs:
                raise InvalidInput(
                    f"unknown attribute {name!r}; declared attributes: "
                    f"{', '.join(sorted(specs)) or 'none'}",
                    field=f"attributes.{i}",
                    valid=sorted(specs),
                )
        order = list(segmentation_in.attributes)
    else:
        order = segments.choose_segmentation(session=session, catalog=load_catalog(session))
    row = session.get(SegmentationRow, 1)
    before = None if row is None else {"attributes": row.attributes, "auto": row.auto}
    if row is None:
        row = SegmentationRow(id=1, attributes=[])
    row.attributes = order
    row.auto = segmentation_in.auto
    row.updated_at = utcnow()
    session.add(row)
    bump_catalog(session)
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="segmentation",
        entity_id="1",
        before=before,
        after={"attributes": order, "auto": row.auto},
    )
    return row


# Decay -----------------------------------------------------------------------------------------

REBASE_AFTER_HALF_LIVES = 64.0
"""Stored weights grow as 2^(half-lives since the epoch); past this many (2^64, about 1.8e19,
far inside float64's range and exact in relative terms) maintenance moves the epoch forward."""


def put_decay(*, session: Session, decay_in: DecayIn, actor: str) -> EngineState:
    """Set the half-life of evidence. The cells are rebuilt from the log with the new half-life
    (a weighted sum of the old powers cannot be re-weighted), at a fresh epoch."""
    from engine import stats

    bump_catalog(
        session
    )  # first: writers of statistics wait for this transaction (current_catalog)
    state = engine_state(session)
    session.refresh(state)
    before = {"half_life_days": state.half_life_days, "epoch": state.epoch.isoformat()}
    if decay_in.half_life_days != state.half_life_days:
        state.half_life_days = decay_in.half_life_days
        state.epoch = _midnight(utcnow())
        session.add(state)
        session.flush()
        stats.rebuild_cells(session=session, catalog=load_catalog(session))
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="decay",
        entity_id="1",
        before=before,
        after={"half_life_days": state.half_life_days, "epoch": state.epoch.isoformat()},
    )
    return state


def rebase_if_due(*, session: Session, now: dt.datetime) -> bool:
    """Move the epoch to ``now``'s midnight once weights have grown past
    REBASE_AFTER_HALF_LIVES half-lives: every stored weight and sum is multiplied by the same
    power of two, so decayed counts do not change. Returns whether it re-based."""
    from engine import stats

    state = engine_state(session)
    half_lives = (now - state.epoch).total_seconds() / 86400.0 / state.half_life_days
    if half_lives < REBASE_AFTER_HALF_LIVES:
        return False
    bump_catalog(session)
    session.refresh(state)
    new_epoch = _midnight(now)
    if new_epoch == state.epoch:  # another worker re-based while this one waited for the lock
        return False
    before = {"half_life_days": state.half_life_days, "epoch": state.epoch.isoformat()}
    stats.scale_cells(
        session,
        stats.decay_factor(new_epoch, epoch=state.epoch, half_life_days=state.half_life_days),
    )
    state.epoch = new_epoch
    session.add(state)
    session.flush()
    audit.record(
        session,
        actor="system:upkeep",
        action="rebase",
        entity="decay",
        entity_id="1",
        before=before,
        after={"half_life_days": state.half_life_days, "epoch": new_epoch.isoformat()},
    )
    return True


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)
