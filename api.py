"""The HTTP API: app factory, auth, error mapping and thin routes.

Routes parse, call one service and serialise.

Every route names the roles it admits through ``Allow``; admin passes everywhere. Domain errors
(engine.errors) become ``{"error": {"code", "message", "field"}}`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import web
from engine import (
    audit,
    auth,
    catalog,
    customer_value,
    customers,
    decisions,
    evaluation,
    history,
    insights,
    metrics,
    override_insights,
    overrides,
    triples,
)
from engine.config import Settings
from engine.db import migrate, read_connection
from engine.errors import NextbestError, TooLarge
from engine.models import utcnow
from engine.ratelimit import RateLimiter, retry_after_header
from engine.runtime import WORKER_YOUNG_COLLECTION, Runtime, few_collections
from engine.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    AttributeSpecsIn,
    AttributeSpecsPublic,
    AuditEventPublic,
    AuditEventsPublic,
    BatchPublic,
    CustomerHistory,
    CustomerIn,
    CustomerPublic,
    CustomersPublic,
    CustomerValue,
    DecayIn,
    DecayPublic,
    DecisionIn,
    DecisionPublic,
    ErrorBody,
    EvaluateIn,
    EventIn,
    EventPublic,
    EventsBatchIn,
    ExperienceCreate,
    ExperiencePublic,
    ExperiencesPublic,
    ExperienceUpdate,
    GuardrailIn,
    GuardrailPublic,
    GuardrailsPublic,
    OutcomeIn,
    OutcomePublic,
    OutcomeScaleIn,
    OutcomeScalePublic,
    OverrideIn,
    OverrideInsights,
    OverridePublic,
    PolicyValue,
    ReactionIn,
    ReactionPublic,
    Role,
    RulesetCompileIn,
    RulesetDiff,
    RulesetPublic,
    RulesetsPublic,
    RulesetSummary,
    SegmentationIn,
    SegmentationPublic,
    SegmentInsights,
    WorklistPublic,
)
from engine.settle import maintain
from experiments import plots
from experiments import service as experiment_service
from experiments.evidence import load_evidence
from experiments.report import build_report
from experiments.schemas import (
    ConcludeIn,
    ExperimentIn,
    ExperimentPublic,
    ExperimentReport,
    ExperimentsPublic,
    ExperimentStatus,
    ExperimentUpdate,
    StatusChangeIn,
)
from rules import guardrails, versions
from rules.compiler import Settings as CompileSettings

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
        _rate_limit(request, checked.id)
        if checked.role != "admin" and checked.role not in self.roles:
            raise _AuthError(
                403,
                "forbidden",
                f"role {checked.role!r} may not do this; "
                f"allowed: {', '.join(self.roles) or 'admin'}",
            )
        return Principal(key_id=checked.id, name=checked.name, role=checked.role)  # type: ignore[arg-type]


def _check_key(runtime: Runtime, key: str) -> auth.CheckedKey | None:
    with runtime.read_session() as session:  # no SQLite write lock: every request passes here
        return auth.check_key(session=session, cache=runtime.keys, key=key)


class _AuthError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# Rate limit ------------------------------------------------------------------------------------


def _rate_limit(request: Request, key_id: int) -> None:
    """429 with Retry-After once a key has spent its tokens on this worker (engine.ratelimit)."""
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.take(key_id)
    if wait > 0:
        raise _AuthError(
            429,
            "rate_limited",
            f"this API key may make {limiter.per_minute} requests a minute; retry in {wait:.1f} s",
            headers={"Retry-After": retry_after_header(wait)},
        )


ANY_ROLE: tuple[Role, ...] = ("agent", "marketer", "service")
AnyRole = Annotated[Principal, Depends(Allow(*ANY_ROLE))]
Marketer = Annotated[Principal, Depends(Allow("marketer"))]
Service = Annotated[Principal, Depends(Allow("service"))]
CustomerReader = Annotated[Principal, Depends(Allow("agent", "marketer", "service"))]
Decider = Annotated[Principal, Depends(Allow("agent", "service"))]
WorklistReader = Annotated[Principal, Depends(Allow("agent", "marketer"))]
Admin = Annotated[Principal, Depends(Allow())]


# Dependencies ----------------------------------------------------------------------------------


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error.

    A GET or HEAD reads: on SQLite its transaction begins DEFERRED, so it never waits for (or
    holds up) the write lock that other requests' transactions take up front."""
    reads = request.method in ("GET", "HEAD")
    with runtime.read_session() if reads else runtime.session() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

MAX_ROW_ID = 2**31 - 1
"""Integer ids are 32-bit columns on PostgreSQL: a larger one is a 422, not a driver error."""
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


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
        response.headers.update(error.headers)
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
        if error.status_code == 413:
            return _error(413, "too_large", str(error.detail), "body")
        if error.status_code == 400 and error.__cause__ is not None:
            # FastAPI could not parse the body (bytes that are not UTF-8, JSON nested deeper than
            # Python's recursion limit): a bad body like any other, named as such.
            problem = (
                "is nested too deeply"
                if isinstance(error.__cause__, RecursionError)
                else f"cannot be read as JSON ({type(error.__cause__).__name__})"
            )
            return _error(422, "invalid", f"the request body {problem}", "body")
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "error")
        return _error(error.status_code, code, str(error.detail))

    @app.exception_handler(IntegrityError)
    async def integrity(_: Request, error: IntegrityError) -> JSONResponse:
        log.warning("integrity error: %s", error.orig)
        return _error(409, "conflict", "the request conflicts with a concurrent change; retry it")

    @app.exception_handler(DataError)
    async def data(request: Request, error: DataError) -> JSONResponse:
        # A value the database cannot store that validation let through (a NUL in a path or
        # query parameter, say): bad input, not a server fault.
        log.warning("value refused by the database: %s", str(error.orig).splitlines()[0])
        field = None
        if "\x00" in request.url.path:
            field = "path"
        elif "%00" in request.url.query:
            field = "query"
        problem = "text cannot contain NUL characters" if "NUL" in str(error.orig) else "invalid"
        return _error(422, "invalid", f"a value cannot be stored: {problem}", field)

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
                # An HTTPException passes through FastAPI's body parsing (any other error there
                # becomes a 400); the handler below answers it as too_large on the body.
                raise StarletteHTTPException(413, self._too_large()["error"]["message"])
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


# Every route may answer these; declared once so that the OpenAPI states them (and FastAPI's own
# 422 model, which is not the shape we send, is not declared).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "No Authorization: Bearer <key>, or the key is unknown or revoked",
        403: "The key's role may not call this route",
        404: "Unknown customer, decision, experience, key, rule set or route",
        409: "Conflict: exists already, recorded already, or a concurrent change (retry)",
        413: "Body over max_body_bytes, or a batch over max_batch_rows",
        422: "The request fails validation; field names the input at fault",
        429: "The key's rate limit is spent; see Retry-After",
        503: "The database is busy or unreachable; retry shortly",
    }.items()
}


# App -------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else Settings())
    owned = runtime is None
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        start(runtime)
        metrics.worker_started()
        upkeep = asyncio.create_task(_maintenance(runtime))
        try:
            with few_collections(young=WORKER_YOUNG_COLLECTION):
                yield
        finally:
            upkeep.cancel()
            with suppress(asyncio.CancelledError):
                await upkeep
            runtime.close(release_engine=owned)
            metrics.worker_stopped()

    app = FastAPI(
        title="nextbest",
        version="1",
        summary="Rules-and-experiments decision engine for customer retention",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.runtime = runtime
    app.state.rate_limiter = RateLimiter(per_minute=settings.rate_limit_per_minute)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.HttpMetrics)  # outermost: it sees every answer, 413s included
    _install_error_handlers(app)
    _install_routes(app)
    _install_openapi_links(app)
    web.install(app, settings)
    _install_operations_routes(app)
    return app


# OpenAPI links --------------------------------------------------------------------------------

OPENAPI_LINKS: tuple[tuple[str, str, str, str, str, dict[str, str]], ...] = (
    # (from path, method, status, to path, method, {parameter: runtime expression})
    *(
        ("/v1/decisions", "post", "201", to, "post", {"decision_id": "$response.body#/decision_id"})
        for to in ("/v1/decisions/{decision_id}/override", "/v1/decisions/{decision_id}/reaction")
    ),
    *(
        ("/v1/rulesets:compile", "post", "201", to, method, {"version": "$response.body#/version"})
        for to, method in (
            ("/v1/rulesets/{version}", "get"),
            ("/v1/rulesets/{version}:activate", "post"),
            ("/v1/rulesets/{version}:evaluate", "post"),
        )
    ),
    *(
        ("/v1/guardrails", "post", "201", to, method, {"guardrail_id": "$response.body#/id"})
        for to, method in (
            ("/v1/guardrails/{guardrail_id}", "get"),
            ("/v1/guardrails/{guardrail_id}:deactivate", "post"),
        )
    ),
    *(
        ("/v1/experiences", "post", "201", to, method, {"key": "$response.body#/key"})
        for to, method in (
            ("/v1/experiences/{key}", "get"),
            ("/v1/experiences/{key}", "patch"),
            ("/v1/experiences/{key}:deactivate", "post"),
        )
    ),
    (
        "/v1/keys",
        "post",
        "201",
        "/v1/keys/{key_id}:revoke",
        "post",
        {"key_id": "$response.body#/id"},
    ),
    *(
        (
            "/v1/customers/{customer_id}",
            "put",
            status,
            "/v1/customers/{customer_id}",
            "get",
            {"customer_id": "$response.body#/id"},
        )
        for status in ("200", "201")
    ),
)
"""What one answer lets a client call next, documented in the OpenAPI (and usable by tools that
follow links, such as schemathesis's stateful mode)."""


def _install_openapi_links(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        paths = schema["paths"]
        for source, method, status, target, target_method, parameters in OPENAPI_LINKS:
            if source not in paths or target not in paths:
                continue
            response = paths[source][method]["responses"].setdefault(status, {})
            operation_id = paths[target][target_method]["operationId"]
            link: dict[str, Any] = {"operationId": operation_id}
            if parameters:
                link["parameters"] = parameters
            else:  # the id goes in the body of the next call
                link["requestBody"] = {"decision_id": "$response.body#/decision_id"}
            response.setdefault("links", {})[operation_id] = link
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def _policy_value(
    session: Session, runtime: Runtime, policies: list[str], body: EvaluateIn
) -> PolicyValue:
    report = evaluation.evaluate(
        session=session,
        runtime=runtime,
        policies=policies,
        since=utcnow() - dt.timedelta(days=body.days),
        where=body.where,
        clip=body.clip,
    )
    return PolicyValue.model_validate(report)


async def _maintenance(runtime: Runtime) -> None:
    """Settle overdue decisions every ``maintenance_seconds`` (in a thread: it is blocking I/O)."""
    interval = runtime.settings.maintenance_seconds
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            upkeep = await run_in_threadpool(maintain, runtime.engine, now=utcnow())
        except Exception:  # the loop must outlive a failed round; the next one retries
            log.exception("maintenance failed")
            continue
        if upkeep.settled or upkeep.rebased:
            runtime.wrote_stats()
            log.info("settled %d overdue decisions", upkeep.settled)


def _install_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz(runtime: RuntimeDep) -> dict[str, str]:
        # Readiness: one statement outside any transaction. A request session on SQLite begins
        # IMMEDIATE (the write lock), which a health check has no reason to take.
        with read_connection(runtime.engine) as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok", "database": runtime.engine.dialect.name}

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

    # Rule sets
    @app.post("/v1/rulesets:compile", tags=["rules"], status_code=201)
    def compile_ruleset(
        session: SessionDep,
        runtime: RuntimeDep,
        who: Marketer,
        body: RulesetCompileIn | None = None,
    ) -> RulesetPublic:
        body = body or RulesetCompileIn()
        row = versions.compile_version(
            session=session,
            runtime=runtime,
            settings=CompileSettings(
                budget=body.budget, min_support=body.min_support, seed=body.seed
            ),
            actor=who.actor,
        )
        return RulesetPublic.model_validate(row, from_attributes=True)

    @app.get("/v1/rulesets", tags=["rules"])
    def list_rulesets(
        session: SessionDep,
        _: AnyRole,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    ) -> RulesetsPublic:
        rows = versions.list_versions(session=session, limit=limit + 1, before=before)
        more = len(rows) > limit
        rows = rows[:limit]
        return RulesetsPublic(
            data=[RulesetSummary.model_validate(r, from_attributes=True) for r in rows],
            next_before=rows[-1].version if more and rows else None,
        )

    @app.get("/v1/rulesets/{version}", tags=["rules"])
    def get_ruleset(version: RowId, session: SessionDep, _: AnyRole) -> RulesetPublic:
        row = versions.get_version(session=session, version=version)
        return RulesetPublic.model_validate(row, from_attributes=True)

    @app.get("/v1/rulesets/{a}/diff/{b}", tags=["rules"])
    def diff_rulesets(
        a: RowId,
        b: RowId,
        session: SessionDep,
        _: AnyRole,
    ) -> RulesetDiff:
        return RulesetDiff.model_validate(
            versions.diff(
                versions.get_version(session=session, version=a, field="a"),
                versions.get_version(session=session, version=b, field="b"),
            )
        )

    @app.post("/v1/rulesets/{version}:activate", tags=["rules"])
    def activate_ruleset(version: RowId, session: SessionDep, who: Marketer) -> RulesetPublic:
        row = versions.activate(session=session, version=version, actor=who.actor)
        return RulesetPublic.model_validate(row, from_attributes=True)

    @app.post("/v1/rulesets/{version}:evaluate", tags=["rules"])
    def evaluate_ruleset(
        version: RowId,
        session: SessionDep,
        runtime: RuntimeDep,
        _: Marketer,
        body: EvaluateIn | None = None,
    ) -> PolicyValue:
        """What this version would have earned on logged decisions, beside the active version,
        the current policy and the control (IPS, SNIPS and doubly robust, 95% intervals)."""
        body = body or EvaluateIn()
        versions.get_version(session=session, version=version)
        active = versions.active_version(session)
        policies = [f"ruleset:{version}", "current", "control"]
        if active is not None and active.version != version:
            policies.insert(1, f"ruleset:{active.version}")
        return _policy_value(session, runtime, policies, body)

    # Guardrails
    @app.post("/v1/guardrails", tags=["rules"], status_code=201)
    def create_guardrail(
        body: GuardrailIn, session: SessionDep, runtime: RuntimeDep, who: Marketer
    ) -> GuardrailPublic:
        row = guardrails.create_guardrail(
            session=session,
            catalog=runtime.catalog(session),
            fields=body.model_dump(),
            actor=who.actor,
        )
        return GuardrailPublic.model_validate(guardrails.public(row))

    @app.get("/v1/guardrails", tags=["rules"])
    def list_guardrails(
        session: SessionDep, _: AnyRole, active: bool | None = None
    ) -> GuardrailsPublic:
        rows = guardrails.list_guardrails(session=session, active=active)
        return GuardrailsPublic(
            data=[GuardrailPublic.model_validate(guardrails.public(r)) for r in rows]
        )

    @app.get("/v1/guardrails/{guardrail_id}", tags=["rules"])
    def get_guardrail(guardrail_id: RowId, session: SessionDep, _: AnyRole) -> GuardrailPublic:
        row = guardrails.get_guardrail(session=session, guardrail_id=guardrail_id)
        return GuardrailPublic.model_validate(guardrails.public(row))

    @app.post("/v1/guardrails/{guardrail_id}:deactivate", tags=["rules"])
    def deactivate_guardrail(
        guardrail_id: RowId, session: SessionDep, who: Marketer
    ) -> GuardrailPublic:
        row = guardrails.deactivate_guardrail(
            session=session, guardrail_id=guardrail_id, actor=who.actor
        )
        return GuardrailPublic.model_validate(guardrails.public(row))

    # Decay of evidence
    @app.get("/v1/decay", tags=["catalog"])
    def get_decay(session: SessionDep, _: AnyRole) -> DecayPublic:
        return DecayPublic.model_validate(catalog.engine_state(session), from_attributes=True)

    @app.put("/v1/decay", tags=["catalog"])
    def put_decay(body: DecayIn, session: SessionDep, who: Marketer) -> DecayPublic:
        state = catalog.put_decay(session=session, decay_in=body, actor=who.actor)
        return DecayPublic.model_validate(state, from_attributes=True)

    # Insights
    @app.get("/v1/insights/segments", tags=["insights"])
    def segment_insights(
        session: SessionDep,
        runtime: RuntimeDep,
        _: Marketer,
        exposure: Annotated[
            int, Query(ge=0, le=2, description="Earlier exposures: 0, 1, or 2 meaning 2+")
        ] = 0,
        depth: Annotated[int | None, Query(ge=0, le=8, description="Deepest level shown")] = None,
    ) -> SegmentInsights:
        report = insights.segment_insights(
            session=session, runtime=runtime, exposure=exposure, max_depth=depth
        )
        return SegmentInsights.model_validate(report)

    @app.get("/v1/insights/policy-value", tags=["insights"])
    def policy_value(
        session: SessionDep,
        runtime: RuntimeDep,
        _: Marketer,
        policy: Annotated[
            list[str] | None,
            Query(
                max_length=50,
                description="current, control, experience:<key> or ruleset:<version>; repeatable",
            ),
        ] = None,
        days: Annotated[float, Query(gt=0, le=3650)] = 90.0,
        where: Annotated[str | None, Query(min_length=1, max_length=2000)] = None,
        clip: Annotated[float | None, Query(ge=1, le=1e6)] = None,
    ) -> PolicyValue:
        return _policy_value(
            session,
            runtime,
            policy or ["current", "control"],
            EvaluateIn(days=days, where=where, clip=clip),
        )

    @app.get("/v1/insights/overrides", tags=["insights"])
    def override_insights_route(
        session: SessionDep,
        runtime: RuntimeDep,
        _: Marketer,
        days: Annotated[float, Query(gt=0, le=3650)] = 90.0,
    ) -> OverrideInsights:
        """Override rates by agent and reason, and the value of overrides against the engine's
        picks: observational figures (agents choose what to override)."""
        report = override_insights.override_insights(session=session, runtime=runtime, days=days)
        return OverrideInsights.model_validate(report)

    @app.get("/v1/insights/customer-value", tags=["insights"])
    def customer_value_route(
        session: SessionDep,
        runtime: RuntimeDep,
        _: Marketer,
        days: Annotated[float, Query(gt=0, le=3650)] = 365.0,
        depth: Annotated[int, Query(ge=0, le=8)] = 1,
        top: Annotated[float, Query(gt=0, lt=1)] = 0.2,
    ) -> CustomerValue:
        report = customer_value.customer_value(
            session=session, runtime=runtime, days=days, depth=depth, top=top
        )
        return CustomerValue.model_validate(report)

    @app.get("/v1/worklist", tags=["insights"])
    def worklist(
        session: SessionDep,
        runtime: RuntimeDep,
        _: WorklistReader,
        where: Annotated[
            str | None,
            Query(max_length=2000, description='A rule condition, e.g. plan == "basic"'),
        ] = None,
        experience: Annotated[
            str | None, Query(max_length=64, description="Only customers whose best is this")
        ] = None,
        min_gain: Annotated[float | None, Query(ge=-1e12, le=1e12)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> WorklistPublic:
        page = insights.worklist(
            session=session,
            runtime=runtime,
            where=where,
            experience=experience,
            min_gain=min_gain,
            limit=limit,
            offset=offset,
        )
        return WorklistPublic.model_validate(page)

    _install_experiment_routes(app)

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

    @app.get("/v1/customers/{customer_id}/history", tags=["customers"])
    def get_customer_history(
        customer_id: str,
        session: SessionDep,
        _: CustomerReader,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> CustomerHistory:
        report = history.customer_history(session=session, customer_id=customer_id, limit=limit)
        return CustomerHistory.model_validate(report)

    @app.put(
        "/v1/customers/{customer_id}",
        tags=["customers"],
        responses={201: {"model": CustomerPublic, "description": "Created"}},
    )
    def put_customer(
        customer_id: Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\s/\x00]+$")],
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
    @app.post("/v1/events", status_code=201, tags=["triples"], responses=_replayed(EventPublic))
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
        # On the event loop, its commit awaited (engine.decisions.decide_async).
        return await decisions.decide_async(runtime=runtime, decision_in=body)

    @app.post(
        "/v1/decisions/{decision_id}/override",
        status_code=201,
        tags=["decisions"],
        responses=_replayed(OverridePublic),
    )
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

    @app.post(
        "/v1/decisions/{decision_id}/reaction",
        status_code=201,
        tags=["decisions"],
        responses=_replayed(ReactionPublic),
    )
    def record_reaction(
        decision_id: str, body: ReactionIn, session: SessionDep, _: Decider, response: Response
    ) -> ReactionPublic:
        row, created = overrides.record_reaction(
            session=session, decision_id=decision_id, reaction_in=body
        )
        _mark_replay(response, created=created)
        return row

    @app.post(
        "/v1/outcomes", status_code=201, tags=["decisions"], responses=_replayed(OutcomePublic)
    )
    def post_outcome(
        body: OutcomeIn, session: SessionDep, runtime: RuntimeDep, _: Decider, response: Response
    ) -> OutcomePublic:
        outcome, created = decisions.record_outcome(
            session=session, runtime=runtime, outcome_in=body
        )
        _mark_replay(response, created=created)
        return outcome

    _install_audit_routes(app)

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
        key_id: RowId, session: SessionDep, runtime: RuntimeDep, who: Admin
    ) -> ApiKeyPublic:
        row = auth.revoke_key(session=session, key_id=key_id, actor=who.actor)
        runtime.keys.clear()
        return ApiKeyPublic.model_validate(row, from_attributes=True)


# Audit -----------------------------------------------------------------------------------------


def _install_audit_routes(app: FastAPI) -> None:
    @app.get("/v1/audit", tags=["admin"])
    def list_audit(
        session: SessionDep,
        _: Admin,
        entity: Annotated[str | None, Query(max_length=64, description="e.g. experience")] = None,
        entity_id: Annotated[str | None, Query(max_length=200)] = None,
        actor: Annotated[str | None, Query(max_length=200, description="role:name")] = None,
        action: Annotated[str | None, Query(max_length=64, description="e.g. update")] = None,
        since: Annotated[dt.datetime | None, Query(description="At or after (UTC)")] = None,
        until: Annotated[dt.datetime | None, Query(description="Before (UTC)")] = None,
        cursor: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AuditEventsPublic:
        """The append-only trail of changes, newest first (admins only)."""
        rows, next_cursor = audit.list_events(
            session=session,
            limit=limit,
            cursor=cursor,
            entity=entity,
            entity_id=entity_id,
            actor=actor,
            action=action,
            since=since,
            until=until,
        )
        return AuditEventsPublic(
            data=[AuditEventPublic.model_validate(r, from_attributes=True) for r in rows],
            next_cursor=next_cursor,
        )


def _replayed(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers a same-body repeat with the first answer."""
    return {200: {"model": model, "description": "A repeat: the first answer, replayed"}}


ExperimentKey = Annotated[str, Path(min_length=1, max_length=64)]


def _install_experiment_routes(app: FastAPI) -> None:
    @app.post("/v1/experiments", status_code=201, tags=["experiments"])
    def create_experiment(
        body: ExperimentIn, session: SessionDep, who: Marketer
    ) -> ExperimentPublic:
        row = experiment_service.create_experiment(
            session=session, experiment_in=body, actor=who.actor
        )
        return ExperimentPublic.model_validate(row, from_attributes=True)

    @app.get("/v1/experiments", tags=["experiments"])
    def list_experiments(
        session: SessionDep,
        _: AnyRole,
        status: ExperimentStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> ExperimentsPublic:
        rows = experiment_service.list_experiments(
            session=session, status=status, limit=limit + 1, after=cursor
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return ExperimentsPublic(
            data=[ExperimentPublic.model_validate(r, from_attributes=True) for r in rows],
            next_cursor=rows[-1].key if more and rows else None,
        )

    @app.get("/v1/experiments/{key}", tags=["experiments"])
    def get_experiment(key: ExperimentKey, session: SessionDep, _: AnyRole) -> ExperimentPublic:
        row = experiment_service.get_experiment(session=session, key=key)
        return ExperimentPublic.model_validate(row, from_attributes=True)

    @app.patch("/v1/experiments/{key}", tags=["experiments"])
    def update_experiment(
        key: ExperimentKey, body: ExperimentUpdate, session: SessionDep, who: Marketer
    ) -> ExperimentPublic:
        row = experiment_service.update_experiment(
            session=session, key=key, experiment_update=body, actor=who.actor
        )
        return ExperimentPublic.model_validate(row, from_attributes=True)

    def _lifecycle(action: str) -> None:
        @app.post(
            f"/v1/experiments/{{key}}:{action}",
            tags=["experiments"],
            name=f"{action}_experiment",
            summary=f"{action.capitalize()} an experiment",
        )
        def change(
            key: ExperimentKey,
            session: SessionDep,
            runtime: RuntimeDep,
            who: Marketer,
            body: StatusChangeIn | None = None,
        ) -> ExperimentPublic:
            row = experiment_service.change_status(
                session=session, key=key, action=action, change=body, actor=who.actor
            )
            runtime.experiments_changed()
            return ExperimentPublic.model_validate(row, from_attributes=True)

    for action in ("start", "pause", "stop"):
        _lifecycle(action)

    @app.post("/v1/experiments/{key}:conclude", tags=["experiments"])
    def conclude_experiment(
        key: ExperimentKey,
        body: ConcludeIn,
        session: SessionDep,
        runtime: RuntimeDep,
        who: Marketer,
    ) -> ExperimentPublic:
        row = experiment_service.conclude(
            session=session, key=key, conclude_in=body, actor=who.actor
        )
        runtime.experiments_changed()
        if row.released_at is not None:
            runtime.wrote_stats()
        return ExperimentPublic.model_validate(row, from_attributes=True)

    @app.get("/v1/experiments/{key}/report", tags=["experiments"])
    def experiment_report(
        key: ExperimentKey, session: SessionDep, runtime: RuntimeDep, _: AnyRole
    ) -> ExperimentReport:
        row = experiment_service.get_experiment(session=session, key=key)
        return build_report(session=session, catalog=runtime.catalog(session), row=row)

    @app.get(
        "/v1/experiments/{key}/plots/{name}.svg",
        tags=["experiments"],
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}, "description": "The plot as SVG"}},
    )
    def experiment_plot(
        key: ExperimentKey,
        name: Literal["posterior", "allocation", "cumulative"],
        session: SessionDep,
        runtime: RuntimeDep,
        _: AnyRole,
    ) -> Response:
        row = experiment_service.get_experiment(session=session, key=key)
        evidence = load_evidence(session, runtime.catalog(session), row)
        svg = plots.render(name, evidence, title=f"{row.name}: {plots.TITLES[name]}")
        return Response(svg, media_type="image/svg+xml")


# Operations: liveness and metrics ---------------------------------------------------------------


class MetricsReader(Allow):
    """/metrics needs a service or admin key unless ``metrics_public`` is set: the counters name
    experiments and arms and show the business's traffic."""

    async def __call__(self, request: Request) -> Principal | None:  # type: ignore[override]
        runtime: Runtime = request.app.state.runtime
        if runtime.settings.metrics_public:
            return None
        return await super().__call__(request)


def _install_operations_routes(app: FastAPI) -> None:
    @app.get("/livez", tags=["operations"])
    async def livez() -> dict[str, str]:
        """Liveness: the worker answers (no database round trip; /healthz checks the database)."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        dependencies=[Depends(MetricsReader("service"))],
    )
    def get_metrics() -> Response:
        """Prometheus text format, summed over every worker of the server."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


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
