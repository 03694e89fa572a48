"""The FastAPI app: the page's files, ``/api/predict``, ``/api/model``, ``/healthz``.

    app = create_app("model/", token=None)      # the bundle is loaded here, once, never per request
    uvicorn.run(app, host="127.0.0.1", port=8000)

``POST /api/predict`` (multipart, one or more files in the field ``files``; ``?cam=false`` skips the
explanation maps) answers ``{"results": [...]}``, one entry per file in order: ``filename``, ``status``
("ok"/"error"), ``code`` (200, or the file's 413/415/422), ``message``, ``pred``, ``probs``,
``spread`` and ``scores`` (class -> value), ``sets`` (the conformal prediction sets at 90 % and 95 %
coverage, ``{"set_90": "lipoma or cyst", ...}``, when the bundle has them), ``width``/``height`` of
the decoded scan, ``image`` (the scan as a PNG data URL, at most 512 px a side) and with maps
``overlay`` (the explanation map in "jet" colours as a PNG data URL, the same size), ``overlay_alpha``
and ``overlay_uniform`` (the map has no contrast: nothing stands out). The HTTP status is 200 when at
least one file was predicted, else the first failure's code (with its message as ``detail``).

Why the map comes as its own picture rather than blended into the scan: the page blends the two on a
canvas (``alpha * map + (1 - alpha) * scan``, :func:`overlay_image`'s own formula; the map is
:func:`overlay_image` at ``alpha=1``), so the opacity slider answers instantly, with no new request
and no second Grad-CAM.
"""

from __future__ import annotations

import base64
import copy
import io
import re
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from skintumor.data.pixels import MAX_PIXELS
from skintumor.data.scan_area import crop_scan_area
from skintumor.deploy.bundle import load_bundle
from skintumor.deploy.predict import Input, Prediction, Predictor
from skintumor.deploy.serve.guard import SharedExclusive
from skintumor.deploy.serve.security import ApiGuard, SecurityHeaders
from skintumor.deploy.serve.uploads import Rejected, check_size, decode_upload
from skintumor.explain.overlay import overlay_image

STATIC = Path(__file__).parent / "static"
DISPLAY_MAX = 512  # px: the longest side of the scan the page shows
OVERLAY_ALPHA = 0.45  # the page's starting opacity, overlay_image's default
# an absolute path inside a string (POSIX, or a Windows drive), e.g. a sweep folder or an override's value
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\])(?:/|[A-Za-z]:[\\/])[^\s,;'\"]+")


def create_app(
    bundle_path: str | Path,
    token: str | None = None,
    max_upload_mb: float = 25,
    max_pixels: int = MAX_PIXELS,
    max_files: int = 16,
) -> FastAPI:
    """The app for the bundle at ``bundle_path`` (loaded and checked now: a bad bundle raises DataError).

    ``token``: required as ``Authorization: Bearer <token>`` on every ``/api/*`` call (None: none).
    Limits: ``max_upload_mb`` per file, ``max_pixels`` (width x height, from the file's header) per
    image, ``max_files`` per request.
    """
    service = Service(Predictor(load_bundle(bundle_path)), int(max_upload_mb * 2**20), max_pixels, max_files)
    app = FastAPI(title="skintumor", docs_url=None, redoc_url=None, openapi_url=None)  # their pages load CDNs
    app.state.service = service
    app.add_middleware(ApiGuard, token=token, max_body=max_files * service.max_bytes + 2**20)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/model")
    def model() -> dict:
        return service.meta

    @app.post("/api/predict")
    async def predict(request: Request, cam: bool = True) -> JSONResponse:
        uploads: list[tuple[str, bytes | Rejected]] = []
        async with request.form(max_files=max_files, max_fields=16) as form:
            for i, item in enumerate(form.getlist("files"), start=1):
                if isinstance(item, str):
                    uploads.append((f"field {i}", Rejected(422, f"field {i}: text, not a file")))
                    continue
                name = item.filename or f"file {i}"
                try:
                    check_size(name, item.size or 0, service.max_bytes)  # before it is read into memory
                    uploads.append((name, await item.read()))
                except Rejected as rejected:
                    uploads.append((name, rejected))
        status, body = await run_in_threadpool(service.predict, uploads, cam)
        return JSONResponse(body, status)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    return app


class Service:
    """The loaded model and what every request shares: the limits, and the lock that keeps
    explanation maps apart (:mod:`skintumor.deploy.serve.guard`)."""

    def __init__(self, predictor: Predictor, max_bytes: int, max_pixels: int, max_files: int):
        self.predictor, self.max_bytes, self.max_pixels = predictor, max_bytes, max_pixels
        self.guard = SharedExclusive()
        self.meta = public_meta(predictor.bundle.meta) | {
            "serve": {"max_upload_mb": max_bytes / 2**20, "max_pixels": max_pixels, "max_files": max_files}
        }

    def predict(self, uploads: list[tuple[str, bytes | Rejected]], cam: bool) -> tuple[int, dict]:
        """Decode every upload, predict the readable ones in one batch -> (HTTP status, JSON body)."""
        if not uploads:
            message = "no files: send one or more scans in the multipart field 'files'"
            return 422, {"detail": message, "results": []}
        rows: list[dict | None] = [None] * len(uploads)
        images, where = [], []
        with tempfile.TemporaryDirectory(prefix="skintumor-serve-") as folder:
            for i, (name, data) in enumerate(uploads):
                try:
                    if isinstance(data, Rejected):
                        raise data
                    images.append(decode_upload(name, data, Path(folder), i, self.max_bytes, self.max_pixels))
                    where.append(i)
                except Rejected as rejected:
                    rows[i] = error_row(name, rejected.code, rejected.message)
        if images:
            with self.guard.hold(exclusive=cam):
                predictions = self.predictor.predict_images(images, cam, [Input(Path(f"upload_{i}")) for i in where])
            for i, image, prediction in zip(where, images, predictions):
                rows[i] = self.row(uploads[i][0], image, prediction)
        ok = [row for row in rows if row["status"] == "ok"]
        if ok:
            return 200, {"results": rows}
        return rows[0]["code"], {"detail": rows[0]["message"], "results": rows}

    def row(self, name: str, image: np.ndarray, prediction: Prediction) -> dict:
        """One predicted file as JSON (see the module docstring)."""
        if prediction.status != "ok":
            return error_row(name, 422, prediction.message.replace(str(prediction.input.path), name))
        classes = self.predictor.classes
        shown = crop_scan_area(image)[0] if self.predictor.crop else image  # the part the network saw
        scale = min(1.0, DISPLAY_MAX / max(shown.shape))
        if scale < 1:
            size = (max(1, round(shown.shape[1] * scale)), max(1, round(shown.shape[0] * scale)))
            shown = np.asarray(Image.fromarray(shown).resize(size, Image.LANCZOS))
        row = {
            "filename": name,
            "status": "ok",
            "code": 200,
            "message": "",
            "pred": prediction.pred,
            **{key: dict(zip(classes, map(float, getattr(prediction, key)))) for key in ("probs", "spread", "scores")},
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "image": png_data_url(Image.fromarray(shown)),
        }
        if prediction.sets:
            row["sets"] = prediction.sets  # conformal sets: {"set_90": "lipoma or cyst", "set_95": ...}
        if prediction.cam is not None:
            row["overlay"] = png_data_url(overlay_image(shown, prediction.cam, alpha=1.0))
            row["overlay_alpha"] = OVERLAY_ALPHA
            row["overlay_uniform"] = bool(np.ptp(prediction.cam) < 1e-6)  # e.g. a 1 x 1 last feature map
        return row


def error_row(name: str, code: int, message: str) -> dict:
    return {"filename": name, "status": "error", "code": code, "message": message, "pred": None}


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def public_meta(meta: dict) -> dict:
    """``model.json`` as the page may see it: without ``source``, every absolute path in it (a sweep's
    folder, an override's value) cut to ``…/<its last part>``, and undefined (NaN) numbers as null."""
    meta = copy.deepcopy(meta)
    meta.pop("source", None)
    return _scrub(meta)


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN (an undefined metric)
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(lambda m: "…/" + re.split(r"[\\/]", m.group().rstrip("/\\"))[-1], value)
    return value
