"""Customers: upsert, read, cursor-paged list; attribute validation against the declared specs."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, col, select

from engine.attributes import to_json_value, validate_attributes
from engine.catalog import Catalog
from engine.errors import InvalidInput, NotFound
from engine.models import Customer, utcnow
from engine.schemas import CustomerIn


def clean_attributes(
    catalog: Catalog, raw: Mapping[str, Any], *, field: str = "attributes"
) -> dict[str, Any]:
    """Validated attributes as stored JSON (missing values dropped)."""
    clean = validate_attributes(catalog.specs, raw, field=field)
    return {name: to_json_value(value) for name, value in clean.items() if value is not None}


def upsert_customer(
    *, session: Session, catalog: Catalog, customer_id: str, customer_in: CustomerIn
) -> tuple[Customer, bool]:
    """Create the customer or replace its profile. Returns (customer, created)."""
    attributes = clean_attributes(catalog, customer_in.attributes)
    row = session.get(Customer, customer_id)
    created = row is None
    now = utcnow()
    if row is None:
        row = Customer(id=customer_id, attributes={}, created_at=now)
    row.name = customer_in.name if customer_in.name is not None else row.name
    row.attributes = attributes
    row.updated_at = now
    session.add(row)
    session.flush()
    return row, created


def get_customer(*, session: Session, customer_id: str) -> Customer:
    row = session.get(Customer, customer_id)
    if row is None:
        raise NotFound(f"no customer {customer_id!r}", field="customer_id")
    return row


def list_customers(
    *, session: Session, cursor: str | None, limit: int, query: str | None = None
) -> tuple[list[Customer], str | None]:
    """Customers in id order after ``cursor``; ``query`` matches an id or name prefix."""
    statement = select(Customer).order_by(col(Customer.id)).limit(limit + 1)
    if cursor:
        statement = statement.where(col(Customer.id) > _decode_cursor(cursor))
    if query:
        pattern = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(
            col(Customer.id).like(pattern, escape="\\")
            | col(Customer.name).ilike(pattern, escape="\\")
        )
    rows = list(session.exec(statement))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor(rows[-1].id) if more and rows else None)


def _encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            f"cursor {cursor!r} is not a cursor this API returned", field="cursor"
        ) from None
