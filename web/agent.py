"""The agent console: who to call today, a customer's profile and history, the next best action
with its reasons, and the agent's answer to it (accept, or override with a note; the result).

Every figure comes from the engine services the API uses: the worklist (engine.insights), the
decision (engine.decisions.decide, with the agent's name as agent_id), overrides and reactions
(engine.overrides), outcomes (engine.decisions.record_outcome) and the history
(engine.history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from engine import customers, decisions, history, insights, overrides
from engine.catalog import Catalog
from engine.errors import Conflict, NextbestError
from engine.models import Customer
from engine.schemas import DecisionIn, OutcomeIn, OverrideIn, ReactionIn
from web.pages import (
    AgentViewer,
    DbSession,
    field_error,
    in_thread,
    page_router,
    posted,
    redirect,
    render_page,
    runtime_of,
    url_id,
)

router = page_router(prefix="/agent")

WORKLIST_PAGE = 25
REASON_CODES = {
    "customer_request": "The customer asked for it",
    "retention_risk": "Higher risk of leaving than the engine thinks",
    "already_loyal": "Loyal customer: no offer needed",
    "offer_not_suitable": "The offer does not suit this customer",
    "policy": "Company policy",
    "agent_judgement": "My judgement (see note)",
}


def _names(catalog: Catalog) -> dict[str, str]:
    return {key: info.name for key, info in catalog.experiences.items()}


@router.get("")
def worklist(
    request: Request,
    viewer: AgentViewer,
    session: DbSession,
    where: str = "",
    experience: str = "",
    offset: int = 0,
) -> Response:
    runtime = runtime_of(request)
    catalog = runtime.catalog(session)
    page: dict[str, Any] = {"items": [], "matched": 0, "next_offset": None}
    error = None
    try:
        page = insights.worklist(
            session=session,
            runtime=runtime,
            where=where.strip() or None,
            experience=experience or None,
            min_gain=None,
            limit=WORKLIST_PAGE,
            offset=max(0, offset),
        )
    except NextbestError as failure:
        error = {"field": failure.field, "message": failure.message}
    return render_page(
        request,
        "agent/worklist.html",
        status=422 if error and error["field"] in ("where", "experience") else 200,
        title="Worklist",
        page=page,
        where=where,
        experience=experience,
        offset=max(0, offset),
        page_size=WORKLIST_PAGE,
        names=_names(catalog),
        error=error,
    )


@router.get("/customers")
def find(request: Request, viewer: AgentViewer, session: DbSession, q: str = "") -> Response:
    query = q.strip()
    rows: list[Customer] = []
    if query:
        rows, _ = customers.list_customers(session=session, cursor=None, limit=20, query=query)
        exact = [r for r in rows if r.id == query]
        if exact or len(rows) == 1:
            return redirect(f"/agent/customers/{url_id((exact or rows)[0].id)}")
    return render_page(request, "agent/find.html", title="Find a customer", q=query, rows=rows)


def _profile(session: Session, request: Request, customer_id: str) -> dict[str, Any]:
    """What the customer page shows: profile, value, history."""
    runtime = runtime_of(request)
    catalog = runtime.catalog(session)
    customer = customers.get_customer(session=session, customer_id=customer_id)
    score = None
    if catalog.scale is not None:
        try:
            scores = insights.score_customers(
                session=session,
                runtime=runtime,
                catalog=catalog,
                snapshot=runtime.stats(session, catalog),
                customers=[customer],
            )
            score = scores[0] if scores else None
        except Conflict:
            score = None  # no control experience: nothing to compare with
    attributes = [
        (name, customer.attributes.get(name), spec.bin(customer.attributes.get(name)))
        for name, spec in sorted(catalog.specs.items())
    ]
    return {
        "customer": customer,
        "attributes": attributes,
        "segment": catalog.finest_segment(customer.attributes),
        "score": score,
        "history": history.customer_history(session=session, customer_id=customer_id),
        "names": _names(catalog),
        "active": sorted(k for k, info in catalog.experiences.items() if info.active),
        "levels": list(catalog.scale.labels) if catalog.scale else [],
        "channels": sorted({c for info in catalog.experiences.values() for c in info.channels}),
        "reasons": REASON_CODES,
    }


@router.get("/customers/{customer_id}")
def customer_page(
    request: Request,
    customer_id: str,
    viewer: AgentViewer,
    session: DbSession,
    decision: str = "",
) -> Response:
    context = _profile(session, request, customer_id)
    name = context["customer"].name or customer_id
    return render_page(
        request, "agent/customer.html", title=name, focus=decision, error=None, **context
    )


async def _customer_error(
    request: Request, customer_id: str, message: str, decision_id: str | None = None
) -> Response:
    runtime = runtime_of(request)
    context = await in_thread(runtime, lambda s: _profile(s, request, customer_id))
    name = context["customer"].name or customer_id
    return render_page(
        request,
        "agent/customer.html",
        status=422,
        title=name,
        focus=decision_id or "",
        error={"message": message, "decision_id": decision_id},
        **context,
    )


@router.post("/customers/{customer_id}/decide")
async def decide(request: Request, customer_id: str, viewer: AgentViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)
    channel = str(form.get("channel") or "") or None
    try:
        decision_in = DecisionIn(
            customer_id=customer_id, agent_id=viewer.name, channel=channel, top_k=50
        )
        decision = await run_in_threadpool(
            decisions.decide, runtime=runtime, decision_in=decision_in
        )
    except ValidationError as error:
        return await _customer_error(request, customer_id, field_error(error)[1])
    except NextbestError as error:
        if error.status == 404:
            raise
        return await _customer_error(request, customer_id, error.message)

    def context(session: Session) -> dict[str, Any]:
        catalog = runtime.catalog(session)
        return {
            "customer": customers.get_customer(session=session, customer_id=customer_id),
            "names": _names(catalog),
            "active": sorted(k for k, info in catalog.experiences.items() if info.active),
            "reasons": REASON_CODES,
        }

    shown = await in_thread(runtime, context)
    chosen = next((r for r in decision.ranked if r.experience == decision.experience), None)
    return render_page(
        request,
        "agent/decision.html",
        title=f"Next best action for {shown['customer'].name or customer_id}",
        decision=decision,
        chosen=chosen,
        **shown,
    )


async def _answer(
    request: Request,
    decision_id: str,
    customer_id: str,
    parse: Callable[[], Any],
    store: Callable[[Session, Any], Any],
    done: str,
) -> Response:
    """Validate an agent's answer to a decision (``parse``), store it in one transaction and go
    back to the customer's page; a bad answer shows there, next to the decision."""
    try:
        answer = parse()
        await in_thread(runtime_of(request), lambda session: store(session, answer))
    except ValidationError as error:
        field, message = field_error(error)
        return await _customer_error(request, customer_id, f"{field}: {message}", decision_id)
    except NextbestError as error:
        return await _customer_error(request, customer_id, error.message, decision_id)
    focus = f"?decision={decision_id}" if done != "result" else ""
    return redirect(
        f"/agent/customers/{url_id(customer_id)}{focus}", done=done, anchor=f"d-{decision_id}"
    )


@router.post("/decisions/{decision_id}/override")
async def override(request: Request, decision_id: str, viewer: AgentViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)
    return await _answer(
        request,
        decision_id,
        str(form.get("customer_id") or ""),
        lambda: OverrideIn(
            experience=str(form.get("experience") or ""),
            note=str(form.get("note") or ""),
            reason_code=str(form.get("reason_code") or "") or None,
            agent_id=viewer.name,
        ),
        lambda session, override_in: overrides.override_decision(
            session=session,
            catalog=runtime.catalog(session),
            decision_id=decision_id,
            override_in=override_in,
            actor=viewer.actor,
        ),
        "overridden",
    )


@router.post("/decisions/{decision_id}/reaction")
async def reaction(request: Request, decision_id: str, viewer: AgentViewer) -> Response:
    form = await posted(request, viewer)
    return await _answer(
        request,
        decision_id,
        str(form.get("customer_id") or ""),
        lambda: ReactionIn.model_validate({"reaction": form.get("reaction")}),
        lambda session, reaction_in: overrides.record_reaction(
            session=session, decision_id=decision_id, reaction_in=reaction_in
        ),
        "reaction",
    )


@router.post("/decisions/{decision_id}/outcome")
async def outcome(request: Request, decision_id: str, viewer: AgentViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)
    return await _answer(
        request,
        decision_id,
        str(form.get("customer_id") or ""),
        lambda: OutcomeIn(
            decision_id=decision_id,
            result=str(form.get("result") or ""),
            idempotency_key=f"console-{decision_id}",
        ),
        lambda session, outcome_in: decisions.record_outcome(
            session=session, runtime=runtime, outcome_in=outcome_in
        ),
        "result",
    )
