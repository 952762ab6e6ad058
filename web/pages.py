"""The consoles' plumbing: sign-in and sign-out, who is viewing, CSRF, rendering, error pages.

Pages call the same engine services as the API (in this process, no HTTP round trip); the agent
console lives in web/agent.py, the marketer console in web/marketer.py. A page route raises
``SignInFirst`` (redirect to the sign-in form), ``Forbidden`` (the role may not see this) or a
domain error (engine.errors), and ``PageRoute`` turns each into an HTML answer: the API's JSON
error handlers never answer a person.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from engine import auth
from engine.config import Settings
from engine.errors import NextbestError
from engine.models import ApiKey
from engine.runtime import Runtime
from web import render
from web.session import COOKIE, Signer, WebSession, check_csrf, set_cookie

AREAS = {"agent": "/agent", "marketer": "/marketer"}
"""Each console and its home; an admin sees both."""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

FLASH = {
    "signed_out": "You are signed out.",
    "accepted": "Accepted: deliver the recommended experience, then record the result here.",
    "overridden": "Override recorded with your note.",
    "reaction": "The customer's answer is recorded.",
    "result": "Result recorded.",
    "compiled": "A new rule-set version is compiled. Review it before you activate it.",
    "activated": "This version is now active: decisions follow it.",
    "experience_created": "Experience created.",
    "experience_changed": "Experience updated.",
    "segmentation_changed": "Segmentation updated.",
    "experiment_created": "Experiment created as a draft. Start it when it is ready.",
    "experiment_start": "The experiment is running: eligible decisions now follow its arms.",
    "experiment_pause": "The experiment is paused: decisions follow the rules meanwhile.",
    "experiment_stop": "The experiment is stopped. Conclude it with your decision.",
    "experiment_concluded": "The experiment is concluded with your decision.",
}


@dataclass(frozen=True)
class WebState:
    env: Environment
    signer: Signer


@dataclass(frozen=True)
class Viewer:
    """The signed-in person: their API key's row (re-read on every request)."""

    key_id: int
    name: str
    role: str
    session: WebSession

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"

    def may(self, area: str) -> bool:
        return self.role in ("admin", area)

    @property
    def home(self) -> str:
        return AREAS["agent" if self.role == "agent" else "marketer"]


class SignInFirst(Exception):
    pass


class Forbidden(Exception):
    pass


class BadForm(Exception):
    """A form failed its CSRF check."""


class PageRoute(APIRoute):
    """Answers a person in HTML: redirects to sign-in, 403 pages and domain errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInFirst:
                target = "/signin?" + urlencode({"next": request.url.path})
                return RedirectResponse(target, status_code=303)
            except Forbidden:
                return render_page(
                    request, "error.html", status=403, title="Not for your role",
                    message="Your key's role may not open this page.",
                )  # fmt: skip
            except BadForm:
                return render_page(
                    request, "error.html", status=403, title="Form expired",
                    message="This form is out of date (or was not sent from this site). "
                    "Go back, reload the page and try again.",
                )  # fmt: skip
            except NextbestError as error:
                return render_page(
                    request, "error.html", status=error.status, title="Cannot do that",
                    message=error.message,
                )  # fmt: skip

        return page


def page_router(**kwargs: Any) -> APIRouter:
    return APIRouter(route_class=PageRoute, include_in_schema=False, **kwargs)


# Dependencies ----------------------------------------------------------------------------------


def web_session(request: Request) -> WebSession:
    """The browser's session (a new anonymous one, set on the response, when it has none)."""
    state: WebState = request.app.state.web
    session = state.signer.loads(request.cookies.get(COOKIE))
    if session is None:
        session = WebSession.anonymous()
        request.state.set_session = session
    request.state.web_session = session
    return session


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def viewer_of(request: Request) -> Viewer | None:
    session = web_session(request)
    if session.key_id is None:
        return None
    runtime = runtime_of(request)
    with runtime.read_session() as db:  # every page passes here: no SQLite write lock
        row = db.get(ApiKey, session.key_id)
    if row is None or row.revoked_at is not None:
        return None
    viewer = Viewer(key_id=session.key_id, name=row.name, role=row.role, session=session)
    request.state.viewer = viewer
    return viewer


class Needs:
    """Dependency: a signed-in viewer whose role may open ``area``."""

    def __init__(self, area: str) -> None:
        self.area = area

    def __call__(self, request: Request) -> Viewer:
        viewer = viewer_of(request)
        if viewer is None:
            raise SignInFirst
        if not viewer.may(self.area):
            raise Forbidden
        return viewer


AgentViewer = Annotated[Viewer, Depends(Needs("agent"))]
MarketerViewer = Annotated[Viewer, Depends(Needs("marketer"))]


def db_session(request: Request) -> Any:
    """One transaction per page: committed when the route returns, rolled back on error. A GET
    reads: on SQLite it does not take the write lock (engine.db.read_session)."""
    runtime = runtime_of(request)
    with runtime.read_session() if request.method == "GET" else runtime.session() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


DbSession = Annotated[Session, Depends(db_session)]


async def posted(request: Request, viewer: Viewer | None = None) -> FormData:
    """The submitted form, after its CSRF token matched the session's."""
    form = await request.form()
    session = viewer.session if viewer is not None else web_session(request)
    if not check_csrf(session, form.get("csrf_token")):
        raise BadForm
    return form


def in_thread(runtime: Runtime, work: Callable[[Session], Any]) -> Awaitable[Any]:
    """Run ``work`` in a worker thread in one transaction (committed when it returns)."""

    def run() -> Any:
        with runtime.session() as session:
            result = work(session)
            session.commit()
            return result

    return run_in_threadpool(run)


def field_error(error: ValidationError) -> tuple[str, str]:
    """(field, message) of a pydantic error, as the API words it."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "form"
    return field, str(first.get("msg", "invalid")).removeprefix("Value error, ")


def redirect(path: str, *, done: str | None = None, anchor: str | None = None) -> Response:
    target = path + (("&" if "?" in path else "?") + f"done={done}" if done else "")
    return RedirectResponse(target + (f"#{anchor}" if anchor else ""), status_code=303)


def url_id(value: str) -> str:
    return quote(value, safe="")


# Rendering -------------------------------------------------------------------------------------


def render_page(
    request: Request, template: str, *, status: int = 200, **context: Any
) -> HTMLResponse:
    state: WebState = request.app.state.web
    session: WebSession = getattr(request.state, "web_session", None) or web_session(request)
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    done = request.query_params.get("done")
    html = state.env.get_template(template).render(
        viewer=viewer,
        csrf=session.csrf,
        path=request.url.path,
        flash=FLASH.get(done or ""),
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    fresh = getattr(request.state, "set_session", None)
    if fresh is not None:
        set_cookie(response, request, state.signer, fresh)
    return response


# Sign-in ---------------------------------------------------------------------------------------

router = page_router()


def _local(target: str | None) -> str | None:
    """``target`` when it is a path on this site (never another host: no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@router.get("/")
def home(request: Request) -> Response:
    viewer = viewer_of(request)
    return RedirectResponse(viewer.home if viewer else "/signin", status_code=303)


@router.get("/signin")
def signin_form(request: Request, next: str | None = None) -> Response:
    web_session(request)
    return render_page(request, "signin.html", title="Sign in", next=_local(next) or "")


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await posted(request)
    target = _local(str(form.get("next") or ""))
    key = str(form.get("key") or "").strip()
    runtime = runtime_of(request)

    def check(session: Session) -> auth.CheckedKey | None:
        return auth.check_key(session=session, cache=runtime.keys, key=key) if key else None

    checked = await in_thread(runtime, check)
    error = None
    if checked is None:
        error = "That key is unknown or revoked."
    elif checked.role not in ("agent", "marketer", "admin"):
        error = f"A {checked.role} key has no console: sign in with an agent or marketer key."
    if error is not None:
        return render_page(
            request, "signin.html", status=401, title="Sign in", next=target or "", error=error
        )
    assert checked is not None
    state: WebState = request.app.state.web
    session = web_session(request).signed_in(checked.id)
    viewer = Viewer(checked.id, checked.name, checked.role, session)
    if target and not any(
        target.startswith(home) and not viewer.may(a) for a, home in AREAS.items()
    ):
        destination = target
    else:
        destination = viewer.home
    response = RedirectResponse(destination, status_code=303)
    set_cookie(response, request, state.signer, session)
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    await posted(request)
    state: WebState = request.app.state.web
    response = redirect("/signin", done="signed_out")
    set_cookie(response, request, state.signer, WebSession.anonymous())
    return response


# Installation ----------------------------------------------------------------------------------


def install(app: FastAPI, settings: Settings) -> None:
    """Add the consoles to the API's app: pages, static files, templates and the cookie signer."""
    from web import agent, experiments, marketer

    app.state.web = WebState(env=render.build(), signer=Signer(settings.session_secret))
    app.mount("/static", StaticFiles(directory=render.STATIC), name="static")
    for module in (router, agent.router, marketer.router, experiments.router):
        app.include_router(module)


__all__ = ["AgentViewer", "DbSession", "MarketerViewer", "Viewer", "install", "render_page"]
