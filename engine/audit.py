"""The append-only audit trail: who changed what, when, before and after.

Every change to the catalog, rule sets, guardrails, keys and every override calls ``record`` in
the transaction of the change, so the event commits or rolls back with it. Nothing updates or
deletes an event; ``list_events`` is the only reader (``GET /v1/audit``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, col, select

from engine.errors import InvalidInput
from engine.models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Add an audit event to the caller's transaction (it commits or rolls back with the change)."""
    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=_jsonable(before),
            after=_jsonable(after),
        )
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def list_events(
    *,
    session: Session,
    limit: int,
    cursor: str | None = None,
    entity: str | None = None,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """Events newest first, filtered by equality on each given field and ``since <= at < until``.

    The cursor is the id of the last event of the previous page: ids only grow, so a page never
    repeats or skips an event written while a caller pages.
    """
    statement = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit + 1)
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 18:
            message = f"cursor {cursor!r} is not a cursor this API returned"
            raise InvalidInput(message, field="cursor")
        statement = statement.where(col(AuditEvent.id) < int(cursor))
    for name, value in (
        ("entity", entity),
        ("entity_id", entity_id),
        ("actor", actor),
        ("action", action),
    ):
        if value is not None:
            statement = statement.where(col(getattr(AuditEvent, name)) == value)
    if since is not None:
        statement = statement.where(col(AuditEvent.at) >= _aware(since))
    if until is not None:
        statement = statement.where(col(AuditEvent.at) < _aware(until))
    rows = list(session.exec(statement))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1].id) if more and rows else None)


def _aware(value: dt.datetime) -> dt.datetime:
    """A query time without a zone is taken as UTC, the zone every stored time is in."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


__all__ = ["list_events", "record"]
