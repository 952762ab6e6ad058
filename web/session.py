"""The consoles' session: a signed cookie holding the API key's id and a CSRF token.

The cookie never holds the API key itself: signing in checks the key once (engine.auth) and
stores the id of its row; every request re-reads that row, so a revoked key ends its sessions at
once. The payload is JSON, signed with HMAC-SHA256 under the server secret
(``NEXTBEST_SESSION_SECRET``, or one generated per process) and compared in constant time. It
expires after SESSION_SECONDS.

CSRF: every session, signed in or not, carries a random token; every form posts it back and
every POST compares it with the session's (``check_csrf``). Signing in issues a new token
(no session fixation). The cookie is HttpOnly, SameSite=Lax (a link from a CRM into a customer
page keeps the session; cross-site POSTs never carry it) and Secure when served over https.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, replace

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "nextbest_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class WebSession:
    csrf: str
    key_id: int | None = None
    expires: float = 0.0

    @classmethod
    def anonymous(cls) -> WebSession:
        return cls(csrf=secrets.token_urlsafe(24), expires=time.time() + SESSION_SECONDS)

    def signed_in(self, key_id: int) -> WebSession:
        """A new session for ``key_id`` with a new CSRF token."""
        return replace(WebSession.anonymous(), key_id=key_id)


class Signer:
    """Signs and checks session cookies with one secret."""

    def __init__(self, secret: str | None) -> None:
        self._key = hashlib.sha256((secret or secrets.token_urlsafe(32)).encode()).digest()

    def dumps(self, session: WebSession) -> str:
        payload = json.dumps(
            {"c": session.csrf, "k": session.key_id, "e": int(session.expires)},
            separators=(",", ":"),
        ).encode()
        body = _b64(payload)
        return f"{body}.{_b64(self._mac(body))}"

    def loads(self, cookie: str | None) -> WebSession | None:
        """The session in ``cookie``, or None when it is missing, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.partition(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            data = json.loads(_unb64(body))
            session = WebSession(
                csrf=str(data["c"]),
                key_id=None if data["k"] is None else int(data["k"]),
                expires=float(data["e"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return session if session.expires > time.time() else None

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def set_cookie(response: Response, request: Request, signer: Signer, session: WebSession) -> None:
    response.set_cookie(
        COOKIE,
        signer.dumps(session),
        max_age=max(0, int(session.expires - time.time())),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def check_csrf(session: WebSession, token: object) -> bool:
    return isinstance(token, str) and hmac.compare_digest(token.encode(), session.csrf.encode())


__all__ = ["COOKIE", "SESSION_SECONDS", "Signer", "WebSession", "check_csrf", "set_cookie"]
