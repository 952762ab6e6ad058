"""API keys: created once and shown once, stored as SHA-256 hashes, compared in constant time.

A key reads ``nb_<prefix>_<secret>``; the prefix finds the row, the hash of the whole key is
compared with ``hmac.compare_digest``. Keys are 32 random bytes, so a plain SHA-256 (no slow KDF)
is the right hash: there is nothing to brute-force.

A worker remembers the keys it checked for a short while (``KeyCache``), so that a busy caller
does not cost a database read per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

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
        audit.record(
            session,
            actor="system",
            action="reinstate",
            entity="api_key",
            entity_id=str(row.id),
            before={"revoked_at": row.revoked_at},
            after={"revoked_at": None},
        )
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


@dataclass(frozen=True)
class CheckedKey:
    """What a request needs to know about the key that authenticated it."""

    id: int
    name: str
    role: str


class KeyCache:
    """Keys that passed ``authenticate`` in the last ``ttl_seconds``, by the SHA-256 of the key.

    A cached key is trusted until its entry expires: a key revoked through another worker keeps
    working on this one for at most ``ttl_seconds`` (the worker that revokes forgets every key at
    once). Keys that failed are never cached, so a wrong key always costs a database read, and at
    most ``max_entries`` keys are kept. ``ttl_seconds`` = 0 turns the cache off.
    """

    def __init__(self, *, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[CheckedKey, float]] = {}

    def get(self, key: str) -> CheckedKey | None:
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, key: str, checked: CheckedKey) -> None:
        if self.ttl_seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries = {}
            self._entries[hash_key(key)] = (checked, time.monotonic() + self.ttl_seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries = {}


def check_key(*, session: Session, cache: KeyCache, key: str) -> CheckedKey | None:
    """The key's identity if it is known and not revoked (remembered in ``cache``), else None."""
    row = authenticate(session, key)
    if row is None or row.id is None:
        return None
    checked = CheckedKey(id=row.id, name=row.name, role=row.role)
    cache.put(key, checked)
    return checked
