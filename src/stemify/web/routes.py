"""Routes of the web page: the page at ``/``, its assets under ``/web/assets``, and
``/web/config``, which tells the page what it cannot learn otherwise (is a key needed?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from stemify.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/web/assets"
# Revalidate on every load (ETag answers 304): after an upgrade the page and its modules must
# not mix versions from the browser's heuristic cache.
_REVALIDATE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_REVALIDATE)


@router.get("/web/config")
async def config(request: Request) -> dict[str, Any]:
    """Public: the page asks before it has a key whether it needs one."""
    # Read from app.state rather than through stemify.api's dependencies: stemify.api imports
    # this module.
    settings: Settings = request.app.state.services.settings
    return {
        "auth_required": bool(request.app.state.auth_required),
        "max_upload_mb": settings.max_upload_mb,
        "max_duration_s": settings.max_duration_s,
        "default_model": settings.default_model,
        "player_max_mb": settings.web_player_max_mb,
    }


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_REVALIDATE)
        return response


def mount_web(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, _Assets(directory=STATIC_DIR), name="web-assets")
