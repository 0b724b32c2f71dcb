"""Serves the web page's static assets at ``/ui/``.

The page is plain HTML, CSS and ES modules from ``static/`` (shipped as package data): it
signs in with an API key held in the tab's ``sessionStorage`` and calls the ``/v1/`` API with
``Authorization: Bearer``, so the assets themselves need no key (``service.guard`` guards only
``/v1/``). Every answer carries a strict Content-Security-Policy: scripts, styles and requests
only from this origin, nothing inline, no framing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from service.errors import NotFound

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC = Path(str(resources.files("service.ui") / "static"))

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # ES modules are refused without a JS type
    ".css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
"""No inline script or style, no other origin: an event message or a model's answer that
holds markup cannot run (the page also writes every value as text, never as HTML)."""

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidated: an upgraded server's page is seen at once
}


@cache
def asset_names() -> frozenset[str]:
    """The files the page is made of; nothing else under ``/ui/`` is served. Listed once, on
    the first request: the folder is package data, fixed while the server runs."""
    return frozenset(p.name for p in STATIC.iterdir()
                     if p.is_file() and p.suffix in MEDIA_TYPES)


def asset(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=MEDIA_TYPES[Path(name).suffix],
                        headers=HEADERS)


@router.get("")
def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308, headers=HEADERS)


@router.get("/")
def index() -> FileResponse:
    return asset("index.html")


@router.get("/{name}")
def static_asset(name: str) -> FileResponse:
    # A fixed list of names, not a path under a folder: nothing to traverse.
    if name not in asset_names():
        raise NotFound(f"No such page asset: {name}")
    return asset(name)
