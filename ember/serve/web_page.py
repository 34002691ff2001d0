"""The web page of `ember serve`: a chat playground and an engine dashboard (files in serve/web/).

The page and its files are static and public (no API key: ApiGuard guards /v1 only); the
page asks for the key and sends it to /v1 itself. Every file is revalidated on each load
(`no-cache` + ETag: a 304 when unchanged) so an upgraded server never runs an old script.
The Content-Security-Policy lets the page load only its own files and talk only to its own
server: even a rendering bug could not run injected script or send data elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent / "web"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


class _WebFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount_web_page(app: FastAPI) -> None:
    index = WEB_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(f"the web page's files are missing from {WEB_DIR} (a broken install? "
                           "pyproject.toml ships them as package data)")

    @app.get("/", include_in_schema=False)
    async def web_page():
        return FileResponse(index, headers=HEADERS)

    app.mount("/web", _WebFiles(directory=WEB_DIR), name="web")
