"""The HTTP service (Starlette, served by uvicorn) over one :class:`~defectscope.serve.inspector.Inspector`.

Endpoints (all JSON; errors are ``{"error": "<one sentence>"}``):

* ``POST /v1/inspect``: the image file as the body (``Content-Type: image/png`` etc. or
  ``application/octet-stream``; ``?name=`` or an ``X-Filename`` header names it) or as a
  multipart field ``image``. Answers the score, the verdict, the threshold and its rule, the
  defect regions; ``?maps=true`` adds the anomaly map (16-bit PNG) and the mask (PNG), base64.
* ``GET /v1/health`` (no token needed), ``GET /v1/model``, ``GET /v1/openapi.json`` (no token).

Order of checks for an inspection: token (401), content type (415), a place in the bounded
queue (503 with ``Retry-After``), the body size from ``Content-Length`` and then while the body
streams in (413, before the whole body is read), the image (400 empty / not an image / damaged /
truncated, 413 over the pixel cap). Only then is the image decoded and queued.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from defectscope import __version__
from defectscope.errors import DefectscopeError
from defectscope.report.atomic import json_text
from defectscope.serve.batching import Batcher, QueueFull
from defectscope.serve.decode import MULTIPART, BadRequest, Upload, check_content_type, decode_image, media_type, multipart_image
from defectscope.serve.inspector import Decision, Inspector, Pending, utc_now

OPEN_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})


@dataclass(frozen=True)
class Limits:
    """The service's caps and batching."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    queue_size: int = 32
    max_batch: int = 8
    batch_window: float = 0.01

    def __post_init__(self) -> None:
        from defectscope.errors import ConfigError

        for name in ("max_bytes", "max_pixels", "queue_size", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.batch_window <= 10:
            raise ConfigError(f"--batch-window must lie in [0, 10000] milliseconds, got {self.batch_window * 1000:g}")


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; a non-finite number anywhere (a model's inf ratio, an undefined score) is
    sent as null, as in the output files (:func:`defectscope.report.atomic.json_text`)."""
    body = json_text(payload).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


class BearerGate:
    """ASGI middleware: every path but the open ones needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        offered = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                offered = value
        scheme, _, credential = offered.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(credential.strip(), self.token):
            await self.app(scope, receive, send)
            return
        message = "a valid token is required: send the header 'Authorization: Bearer TOKEN' with the token `defectscope serve` printed"
        await _error(401, message, {"WWW-Authenticate": 'Bearer realm="defectscope"'})(scope, receive, send)


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused (413) from its declared length or as soon as more than ``cap`` bytes
    arrived, so an oversized upload is never read whole."""
    declared = request.headers.get("content-length")
    too_large = f"the request body is over the cap of {cap} bytes ({cap / 2**20:.0f} MiB); send a smaller image"
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(400, f"the Content-Length header {declared!r} is not a number of bytes")
        if int(declared) > cap:
            raise BadRequest(413, too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise BadRequest(413, too_large)
    return bytes(body)


def _png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render(decision: Decision, inspector: Inspector, maps: bool) -> dict[str, Any]:
    """The JSON answer for one decision."""
    answer: dict[str, Any] = {
        "id": decision.id,
        "name": decision.name or None,
        "score": decision.score,
        "verdict": decision.verdict,
        "verdict_score": decision.verdict_score,
        "threshold": inspector.threshold,
        "threshold_rule": inspector.threshold_rule,
        "threshold_applies_to": inspector.threshold_applies_to,
        "regions": decision.regions,
        "regions_total": decision.regions_total,
        "image_size": {"height": decision.image_shape[0], "width": decision.image_shape[1]},
        "map_size": {"height": int(decision.anomaly_map.shape[0]), "width": int(decision.anomaly_map.shape[1])},
        "method": inspector.description.get("method"),
        "seconds": round(decision.seconds, 4),
    }
    if maps:
        values = decision.anomaly_map.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros(values.shape, dtype=np.uint16) if high <= low else np.round((values - low) / (high - low) * 65535).astype(np.uint16)
        answer["maps"] = {
            "anomaly_map_png": _png(scaled),
            "anomaly_map_range": [low, high],
            "mask_png": None if decision.mask is None else _png(decision.mask.astype(np.uint8) * 255),
            "note": "16-bit grey PNG at the map size: value = low + pixel / 65535 * (high - low); mask: 255 = defect",
        }
    return answer


def openapi(limits: Limits, auth: bool) -> dict[str, Any]:
    """A hand-written OpenAPI 3.1 description of the service."""
    error = {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    security = [{"bearer": []}] if auth else []
    region = {
        "type": "object",
        "properties": {
            "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                    "description": "x0, y0, x1, y1 in pixels of the image as sent (x1, y1 exclusive)"},
            "area": {"type": "integer", "description": "pixels of the image as sent"},
            "area_fraction": {"type": "number"},
            "peak": {"type": "number", "description": "highest anomaly-map value in the region"},
        },
    }
    inspection = {
        "type": "object",
        "required": ["id", "score", "verdict", "threshold", "threshold_rule", "regions"],
        "properties": {
            "id": {"type": "string", "description": "the journal row's id"},
            "name": {"type": ["string", "null"]},
            "score": {"type": "number", "description": "higher = more anomalous; equal to `defectscope predict` / `score --good`"},
            "verdict": {"type": ["string", "null"], "enum": ["anomalous", "review", "normal", None]},
            "verdict_score": {"type": ["number", "null"], "description": "the statistic the threshold applies to; null for U-Flow's a contrario test"},
            "threshold": {"type": ["number", "null"]},
            "threshold_rule": {"type": ["string", "null"]},
            "threshold_applies_to": {"type": ["string", "null"], "enum": ["verdict_score", "nfa", None]},
            "regions": {"type": "array", "items": {"$ref": "#/components/schemas/Region"}, "description": "at most 100, highest peak first"},
            "regions_total": {"type": "integer"},
            "image_size": {"type": "object"},
            "map_size": {"type": "object"},
            "seconds": {"type": "number", "description": "from the request's arrival to its journal row on disk"},
            "maps": {"type": "object", "description": "only with ?maps=true"},
        },
    }
    image_body = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "defectscope inspection service", "version": __version__,
                 "description": "Anomaly score, verdict and defect regions of one image per request; every decision is journalled."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}, "Region": region, "Inspection": inspection},
        },
        "paths": {
            "/v1/inspect": {"post": {
                "summary": "Inspect one image",
                "security": security,
                "parameters": [
                    {"name": "maps", "in": "query", "schema": {"type": "boolean", "default": False}, "description": "add the anomaly map and mask as base64 PNG"},
                    {"name": "name", "in": "query", "schema": {"type": "string"}, "description": "a name for the image, kept in the journal (or header X-Filename)"},
                ],
                "requestBody": {"required": True, "content": {
                    "image/png": image_body, "image/jpeg": image_body, "image/bmp": image_body, "image/tiff": image_body,
                    "application/octet-stream": image_body,
                    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}},
                }},
                "responses": {
                    "200": {"description": "the decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Inspection"}}}},
                    "400": error, "401": error, "413": {**error, "description": f"body over {limits.max_bytes} bytes or image over {limits.max_pixels} pixels"},
                    "415": error, "500": error,
                    "503": {**error, "description": f"the queue ({limits.queue_size} requests) is full; retry after the Retry-After seconds"},
                },
            }},
            "/v1/health": {"get": {"summary": "Liveness and queue depth (no token needed)", "responses": {"200": {"description": "ok"}}}},
            "/v1/model": {"get": {"summary": "The loaded model: method, settings, threshold, version, limits", "security": security,
                                   "responses": {"200": {"description": "the model"}, "401": error}}},
            "/v1/openapi.json": {"get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }


class Service:
    """The batcher and counters around an inspector; :meth:`app` is the ASGI application."""

    def __init__(self, inspector: Inspector, limits: Limits = Limits(), token: str | None = None, *, device: str = "cpu") -> None:
        self.inspector, self.limits, self.token, self.device = inspector, limits, token, device
        self.batcher: Batcher | None = None
        self.started = time.time()
        self.refused = 0
        self._batch_seconds = 0.0
        self._ids = inspector.journal.next_id

    def _run_batch(self, batch: list[Pending]) -> list[Decision]:
        started = time.perf_counter()
        decisions = self.inspector.run(batch)
        elapsed = time.perf_counter() - started
        self._batch_seconds = elapsed if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * elapsed
        return decisions

    def start(self) -> None:
        if self.batcher is None:
            lim = self.limits
            self.batcher = Batcher(self._run_batch, max_batch=lim.max_batch, window=lim.batch_window, capacity=lim.queue_size)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its batches times the recent batch time."""
        batches = math.ceil(self.limits.queue_size / self.limits.max_batch) + 1
        return max(1, math.ceil(batches * (self._batch_seconds or 1.0)))

    def model_info(self) -> dict[str, Any]:
        inspector = self.inspector
        return {
            "version": __version__,
            **inspector.description,
            "threshold": inspector.threshold,
            "threshold_rule": inspector.threshold_rule,
            "threshold_applies_to": inspector.threshold_applies_to,
            "settings": inspector.settings.get("settings"),
            "device": self.device or inspector.description.get("device"),
            "journal": str(inspector.journal.path),
            "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels, "queue_size": self.limits.queue_size,
                       "max_batch": self.limits.max_batch, "batch_window_ms": self.limits.batch_window * 1000},
        }

    async def inspect(self, request: Request) -> Response:
        received, received_at = time.monotonic(), utc_now()
        content_type = request.headers.get("content-type")
        batcher = self.batcher
        assert batcher is not None
        try:
            check_content_type(content_type)
        except BadRequest as refusal:
            self.refused += 1
            return _error(refusal.status, refusal.message)
        try:
            batcher.reserve()
        except QueueFull:
            self.refused += 1
            seconds = self.retry_after()
            return _error(503, f"the inspection queue is full ({self.limits.queue_size} requests); retry in {seconds} s", {"Retry-After": str(seconds)})
        submitted = False
        try:
            body = await read_body(request, self.limits.max_bytes)
            if media_type(content_type) == MULTIPART:
                upload = multipart_image(body, content_type or "")
            else:
                upload = Upload(body, request.query_params.get("name") or request.headers.get("x-filename") or "")
            image = await run_in_threadpool(decode_image, upload.data, upload.name, max_pixels=self.limits.max_pixels)
            item = Pending(id=f"{self._ids:08d}", name=upload.name, image=image, received=received, received_at=received_at,
                           data=upload.data if self.inspector.keep_images else None)
            self._ids += 1
            future = batcher.submit(item)
            submitted = True
        except BadRequest as refusal:
            self.refused += 1
            return _error(refusal.status, refusal.message, refusal.headers)
        finally:
            if not submitted:
                batcher.release()
        try:
            decision = await asyncio.wrap_future(future)
        except DefectscopeError as exc:
            return _error(500, f"the image could not be inspected: {exc}")
        maps = request.query_params.get("maps", "").lower() in ("1", "true", "yes")
        answer = await run_in_threadpool(render, decision, self.inspector, maps)
        return _json(answer, headers={"X-Inspection-Id": decision.id})

    async def health(self, request: Request) -> Response:
        batcher = self.batcher
        return _json({
            "status": "ok",
            "waiting": 0 if batcher is None else batcher.waiting,
            "queue_size": self.limits.queue_size,
            "processed": 0 if batcher is None else batcher.processed,
            "uptime_seconds": round(time.time() - self.started, 1),
        })

    async def model(self, request: Request) -> Response:
        return _json(self.model_info())

    async def describe(self, request: Request) -> Response:
        return _json(openapi(self.limits, self.token is not None))

    def app(self) -> ASGIApp:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(app):
            self.start()
            try:
                yield
            finally:
                await run_in_threadpool(self.stop)

        routes = [
            Route("/v1/inspect", self.inspect, methods=["POST"]),
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/model", self.model, methods=["GET"]),
            Route("/v1/openapi.json", self.describe, methods=["GET"]),
        ]
        return BearerGate(Starlette(routes=routes, lifespan=lifespan), self.token)


def run_server(service: Service, *, host: str = "127.0.0.1", port: int = 8000, announce=print) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn finishes the requests in flight, then the batches)."""
    import uvicorn

    from defectscope.review.server import bind

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{sock.getsockname()[1]}")
    config = uvicorn.Config(service.app(), log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
