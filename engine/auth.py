"""API keys: created once and shown once, stored as SHA-256 hashes, compared in constant time.

A key reads ``nb_<prefix>_<secret>``; the prefix finds the row, the hash of the whole key is
compared with ``hmac.compare_digest``. Keys are 32 random bytes, so a plain SHA-256 (no slow KDF)
is the right hash: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlmodel import Session, col, select

from engine import audit
from engine.errors import InvalidInput, NotFound
from engine.models import ApiKey, utcnow
from engine.schemas import ROLES, Role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "nb" and parts[1] else None


def create_key(
    *, session: Session, name: str, role: Role, actor: str, key: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key (random unless ``key`` is given) and return it with its plain text."""
    if role not in ROLES:
        raise InvalidInput(
            f"unknown role {role!r}; roles: {', '.join(ROLES)}", field="role", valid=list(ROLES)
        )
    if key is None:
        key = f"nb_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    prefix = _prefix(key) or key[:8]
    row = ApiKey(name=name, role=role, prefix=prefix[:16], key_hash=hash_key(key))
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="create",
        entity="api_key",
        entity_id=str(row.id),
        before=None,
        after={"name": name, "role": role, "prefix": row.prefix},
    )
    return row, key


def ensure_key(*, session: Session, key: str, role: Role, name: str) -> ApiKey:
    """The key with this exact value exists and is not revoked (bootstrap and demo keys)."""
    row = session.exec(select(ApiKey).where(col(ApiKey.key_hash) == hash_key(key))).first()
    if row is not None and row.revoked_at is None:
        return row
    if row is not None:
        row.revoked_at = None
        session.add(row)
        return row
    return create_key(session=session, name=name, role=role, actor="system", key=key)[0]


def authenticate(session: Session, key: str) -> ApiKey | None:
    prefix = _prefix(key) or key[:8]
    digest = hash_key(key)
    candidates = session.exec(
        select(ApiKey).where(col(ApiKey.prefix) == prefix[:16], col(ApiKey.revoked_at).is_(None))
    ).all()
    found = None
    for row in candidates:
        if hmac.compare_digest(row.key_hash, digest):
            found = row
    return found


def list_keys(*, session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))))


def revoke_key(*, session: Session, key_id: int, actor: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        audit.record(
            session,
            actor=actor,
            action="revoke",
            entity="api_key",
            entity_id=str(key_id),
            before={"revoked_at": None},
            after={"revoked_at": row.revoked_at},
        )
    return row
