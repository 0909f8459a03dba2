"""The review web application (Starlette, served by uvicorn) over one run's output folder.

Access: every request needs the server's random token. The printed URL carries it as
``?token=...``; the first page load with it sets an HttpOnly, SameSite=Strict cookie (named after
a hash of the token, so two servers on one machine do not clash) and redirects to the bare URL.
Scripts may send the header ``X-Defectscope-Token`` instead. Anything else gets 403.

Files: only the run's own pictures are served, by row number (``/api/image/<n>`` the input image
re-encoded as PNG, ``/api/map/<n>`` the overlay, ``/api/mask/<n>`` the proposed mask), each checked
again at request time to lie inside ``maps/`` or ``masks/`` after links are resolved; the page's
own files come from a fixed list. No request ever names a file path.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import secrets
import socket
import threading
import webbrowser
from typing import Any, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from defectscope.data.io import read_image
from defectscope.errors import DefectscopeError, ReviewError
from defectscope.report.overlay import encode_image, make_thumbnail
from defectscope.review.decisions import DecisionStore
from defectscope.review.folder import Part, ReviewRun, inside
from defectscope.review.summary import review_summary

TOKEN_HEADER = "x-defectscope-token"
IMAGE_MAX_SIDE = 1024
_STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_PICTURE_CACHE = {"cache-control": "private, max-age=3600"}


def cookie_name(token: str) -> str:
    """The cookie that carries ``token`` (unique per server)."""
    return "defectscope_" + hashlib.sha256(token.encode()).hexdigest()[:12]


class TokenGate:
    """ASGI middleware: 403 without the token; the first ``/?token=`` load becomes a cookie."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token, self.cookie = app, token.encode(), cookie_name(token)

    def _allowed(self, offered: str | None) -> bool:
        return offered is not None and secrets.compare_digest(offered.encode("utf-8", "replace"), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_SECURITY_HEADERS]
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        request = Request(scope)
        query_token = request.query_params.get("token")
        offered = request.headers.get(TOKEN_HEADER) or request.cookies.get(self.cookie) or query_token
        if not self._allowed(offered):
            response: Response = PlainTextResponse("forbidden: open the URL (with its token) that `defectscope review` printed", status_code=403)
        elif query_token is not None and scope["path"] == "/" and scope["method"] == "GET":
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(self.cookie, query_token, httponly=True, samesite="strict")
        else:
            await self.app(scope, receive, send_secured)
            return
        await response(scope, receive, send_secured)


def _static_text(name: str) -> str:
    return importlib.resources.files("defectscope.review").joinpath("static", name).read_text(encoding="utf-8")


def _part_json(part: Part) -> dict[str, Any]:
    return {
        "id": part.index,
        "path": part.path,
        "score": part.score,
        "verdict_score": part.decision_score,
        "rank": part.rank,
        "verdict": part.verdict,
        "label": part.label,
        "map": part.map_file is not None,
        "mask": part.mask_file is not None,
    }


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": what}, status_code=404)


def create_app(run: ReviewRun, token: str) -> ASGIApp:
    """The review application for ``run``, behind the token gate."""
    store = DecisionStore(run)

    def state() -> JSONResponse:
        try:
            decisions = store.load()
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({
            "decisions": {path: {"decision": d.decision, "decided_at": d.decided_at} for path, d in decisions.items()},
            "summary": review_summary(run, decisions),
        })

    def part_at(request: Request) -> Part | None:
        index = request.path_params["index"]
        return run.parts[index] if 0 <= index < len(run.parts) else None

    async def index(request: Request) -> Response:
        return Response(_static_text("index.html"), media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _not_found("no such page file")
        return Response(_static_text(name), media_type=_STATIC[name])

    async def run_info(request: Request) -> JSONResponse:
        return JSONResponse({
            "title": run.title,
            "threshold": run.threshold,
            "threshold_rule": run.threshold_rule,
            "review_threshold": run.review_threshold,
            "verdict_counts": run.verdict_counts() if run.has_verdicts else None,
            "skipped": [{"path": p, "reason": r} for p, r in run.skipped],
            "parts": [_part_json(part) for part in run.parts],
        })

    def get_state(request: Request) -> JSONResponse:
        return state()

    async def decide(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            return JSONResponse({"error": "send {\"path\": ..., \"decision\": ...}"}, status_code=400)
        try:
            await run_in_threadpool(store.decide, body["path"], body.get("decision"))
        except KeyError:
            return _not_found(f"'{body['path']}' is not a scored part of this run")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return await run_in_threadpool(state)

    def picture(folder_name: str, attribute: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            part = part_at(request)
            stored = None if part is None else getattr(part, attribute)
            checked = None if stored is None else inside(run.folder / folder_name, stored)
            if checked is None:
                return _not_found(f"no {folder_name[:-1]} for this part")
            media = "image/jpeg" if checked.suffix.lower() in (".jpg", ".jpeg") else "image/png"
            return FileResponse(checked, media_type=media, headers=_PICTURE_CACHE)

        return endpoint

    def image(request: Request) -> Response:
        part = part_at(request)
        if part is None:
            return _not_found("no such part")
        try:
            pixels = read_image(part.path)
        except DefectscopeError as exc:
            return _not_found(str(exc))
        height, width = pixels.shape[:2]
        if max(height, width) > IMAGE_MAX_SIDE:
            pixels = make_thumbnail(pixels, width=max(1, round(width * IMAGE_MAX_SIDE / max(height, width))))
        return Response(encode_image(np.ascontiguousarray(pixels), "PNG"), media_type="image/png", headers=_PICTURE_CACHE)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/run", run_info),
        Route("/api/state", get_state),
        Route("/api/decision", decide, methods=["POST"]),
        Route("/api/image/{index:int}", image),
        Route("/api/map/{index:int}", picture("maps", "map_file")),
        Route("/api/mask/{index:int}", picture("masks", "mask_file")),
    ]
    return TokenGate(Starlette(routes=routes), token)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 = a free port); ReviewError when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ReviewError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host or --port") from exc
    return sock


def serve(run: ReviewRun, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True, announce: Callable[[str], None] = print) -> None:
    """Serve the review of ``run`` until interrupted; ``announce`` receives the URL to open."""
    import uvicorn

    DecisionStore(run).load()
    token = secrets.token_urlsafe(24)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/?token={token}"
    server = uvicorn.Server(uvicorn.Config(create_app(run, token), log_level="warning", access_log=False))
    announce(url)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
