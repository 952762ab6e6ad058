"""Domain errors. Services raise these; api.py maps them to HTTP in one place."""

from __future__ import annotations

from typing import Any


class NextbestError(Exception):
    """Base of every error a user can cause. ``field`` names the input at fault."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        valid: list[str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.valid = valid
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.valid is not None:
            error["valid"] = self.valid
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class InvalidInput(NextbestError):
    status = 422
    code = "invalid"


class NotFound(NextbestError):
    status = 404
    code = "not_found"


class Conflict(NextbestError):
    status = 409
    code = "conflict"


class TooLarge(NextbestError):
    status = 413
    code = "too_large"
