"""The marketer console: the catalog, rule-set versions (read, diff, compile, activate and roll
back with a confirmation), and what the engine knows (the segment tree, overrides, customer
value, groups with no good action). The experiment pages are in web/experiments.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import ValidationError
from sqlmodel import Session

from engine import catalog as catalog_service
from engine import customer_value, insights, override_insights
from engine.catalog import Catalog
from engine.errors import NextbestError, NotFound
from engine.no_good_action import no_good_action
from engine.schemas import ExperienceCreate, ExperienceUpdate, SegmentationIn
from rules import guardrails, versions
from rules.compiler import Settings as CompileSettings
from rules.compiler import sentence
from rules.models import RuleSetVersion
from web.pages import (
    DbSession,
    MarketerViewer,
    field_error,
    in_thread,
    page_router,
    posted,
    redirect,
    render_page,
    runtime_of,
)

router = page_router(prefix="/marketer")


def _names(catalog: Catalog) -> dict[str, str]:
    return {key: info.name for key, info in catalog.experiences.items()}


@router.get("")
def overview(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    catalog = runtime_of(request).catalog(session)
    return render_page(
        request,
        "marketer/overview.html",
        title="Marketer console",
        active=versions.active_version(session),
        latest=versions.list_versions(session=session, limit=1, before=None),
        catalog=catalog,
        guardrails=guardrails.list_guardrails(session=session, active=True),
    )


# Catalog ---------------------------------------------------------------------------------------


def _catalog_context(session: Session) -> dict[str, Any]:
    try:
        scale = catalog_service.get_outcome_scale(session=session)
    except NotFound:
        scale = None
    return {
        "experiences": catalog_service.list_experiences(session=session),
        "scale": scale,
        "specs": [
            catalog_service.public_spec(r)
            for r in catalog_service.list_attribute_specs(session=session)
        ],
        "segmentation": catalog_service.get_segmentation(session=session),
        "decay": catalog_service.engine_state(session),
        "guardrails": [guardrails.public(g) for g in guardrails.list_guardrails(session=session)],
    }


@router.get("/catalog")
def catalog_page(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    return render_page(
        request, "marketer/catalog.html", title="Catalog", error=None, **_catalog_context(session)
    )


async def _catalog_error(request: Request, message: str, form: str) -> Response:
    context = await in_thread(runtime_of(request), _catalog_context)
    return render_page(
        request,
        "marketer/catalog.html",
        status=422,
        title="Catalog",
        error={"message": message, "form": form},
        **context,
    )


async def _catalog_change(
    request: Request,
    parse: Callable[[], Any],
    store: Callable[[Session, Any], Any],
    form: str,
    done: str,
) -> Response:
    """Validate a catalog form (``parse``), store it in one transaction and go back to the
    catalog; a bad form shows there, next to the form it came from."""
    try:
        body = parse()
        await in_thread(runtime_of(request), lambda session: store(session, body))
    except ValidationError as error:
        field, message = field_error(error)
        return await _catalog_error(request, f"{field}: {message}", form)
    except NextbestError as error:
        return await _catalog_error(request, error.message, form)
    anchor = "segmentation" if form == "segmentation" else "experiences"
    return redirect("/marketer/catalog", done=done, anchor=anchor)


@router.post("/experiences")
async def create_experience(request: Request, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    return await _catalog_change(
        request,
        lambda: ExperienceCreate(
            key=str(form.get("key") or "").strip(),
            name=str(form.get("name") or "").strip(),
            description=str(form.get("description") or ""),
            cost=str(form.get("cost") or "0"),
            cost_on=[str(v) for v in form.getlist("cost_on")] or None,
            is_control=form.get("is_control") == "on",
            eligibility=str(form.get("eligibility") or "").strip() or None,
            channels=[c.strip() for c in str(form.get("channels") or "").split(",") if c.strip()],
        ),
        lambda session, body: catalog_service.create_experience(
            session=session, experience_in=body, actor=viewer.actor
        ),
        "experience",
        "experience_created",
    )


@router.post("/experiences/{key}/active")
async def set_experience_active(request: Request, key: str, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    return await _catalog_change(
        request,
        lambda: ExperienceUpdate(active=form.get("active") == "true"),
        lambda session, body: catalog_service.update_experience(
            session=session, key=key, experience_update=body, actor=viewer.actor
        ),
        "experience",
        "experience_changed",
    )


@router.post("/segmentation")
async def set_segmentation(request: Request, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    names = [a.strip() for a in str(form.get("attributes") or "").split(",") if a.strip()]
    return await _catalog_change(
        request,
        lambda: (
            SegmentationIn(auto=True)
            if form.get("auto") == "on"
            else SegmentationIn(attributes=names)
        ),
        lambda session, body: catalog_service.put_segmentation(
            session=session, segmentation_in=body, actor=viewer.actor
        ),
        "segmentation",
        "segmentation_changed",
    )


# Rule sets -------------------------------------------------------------------------------------


@router.get("/rules")
def rules_page(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    return render_page(
        request,
        "marketer/rules.html",
        title="Rule sets",
        rows=versions.list_versions(session=session, limit=50, before=None),
        error=None,
    )


@router.post("/rules/compile")
async def compile_rules(request: Request, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)
    try:
        budget = int(str(form.get("budget") or "25"))
        min_support = float(str(form.get("min_support") or "30"))
        if not 1 <= budget <= 200 or not 0 <= min_support <= 1e9:
            raise ValueError
    except ValueError:
        return await _rules_error(request, "budget is 1 to 200 rules; min_support 0 or more")

    def run(session: Session) -> int:
        row = versions.compile_version(
            session=session,
            runtime=runtime,
            settings=CompileSettings(budget=budget, min_support=min_support),
            actor=viewer.actor,
        )
        assert row.version is not None
        return row.version

    try:
        version = await in_thread(runtime, run)
    except NextbestError as error:
        return await _rules_error(request, error.message)
    return redirect(f"/marketer/rules/{version}", done="compiled")


async def _rules_error(request: Request, message: str) -> Response:
    rows = await in_thread(
        runtime_of(request), lambda s: versions.list_versions(session=s, limit=50, before=None)
    )
    return render_page(
        request, "marketer/rules.html", status=422, title="Rule sets", rows=rows, error=message
    )


@router.get("/rules/diff")
def diff_page(
    request: Request, viewer: MarketerViewer, session: DbSession, a: int = 0, b: int = 0
) -> Response:
    before = versions.get_version(session=session, version=a, field="a")
    after = versions.get_version(session=session, version=b, field="b")
    names = _names(runtime_of(request).catalog(session))
    return render_page(
        request,
        "marketer/diff.html",
        title=f"Rule set {a} → {b}",
        diff=versions.diff(before, after),
        before=before,
        after=after,
        sentence=lambda rule: sentence(rule, names),
        others=versions.list_versions(session=session, limit=50, before=None),
    )


@router.get("/rules/{version}")
def ruleset_page(
    request: Request, version: int, viewer: MarketerViewer, session: DbSession
) -> Response:
    row = versions.get_version(session=session, version=version)
    names = _names(runtime_of(request).catalog(session))
    return render_page(
        request,
        "marketer/ruleset.html",
        title=f"Rule set version {version}",
        row=row,
        active=versions.active_version(session),
        others=versions.list_versions(session=session, limit=50, before=None),
        names=names,
    )


@router.get("/rules/{version}/activate")
def confirm_activation(
    request: Request, version: int, viewer: MarketerViewer, session: DbSession
) -> Response:
    row = versions.get_version(session=session, version=version)
    active = versions.active_version(session)
    change = versions.diff(active, row) if active is not None and active is not row else None
    return render_page(
        request,
        "marketer/activate.html",
        title=f"Activate version {version}?",
        row=row,
        active=active,
        change=change,
        rollback=active is not None and _version(active) > version,
    )


def _version(row: RuleSetVersion) -> int:
    return row.version or 0


@router.post("/rules/{version}/activate")
async def activate(request: Request, version: int, viewer: MarketerViewer) -> Response:
    await posted(request, viewer)
    await in_thread(
        runtime_of(request),
        lambda s: versions.activate(session=s, version=version, actor=viewer.actor),
    )
    return redirect(f"/marketer/rules/{version}", done="activated")


# Insights --------------------------------------------------------------------------------------


def _tree(nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Children of each node key ("" is the root), in the report's order."""
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in nodes:
        if node["segment"]:
            parent = node["segment"].rpartition("|")[0]
            children[parent].append(node)
    return children


@router.get("/segments")
def segments_page(
    request: Request,
    viewer: MarketerViewer,
    session: DbSession,
    depth: int = 2,
    exposure: int = 0,
) -> Response:
    runtime = runtime_of(request)
    report = insights.segment_insights(
        session=session,
        runtime=runtime,
        exposure=min(2, max(0, exposure)),
        max_depth=min(8, max(0, depth)),
    )
    return render_page(
        request,
        "marketer/segments.html",
        title="Segment tree",
        report=report,
        root=next((n for n in report["nodes"] if n["segment"] == ""), None),
        children=_tree(report["nodes"]),
        depth=depth,
        names=_names(runtime.catalog(session)),
    )


@router.get("/overrides")
def overrides_page(
    request: Request, viewer: MarketerViewer, session: DbSession, days: float = 90.0
) -> Response:
    days = min(3650.0, max(1.0, days))
    report = override_insights.override_insights(
        session=session, runtime=runtime_of(request), days=days
    )
    return render_page(
        request, "marketer/overrides.html", title="Overrides", report=report, days=days
    )


@router.get("/value")
def value_page(
    request: Request,
    viewer: MarketerViewer,
    session: DbSession,
    days: float = 365.0,
    depth: int = 1,
) -> Response:
    report = customer_value.customer_value(
        session=session, runtime=runtime_of(request), days=min(3650.0, max(1.0, days)), depth=depth
    )
    return render_page(request, "marketer/value.html", title="Customer value", report=report)


@router.get("/no-good-action")
def no_good_action_page(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    runtime = runtime_of(request)
    catalog = runtime.catalog(session)
    report = insights.segment_insights(session=session, runtime=runtime)
    found = no_good_action(report, control=insights.control_key(catalog))
    return render_page(
        request,
        "marketer/no_good_action.html",
        title="No good action",
        found=found,
        names=_names(catalog),
    )


__all__ = ["router"]
