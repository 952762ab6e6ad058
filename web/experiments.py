"""The marketer console's experiment pages: the list, the create form, and each experiment's
report (arms, sample-ratio warning, stopping rule, conclusion, plots) with its lifecycle buttons
and the conclude form.

Every change goes through the same service functions as the API (experiments.service), with the
same models (ExperimentIn, ConcludeIn), so a form and a JSON body are checked alike. A bad form
is shown again with the person's values and each error next to the field it names (pydantic's
``loc``, or the domain error's ``field``). The plots are served here under the session cookie
(the /v1 plot routes need a Bearer key) and shown with <img>: matplotlib's SVG carries inline
styles that the pages' Content-Security-Policy would refuse if the SVG were inlined.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from fastapi import Request, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.datastructures import FormData

from engine import catalog as catalog_service
from engine.errors import NextbestError, NotFound
from experiments import plots
from experiments import service as experiment_service
from experiments.evidence import load_evidence
from experiments.models import Experiment
from experiments.report import PLOTS, build_report
from experiments.schemas import ConcludeIn, ExperimentIn
from web.pages import (
    DbSession,
    MarketerViewer,
    in_thread,
    page_router,
    posted,
    redirect,
    render_page,
    runtime_of,
    url_id,
)

__all__ = ["form_errors", "router"]

router = page_router(prefix="/marketer/experiments")

LIFECYCLE = ("start", "pause", "stop")
DEFAULTS = {
    "allocation": "fixed",
    "holdout_share": "0",
    "min_share": "0.05",
    "burn_in": "100",
    "update_minutes": "60",
    "priority": "0",
    "stopping.p_best": "0.95",
    "stopping.expected_loss": "1",
    "stopping.max_sample": "",
    "stopping.on_stop": "pause",
    "guardrail.margin": "0",
    "guardrail.probability": "0.99",
}
"""The create form's initial values: ExperimentIn's defaults, as text."""

_NUMBERS = ("holdout_share", "min_share", "burn_in", "update_minutes", "priority")
CREATE_FIELDS = {
    *DEFAULTS,
    *("key", "name", "hypothesis", "eligibility", "arms", "isolate"),
    *("stopping", "guardrail", "guardrail.level"),
}
"""The create form's fields that show their own errors."""
CONCLUDE_FIELDS = {"decision", "winner", "segment_winners", "note"}


# Forms -> models -------------------------------------------------------------------------------


def _text(form: FormData, name: str) -> str:
    return str(form.get(name) or "").strip()


def experiment_body(form: FormData) -> dict[str, Any]:
    """ExperimentIn's input from the create form (empty number fields take the defaults).

    Arms are checkboxes named ``arms`` (an experience key each) with an optional weight field
    ``weight.<key>``; nested fields are named by their path (``stopping.p_best``)."""
    body: dict[str, Any] = {
        "key": _text(form, "key"),
        "name": _text(form, "name"),
        "hypothesis": _text(form, "hypothesis"),
        "eligibility": _text(form, "eligibility") or None,
        "allocation": _text(form, "allocation") or "fixed",
        "isolate": form.get("isolate") == "on",
        "arms": [],
    }
    for key in form.getlist("arms"):
        arm: dict[str, Any] = {"experience": str(key)}
        weight = _text(form, f"weight.{key}")
        if weight:
            arm["weight"] = weight
        body["arms"].append(arm)
    for name in _NUMBERS:
        if _text(form, name):
            body[name] = _text(form, name)
    stopping = {"on_stop": _text(form, "stopping.on_stop") or "pause"}
    for name in ("p_best", "expected_loss", "max_sample"):
        if _text(form, f"stopping.{name}"):
            stopping[name] = _text(form, f"stopping.{name}")
    body["stopping"] = stopping
    if _text(form, "guardrail.level"):
        guardrail = {"level": _text(form, "guardrail.level")}
        for name in ("margin", "probability"):
            if _text(form, f"guardrail.{name}"):
                guardrail[name] = _text(form, f"guardrail.{name}")
        body["guardrail"] = guardrail
    return body


def _form_field(path: str) -> str:
    """The form field an error path names: arms.2.weight -> arms (one fieldset holds them)."""
    parts = path.split(".")
    if parts[0] == "arms":
        return "arms"
    return ".".join(parts[:2]) if parts[0] in ("stopping", "guardrail") else parts[0]


def form_errors(error: ValidationError | NextbestError, fields: Collection[str]) -> dict[str, str]:
    """Form field -> message, for every error (a pydantic error's ``loc``, a domain error's
    ``field``); "form" when it names none of ``fields`` (shown above the form)."""
    found: dict[str, str] = {}
    if isinstance(error, NextbestError):
        field = _form_field(error.field) if error.field else "form"
        return {field if field in fields else "form": error.message}
    for item in error.errors():
        path = ".".join(str(p) for p in item.get("loc", ()))
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if not path and ":" in message:  # model validators name their field first
            path, _, message = message.partition(":")
            message = message.strip()
        field = _form_field(path) if path else "form"
        if path.startswith("arms.") and path.count(".") >= 2:
            message = f"arm {int(path.split('.')[1]) + 1}: {message}"
        found.setdefault(field if field in fields else "form", message)
    return found


# The list and the create form ------------------------------------------------------------------


@router.get("")
def experiments_page(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    rows = experiment_service.list_experiments(session=session, status=None, limit=500, after=None)
    return render_page(
        request, "marketer/experiments.html", title="Experiments", rows=rows, plan=_plan
    )


def _plan(row: Experiment) -> dict[str, float]:
    return experiment_service.planned_weights(row)


def _form_context(session: Session) -> dict[str, Any]:
    try:
        scale = catalog_service.get_outcome_scale(session=session)
    except NotFound:
        scale = None
    return {
        "experiences": [e for e in catalog_service.list_experiences(session=session) if e.active],
        "levels": [str(level["label"]) for level in scale.levels] if scale else [],
    }


@router.get("/new")
def new_experiment_page(request: Request, viewer: MarketerViewer, session: DbSession) -> Response:
    return render_page(
        request,
        "marketer/experiment_new.html",
        title="New experiment",
        values={**DEFAULTS},
        arms={},
        errors={},
        **_form_context(session),
    )


@router.post("")
async def create_experiment(request: Request, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)

    def store(session: Session) -> str:
        body = ExperimentIn.model_validate(experiment_body(form))
        row = experiment_service.create_experiment(
            session=session, experiment_in=body, actor=viewer.actor
        )
        return row.key

    try:
        key = await in_thread(runtime, store)
    except (ValidationError, NextbestError) as error:
        values = {name: str(value) for name, value in form.multi_items() if name != "arms"}
        context = await in_thread(runtime, _form_context)
        return render_page(
            request,
            "marketer/experiment_new.html",
            status=422,
            title="New experiment",
            values={**DEFAULTS, "isolate": "", **values},
            arms={str(k): True for k in form.getlist("arms")},
            errors=form_errors(error, CREATE_FIELDS),
            **context,
        )
    return redirect(f"/marketer/experiments/{url_id(key)}", done="experiment_created")


# One experiment --------------------------------------------------------------------------------


def _report_context(request: Request, session: Session, key: str) -> dict[str, Any]:
    row = experiment_service.get_experiment(session=session, key=key)
    catalog = runtime_of(request).catalog(session)
    report = build_report(session=session, catalog=catalog, row=row)
    return {
        "row": row,
        "report": report,
        "names": {k: info.name for k, info in catalog.experiences.items()},
        "actions": [
            action
            for action in LIFECYCLE
            if row.status in experiment_service.TRANSITIONS[action][0]
        ],
        "may_conclude": row.status in experiment_service.TRANSITIONS["conclude"][0],
        "plot_names": PLOTS,
        "plot_titles": plots.TITLES,
    }


@router.get("/{key}")
def experiment_page(
    request: Request, key: str, viewer: MarketerViewer, session: DbSession
) -> Response:
    context = _report_context(request, session, key)
    return render_page(
        request,
        "marketer/experiment.html",
        title=f"Experiment {context['row'].name}",
        errors={},
        values={},
        **context,
    )


@router.get("/{key}/plots/{name}.svg")
def experiment_plot(
    request: Request,
    key: str,
    name: Literal["posterior", "allocation", "cumulative"],
    viewer: MarketerViewer,
    session: DbSession,
) -> Response:
    row = experiment_service.get_experiment(session=session, key=key)
    evidence = load_evidence(session, runtime_of(request).catalog(session), row)
    svg = plots.render(name, evidence, title=f"{row.name}: {plots.TITLES[name]}")
    # An image document: its inline styles are its own; it may run nothing and load nothing.
    return Response(
        svg,
        media_type="image/svg+xml",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.post("/{key}/conclude")
async def conclude_experiment(request: Request, key: str, viewer: MarketerViewer) -> Response:
    form = await posted(request, viewer)
    runtime = runtime_of(request)
    decision = _text(form, "decision")
    body: dict[str, Any] = {"decision": decision, "note": _text(form, "note")}
    if decision == "winner":
        body["winner"] = _text(form, "winner") or None
    if decision == "segment_winners":
        where, experience = _text(form, "where"), _text(form, "segment_experience")
        body["segment_winners"] = [{"where": where, "experience": experience}]
    body["promote"] = form.get("promote") == "on"

    def store(session: Session) -> bool:
        conclude_in = ConcludeIn.model_validate(body)
        row = experiment_service.conclude(
            session=session, key=key, conclude_in=conclude_in, actor=viewer.actor
        )
        return row.released_at is not None

    try:
        released = await in_thread(runtime, store)
    except (ValidationError, NextbestError) as error:
        if isinstance(error, NextbestError) and error.status != 422:
            raise
        found = form_errors(error, CONCLUDE_FIELDS)
        errors = {("where" if f == "segment_winners" else f): m for f, m in found.items()}
        context = await in_thread(runtime, lambda s: _report_context(request, s, key))
        return render_page(
            request,
            "marketer/experiment.html",
            status=422,
            title=f"Experiment {context['row'].name}",
            errors=errors,
            values={name: str(value) for name, value in form.multi_items()},
            **context,
        )
    runtime.experiments_changed()
    if released:
        runtime.wrote_stats()
    return redirect(f"/marketer/experiments/{url_id(key)}", done="experiment_concluded")


@router.post("/{key}/{action}")
async def change_status(
    request: Request, key: str, action: Literal["start", "pause", "stop"], viewer: MarketerViewer
) -> Response:
    await posted(request, viewer)
    runtime = runtime_of(request)
    await in_thread(
        runtime,
        lambda session: experiment_service.change_status(
            session=session, key=key, action=action, change=None, actor=viewer.actor
        ),
    )
    runtime.experiments_changed()
    return redirect(f"/marketer/experiments/{url_id(key)}", done=f"experiment_{action}")
