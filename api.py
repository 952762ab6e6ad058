"""The HTTP API: app factory, auth, error mapping and thin routes.

Routes parse, call one service and serialise.

Every route names the roles it admits through ``Allow``; admin passes everywhere. Domain errors
(engine.errors) become ``{"error": {"code", "message", "field"}}`` here and nowhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import auth, catalog, customers, decisions, overrides, triples
from engine.config import Settings
from engine.db import migrate
from engine.errors import NextbestError, TooLarge
from engine.models import utcnow
from engine.runtime import Runtime
from engine.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    AttributeSpecsIn,
    AttributeSpecsPublic,
    BatchPublic,
    CustomerIn,
    CustomerPublic,
    CustomersPublic,
    DecisionIn,
    DecisionPublic,
    EventIn,
    EventPublic,
    EventsBatchIn,
    ExperienceCreate,
    ExperiencePublic,
    ExperiencesPublic,
    ExperienceUpdate,
    OutcomeIn,
    OutcomePublic,
    OutcomeScaleIn,
    OutcomeScalePublic,
    OverrideIn,
    OverridePublic,
    ReactionIn,
    ReactionPublic,
    Role,
    SegmentationIn,
    SegmentationPublic,
)

log = logging.getLogger("nextbest.api")


# Auth ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


class Allow:
    """Dependency that admits a request whose API key has one of ``roles`` (or admin)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = roles

    async def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _AuthError(401, "unauthenticated", "send Authorization: Bearer <API key>")
        runtime: Runtime = request.app.state.runtime
        checked = runtime.keys.get(key) or await run_in_threadpool(_check_key, runtime, key)
        if checked is None:
            raise _AuthError(401, "unauthenticated", "the API key is unknown or revoked")
        if checked.role != "admin" and checked.role not in self.roles:
            raise _AuthError(
                403,
                "forbidden",
                f"role {checked.role!r} may not do this; "
                f"allowed: {', '.join(self.roles) or 'admin'}",
            )
        return Principal(key_id=checked.id, name=checked.name, role=checked.role)  # type: ignore[arg-type]


def _check_key(runtime: Runtime, key: str) -> auth.CheckedKey | None:
    with runtime.session() as session:
        return auth.check_key(session=session, cache=runtime.keys, key=key)


class _AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


ANY_ROLE: tuple[Role, ...] = ("agent", "marketer", "service")
AnyRole = Annotated[Principal, Depends(Allow(*ANY_ROLE))]
Marketer = Annotated[Principal, Depends(Allow("marketer"))]
Service = Annotated[Principal, Depends(Allow("service"))]
CustomerReader = Annotated[Principal, Depends(Allow("agent", "marketer", "service"))]
Decider = Annotated[Principal, Depends(Allow("agent", "service"))]
Admin = Annotated[Principal, Depends(Allow())]


# Dependencies ----------------------------------------------------------------------------------


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    with runtime.session() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Errors and limits -----------------------------------------------------------------------------


def _error(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": field, **extra}}, status_code=status
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NextbestError)
    async def domain(_: Request, error: NextbestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(_AuthError)
    async def auth_error(_: Request, error: _AuthError) -> JSONResponse:
        response = _error(error.status, error.code, error.message)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {"field": _field(e.get("loc", ())), "message": _message(e)} for e in error.errors()
        ]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        return _error(
            422, "invalid", f"{first['field']}: {first['message']}", first["field"], details=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "error")
        return _error(error.status_code, code, str(error.detail))

    @app.exception_handler(IntegrityError)
    async def integrity(_: Request, error: IntegrityError) -> JSONResponse:
        log.warning("integrity error: %s", error.orig)
        return _error(409, "conflict", "the request conflicts with a concurrent change; retry it")

    @app.exception_handler(OperationalError)
    async def operational(_: Request, error: OperationalError) -> JSONResponse:
        log.error("database error: %s", error.orig)
        return _error(503, "unavailable", "the database is busy or unreachable; retry shortly")


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) if parts else "body"


def _message(error: Any) -> str:
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


class BodyLimit:
    """Answers 413 for a body over ``max_bytes`` (declared or streamed) before a route reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_json(send, 413, self._too_large())
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge(self._too_large()["error"]["message"], field="body")
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> dict[str, Any]:
        return {
            "error": {
                "code": "too_large",
                "field": "body",
                "message": f"the request body is larger than {self.max_bytes} bytes",
            }
        }


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# App -------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else Settings())
    owned = runtime is None
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        start(runtime)
        yield
        if owned:
            runtime.close()

    app = FastAPI(
        title="nextbest",
        version="1",
        summary="Rules-and-experiments decision engine for customer retention",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    _install_routes(app)
    return app


def app_from_env() -> FastAPI:
    """The app a worker process serves: settings from the environment (``nextbest serve``)."""
    return create_app(Settings())


def start(runtime: Runtime) -> None:
    """Start-up: migrate the schema and ensure the bootstrap admin key."""
    migrate(runtime.engine)
    key = runtime.settings.bootstrap_admin_key
    with runtime.session() as session:
        catalog.engine_state(session)
        if key:
            auth.ensure_key(session=session, key=key, role="admin", name="bootstrap-admin")
        session.commit()


def _install_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ok", "database": session.get_bind().dialect.name}

    # Outcome scale
    @app.get("/v1/outcome-scale", tags=["catalog"])
    def get_outcome_scale(session: SessionDep, _: AnyRole) -> OutcomeScalePublic:
        return OutcomeScalePublic.model_validate(
            catalog.get_outcome_scale(session=session), from_attributes=True
        )

    @app.put("/v1/outcome-scale", tags=["catalog"])
    def put_outcome_scale(
        body: OutcomeScaleIn, session: SessionDep, who: Marketer
    ) -> OutcomeScalePublic:
        row = catalog.put_outcome_scale(session=session, scale_in=body, actor=who.actor)
        return OutcomeScalePublic.model_validate(row, from_attributes=True)

    # Attribute specs
    @app.get("/v1/attributes", tags=["catalog"])
    def get_attributes(session: SessionDep, _: AnyRole) -> AttributeSpecsPublic:
        rows = catalog.list_attribute_specs(session=session)
        return AttributeSpecsPublic.model_validate(
            {"attributes": [catalog.public_spec(r) for r in rows]}
        )

    @app.put("/v1/attributes", tags=["catalog"])
    def put_attributes(
        body: AttributeSpecsIn, session: SessionDep, who: Marketer
    ) -> AttributeSpecsPublic:
        rows = catalog.put_attribute_specs(session=session, specs_in=body, actor=who.actor)
        return AttributeSpecsPublic.model_validate(
            {"attributes": [catalog.public_spec(r) for r in rows]}
        )

    # Experiences
    @app.get("/v1/experiences", tags=["catalog"])
    def list_experiences(
        session: SessionDep, _: AnyRole, active: bool | None = None
    ) -> ExperiencesPublic:
        rows = catalog.list_experiences(session=session, active=active)
        return ExperiencesPublic(
            data=[ExperiencePublic.model_validate(r, from_attributes=True) for r in rows]
        )

    @app.post("/v1/experiences", status_code=201, tags=["catalog"])
    def create_experience(
        body: ExperienceCreate, session: SessionDep, who: Marketer
    ) -> ExperiencePublic:
        row = catalog.create_experience(session=session, experience_in=body, actor=who.actor)
        return ExperiencePublic.model_validate(row, from_attributes=True)

    @app.get("/v1/experiences/{key}", tags=["catalog"])
    def get_experience(key: str, session: SessionDep, _: AnyRole) -> ExperiencePublic:
        row = catalog.get_experience(session=session, key=key)
        return ExperiencePublic.model_validate(row, from_attributes=True)

    @app.patch("/v1/experiences/{key}", tags=["catalog"])
    def update_experience(
        key: str, body: ExperienceUpdate, session: SessionDep, who: Marketer
    ) -> ExperiencePublic:
        row = catalog.update_experience(
            session=session, key=key, experience_update=body, actor=who.actor
        )
        return ExperiencePublic.model_validate(row, from_attributes=True)

    @app.post("/v1/experiences/{key}:deactivate", tags=["catalog"])
    def deactivate_experience(key: str, session: SessionDep, who: Marketer) -> ExperiencePublic:
        row = catalog.update_experience(
            session=session,
            key=key,
            experience_update=ExperienceUpdate(active=False),
            actor=who.actor,
        )
        return ExperiencePublic.model_validate(row, from_attributes=True)

    @app.post("/v1/experiences/{key}:activate", tags=["catalog"])
    def activate_experience(key: str, session: SessionDep, who: Marketer) -> ExperiencePublic:
        row = catalog.update_experience(
            session=session,
            key=key,
            experience_update=ExperienceUpdate(active=True),
            actor=who.actor,
        )
        return ExperiencePublic.model_validate(row, from_attributes=True)

    # Segmentation
    @app.get("/v1/segmentation", tags=["catalog"])
    def get_segmentation(session: SessionDep, _: AnyRole) -> SegmentationPublic:
        row = catalog.get_segmentation(session=session)
        return SegmentationPublic.model_validate(row, from_attributes=True)

    @app.put("/v1/segmentation", tags=["catalog"])
    def put_segmentation(
        body: SegmentationIn, session: SessionDep, who: Marketer
    ) -> SegmentationPublic:
        row = catalog.put_segmentation(session=session, segmentation_in=body, actor=who.actor)
        return SegmentationPublic.model_validate(row, from_attributes=True)

    # Customers
    @app.get("/v1/customers", tags=["customers"])
    def list_customers(
        session: SessionDep,
        _: CustomerReader,
        cursor: str | None = Query(default=None, max_length=400),
        limit: int = Query(default=50, ge=1, le=500),
        q: str | None = Query(default=None, max_length=200, description="id or name prefix"),
    ) -> CustomersPublic:
        rows, next_cursor = customers.list_customers(
            session=session, cursor=cursor, limit=limit, query=q
        )
        return CustomersPublic(
            data=[CustomerPublic.model_validate(r, from_attributes=True) for r in rows],
            next_cursor=next_cursor,
        )

    @app.get("/v1/customers/{customer_id}", tags=["customers"])
    def get_customer(customer_id: str, session: SessionDep, _: CustomerReader) -> CustomerPublic:
        row = customers.get_customer(session=session, customer_id=customer_id)
        return CustomerPublic.model_validate(row, from_attributes=True)

    @app.put("/v1/customers/{customer_id}", tags=["customers"])
    def put_customer(
        customer_id: Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\s/]+$")],
        body: CustomerIn,
        session: SessionDep,
        runtime: RuntimeDep,
        _: Service,
        response: Response,
    ) -> CustomerPublic:
        row, created = customers.upsert_customer(
            session=session,
            catalog=runtime.catalog(session),
            customer_id=customer_id,
            customer_in=body,
        )
        response.status_code = 201 if created else 200
        return CustomerPublic.model_validate(row, from_attributes=True)

    # Triples
    @app.post("/v1/events", status_code=201, tags=["triples"])
    def post_event(
        body: EventIn, session: SessionDep, runtime: RuntimeDep, _: Service, response: Response
    ) -> EventPublic:
        catalog_now = runtime.catalog(session)
        triple = triples.parse_event(catalog_now, body.model_dump(exclude_none=True), now=utcnow())
        (row,) = triples.store_triples(session, catalog=catalog_now, triples=[triple])
        _mark_replay(response, created=not row.replayed)
        runtime.wrote_stats()
        return _event_public(row)

    @app.post("/v1/events:batch", status_code=201, tags=["triples"])
    def post_events_batch(
        body: EventsBatchIn, session: SessionDep, runtime: RuntimeDep, _: Service
    ) -> BatchPublic:
        limit = runtime.settings.max_batch_rows
        if len(body.events) > limit:
            raise TooLarge(
                f"a batch holds at most {limit} events, this one {len(body.events)}",
                field="events",
            )
        catalog_now = runtime.catalog(session)
        parsed = triples.parse_batch(catalog_now, body.events, now=utcnow())
        rows = triples.store_triples(session, catalog=catalog_now, triples=parsed)
        runtime.wrote_stats()
        ids = [r.id for r in rows]
        return BatchPublic(
            stored=len(rows), first_id=min(ids, default=None), last_id=max(ids, default=None)
        )

    # Decisions and outcomes
    @app.post("/v1/decisions", status_code=201, tags=["decisions"])
    async def post_decision(body: DecisionIn, runtime: RuntimeDep, _: Decider) -> DecisionPublic:
        # One hop to a worker thread for the whole decision (its read, and the wait for the
        # commit of its log entry); the service manages its own connections.
        return await run_in_threadpool(decisions.decide, runtime=runtime, decision_in=body)

    @app.post("/v1/decisions/{decision_id}/override", status_code=201, tags=["decisions"])
    def override_decision(
        decision_id: str,
        body: OverrideIn,
        session: SessionDep,
        runtime: RuntimeDep,
        who: Decider,
        response: Response,
    ) -> OverridePublic:
        row, created = overrides.override_decision(
            session=session,
            catalog=runtime.catalog(session),
            decision_id=decision_id,
            override_in=body,
            actor=who.actor,
        )
        _mark_replay(response, created=created)
        return row

    @app.post("/v1/decisions/{decision_id}/reaction", status_code=201, tags=["decisions"])
    def record_reaction(
        decision_id: str, body: ReactionIn, session: SessionDep, _: Decider, response: Response
    ) -> ReactionPublic:
        row, created = overrides.record_reaction(
            session=session, decision_id=decision_id, reaction_in=body
        )
        _mark_replay(response, created=created)
        return row

    @app.post("/v1/outcomes", status_code=201, tags=["decisions"])
    def post_outcome(
        body: OutcomeIn, session: SessionDep, runtime: RuntimeDep, _: Decider, response: Response
    ) -> OutcomePublic:
        outcome, created = decisions.record_outcome(
            session=session, runtime=runtime, outcome_in=body
        )
        _mark_replay(response, created=created)
        return outcome

    # Keys
    @app.get("/v1/keys", tags=["admin"])
    def list_keys(session: SessionDep, _: Admin) -> list[ApiKeyPublic]:
        return [
            ApiKeyPublic.model_validate(r, from_attributes=True)
            for r in auth.list_keys(session=session)
        ]

    @app.post("/v1/keys", status_code=201, tags=["admin"])
    def create_key(body: ApiKeyCreate, session: SessionDep, who: Admin) -> ApiKeyCreated:
        row, key = auth.create_key(session=session, name=body.name, role=body.role, actor=who.actor)
        return ApiKeyCreated.model_validate({**row.model_dump(), "key": key})

    @app.post("/v1/keys/{key_id}:revoke", tags=["admin"])
    def revoke_key(
        key_id: int, session: SessionDep, runtime: RuntimeDep, who: Admin
    ) -> ApiKeyPublic:
        row = auth.revoke_key(session=session, key_id=key_id, actor=who.actor)
        runtime.keys.clear()
        return ApiKeyPublic.model_validate(row, from_attributes=True)


def _mark_replay(response: Response, *, created: bool) -> None:
    """A repeat that stored nothing answers 200 with the first answer, and says so."""
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"


def _event_public(row: triples.StoredTriple) -> EventPublic:
    return EventPublic(
        id=row.id,
        customer_id=row.customer_id,
        experience=row.experience_key,
        result=row.result,
        occurred_at=row.occurred_at,
        exposure=row.exposure,
    )


__all__ = ["Allow", "Principal", "create_app", "start"]
