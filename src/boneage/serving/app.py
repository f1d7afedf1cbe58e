"""The FastAPI application: GET /health, POST /predict, the web page at /, OpenAPI at /docs.

Bad input is a 4xx with a one-line `detail`; anything unexpected is a 500 for that request only: the server goes on.
Uploads are held in memory (or Starlette's spool in the system temp dir) and never written anywhere else; a body over
the limit is refused at the byte that crosses it, with or without a Content-Length.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from boneage import __version__
from boneage.errors import UserError
from boneage.serving.report import Inputs, Reporter

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("boneage.serve")


class TooLarge(Exception):
    pass


CLOSE = {"Connection": "close"}  # the server drops the connection: the rest of a refused body is never received


class _BodyTooLarge(HTTPException):
    pass


class LimitBody:
    """ASGI middleware: a request body larger than `limit` bytes is a 413, judged on the bytes actually received.

    A Content-Length over the limit is answered before any byte is read. Without one (a chunked upload), the form
    parser is stopped at the byte that crosses the limit: it spools file parts to the temp dir as they arrive, so a
    check after parsing would come after the whole body was on disk."""

    def __init__(self, app, limit: int, detail: str):
        self.app, self.limit, self.detail = app, limit, detail

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": self.detail}, 413, CLOSE)(scope, receive, send)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge(413, self.detail, CLOSE)  # FastAPI passes an HTTPException from parsing through
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if started:
                raise
            await JSONResponse({"detail": self.detail}, 413, CLOSE)(scope, receive, send)


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(reporter: Reporter, max_upload_mb: float = 64.0) -> FastAPI:
    limit = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="boneage", version=__version__,
                  description="Bone age from a hand radiograph (PNG, JPEG, TIFF or DICOM), with the bone-age SDS "
                              "against the Greulich & Pyle (Brush Foundation) reference. Research use only.")

    # room for the form's other fields and the multipart boundaries
    app.add_middleware(LimitBody, limit=limit + 64 * 1024, detail=f"upload too large (limit {max_upload_mb:g} MB)")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        p = reporter.predictor
        return {"status": "ok", "version": __version__, "arch": p.cfg.model.arch,
                "image_size": p.preprocess.image_size, "runtime": "torch" if hasattr(p, "model") else "onnx"}

    @app.post("/predict")
    async def predict(
        request: Request,
        file: UploadFile = File(..., description="the radiograph: PNG, JPEG, TIFF, WebP or DICOM"),
        sex: str | None = Form(None, description="M or F; optional for a DICOM whose header has it"),
        chronological_age_months: float | None = Form(None, ge=0, le=300),
        birth_date: str | None = Form(None, description="YYYY-MM-DD, with study_date, instead of the age"),
        study_date: str | None = Form(None, description="YYYY-MM-DD"),
        heatmap: bool = Form(False, description="add a Grad-CAM overlay (PNG, base64 data URL)"),
        preview: bool = Form(False, description="add the radiograph as a PNG data URL, for display"),
    ) -> dict:
        counts = Counter(key for key, _ in (await request.form()).multi_items())  # parsed once, cached by Starlette
        repeated = [f"{key} ({n} times)" for key, n in counts.items() if n > 1]
        if repeated:  # FastAPI would take the last silently: an answer about one of several films, unsaid which
            raise UserError(f"a field given more than once: {', '.join(repeated)}; send one radiograph per request")
        try:
            data = await _read_limited(file, limit)
        except TooLarge:
            return JSONResponse({"detail": f"{file.filename}: upload too large (limit {max_upload_mb:g} MB)"},
                                status_code=413)
        if not data:
            raise UserError(f"{file.filename or 'file'}: empty upload")
        inputs = Inputs(sex or None, chronological_age_months, birth_date or None, study_date or None, heatmap,
                        preview)
        return await run_in_threadpool(reporter.report, data, file.filename or "upload", inputs)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    return app


def build(model: str | None = None, runtime: str = "torch", max_upload_mb: float = 64.0) -> FastAPI:
    from boneage.inference.onnx import load_predictor
    from boneage.inference.predictor import Predictor

    predictor = load_predictor(model, runtime)
    return create_app(Reporter(predictor, lambda: Predictor.load(model)), max_upload_mb)
