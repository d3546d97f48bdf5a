"""The web UI at ``/ui/``: static HTML, CSS and ES modules shipped in the package (``http/ui/``),
no build step and nothing from another origin. The pages talk to ``/v1`` with the key kept in
the tab's ``sessionStorage``; the assets themselves are public, like ``/docs``.

Every asset is served under a CSP that allows this origin's scripts, styles and requests only
(no inline script, no ``eval``), and may not be framed.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(__file__).with_name("ui")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidated, so an upgraded server's assets show at once
}


class UiFiles(StaticFiles):
    """The assets, each with the UI's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Add the UI's ``/v1`` routes and its pages under ``/ui/`` to ``app``."""
    from flow8_streams.http import routes_ui

    app.include_router(routes_ui.router)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    app.mount("/ui/", UiFiles(directory=ASSETS, html=True), name="ui")
