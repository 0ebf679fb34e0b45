"""The console's web application: its routes, behind a login token."""

from __future__ import annotations

import hmac
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from trustbus.console import _pages as pages
from trustbus.console._graph import graph_model
from trustbus.console._source import SqlRefused

if TYPE_CHECKING:
    from starlette.requests import Request

    from trustbus.console._source import Source

STATIC = Path(__file__).parent / "static"


class TokenGate(BaseHTTPMiddleware):
    """Every page, API call and asset needs the token: once as ``?token=``, then the cookie that login sets.

    A request with the right ``?token=`` is sent on to the same URL without it, with
    the cookie set (HttpOnly, SameSite=Strict); anything else without the cookie is
    a 401. A POST must be JSON: a form on another site cannot send one.
    """

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        cookie = f"trustbus_console_{request.url.port or 80}"  # cookies are per host, not per port
        given = request.query_params.get("token")
        if given is not None:
            if not self._valid(given):
                return _refused(request)
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(cookie, self.token, httponly=True, samesite="strict")
            return response
        if not self._valid(request.cookies.get(cookie)):
            return _refused(request)
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "send JSON"}, status_code=415)
        return await call_next(request)


def _refused(request: Request) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "log in with the console's token"}, status_code=401)
    return HTMLResponse(pages.unauthorized(), status_code=401)


async def _asked(request: Request) -> dict[str, Any] | None:
    """The JSON object a POST carries, or None if it carries none."""
    try:
        asked = await request.json()
    except ValueError:
        return None
    return asked if isinstance(asked, dict) else None


NOT_AN_OBJECT = {"error": "send a JSON object"}


async def _failed(request: Request, exc: Exception) -> Response:
    """A bus, agent or ledger error (the server unreachable, a refusal): its message, as the commands say it."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=502)
    return HTMLResponse(pages.failed(str(exc)), status_code=502)


def make_app(source: Source, token: str) -> Starlette:
    """The console over ``source``; every request needs ``token`` (see :class:`TokenGate`)."""

    def shown(title: str, body: str, scripts: tuple[str, ...] = ()) -> HTMLResponse:
        return HTMLResponse(pages.page(title, source.tenant, source.operator, body, scripts))

    async def live(request: Request) -> Response:
        return shown("Live decisions and refused messages", pages.live(await source.live(0)))

    async def live_api(request: Request) -> Response:
        after = request.query_params.get("after", "0")
        if not after.isdigit():
            return JSONResponse({"error": "after: a stream sequence"}, status_code=400)
        return JSONResponse(await source.live(int(after)))

    async def holds(request: Request) -> Response:
        return shown("Held, waiting for an operator", pages.holds(await source.holds()))

    async def holds_api(request: Request) -> Response:
        return JSONResponse(await source.holds())

    async def answer_api(request: Request) -> Response:
        from trustbus.agents import AgentError

        asked = await _asked(request)
        if asked is None:
            return JSONResponse(NOT_AN_OBJECT, status_code=400)
        try:
            decision = await source.answer(
                request.path_params["envelope_id"], approve=bool(asked.get("approve")), note=str(asked.get("note", ""))
            )
        except AgentError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(decision)

    async def incident(request: Request) -> Response:
        correlation = request.query_params.get("correlation", "").strip()
        if not correlation:
            return shown("Incident", pages.incident_form())
        model = graph_model(await source.incident(correlation))
        return shown(f"Incident {correlation}", pages.incident(model), ("cytoscape.min.js",))

    async def redecide_api(request: Request) -> Response:
        from trustbus._incident_view import redecided_rows
        from trustbus.agents import AgentError

        asked = await _asked(request)
        if asked is None:
            return JSONResponse(NOT_AN_OBJECT, status_code=400)
        found = await source.incident(str(asked.get("correlation", "")))
        with tempfile.TemporaryDirectory() as folder:
            policy = Path(folder) / "policy.yaml"
            policy.write_text(str(asked.get("policy", "")))
            try:
                rows = redecided_rows(found, policy)
            except AgentError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(rows)

    async def sql(request: Request) -> Response:
        import duckdb

        from trustbus.ledger import LedgerError

        text = request.query_params.get("q")
        if text is None:
            return shown("SQL over the ledger projection", pages.sql(pages.DEFAULT_SQL, None, None))
        try:
            result = await run_in_threadpool(source.sql, text)  # DuckDB would hold up every other request
        except (SqlRefused, LedgerError, duckdb.Error) as exc:
            return shown("SQL over the ledger projection", pages.sql(text, None, str(exc)))
        return shown("SQL over the ledger projection", pages.sql(text, result, None))

    routes = [
        Route("/", live),
        Route("/holds", holds),
        Route("/incident", incident),
        Route("/sql", sql),
        Route("/api/live", live_api),
        Route("/api/holds", holds_api),
        Route("/api/holds/{envelope_id}", answer_api, methods=["POST"]),
        Route("/api/redecide", redecide_api, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    from trustbus.agents import AgentError
    from trustbus.bus import BusError
    from trustbus.ledger import LedgerError

    handlers = {kind: _failed for kind in (BusError, AgentError, LedgerError)}
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)], exception_handlers=handlers)
