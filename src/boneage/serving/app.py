"""The FastAPI application: GET /health, POST /predict, the web page at /, the OpenAPI schema at /openapi.json.

Bad input is a 4xx with a one-line `detail`; anything unexpected is a 500 for that request only: the server goes on.
Uploads are held in memory (or Starlette's spool in the system temp dir) and never written anywhere else; a body over
the limit is refused at the byte that crosses it, with or without a Content-Length. Decoding is admitted by decoded
size (`Admission`), so concurrent large films cannot take the server's memory (benchmarks/large_images.py,
benchmarks/hostile.py). Before any of that, `boneage.serving.guards` refuses another Host, a cross-origin POST, a
client with too many requests in progress and a trickling body. No /docs page: it loads its scripts from a CDN, which
a hospital network does not reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import logging
import os
import threading
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from boneage import __version__
from boneage.dicom import is_dicom
from boneage.errors import UserError, shown
from boneage.serving.answer import Answerer, Inputs
from boneage.serving.guards import CLOSE, PerClient, SameOriginPosts, SlowBody, refuse_mid_body

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("boneage.serve")


class TooLarge(Exception):
    pass




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
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge(413, self.detail, CLOSE)  # FastAPI passes an HTTPException from parsing through
            return message

        await refuse_mid_body(self.app, scope, receive, send, counted, _BodyTooLarge, 413, self.detail)


class PixelBudget:
    """At most `limit` decoded pixels at a time, first come first served; a single larger image runs alone.

    Decoding, checking and preparing a film takes about 8 bytes per pixel of float copies, for a second or more on a
    9,000 x 9,000 one: without a bound, concurrent uploads of small files that decode large multiply that by the
    thread pool (40). Blocking, in the worker thread: the bound does not depend on the event loop."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._line: deque[object] = deque()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        me = object()
        with self._cond:
            self._line.append(me)
            self._cond.wait_for(lambda: self._line[0] is me and (self.used == 0 or self.used + pixels <= self.limit))
            self._line.popleft()
            self.used += pixels
            self._cond.notify_all()  # the next in line may fit beside this one
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


def decoded_pixels(data: bytes) -> int:
    """Pixels the upload will decode to, from its header alone (0 when unreadable: decoding will refuse it)."""
    try:
        if is_dicom(data[:132]):
            from boneage.dicom import dcmread

            ds = dcmread(data, "upload", stop_before_pixels=True, force=True)
            return int(ds.Rows) * int(ds.Columns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except Exception:  # anything unreadable here is refused, cheaply, by the decoder with its own message
        return 0


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim). Each worker thread gets its own malloc arena,
    and an arena keeps what a large film's decoding freed (Pillow's image blocks): without this, every thread that
    once decoded a large film holds its size for good, and the admission bound multiplies by the thread count."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class Admission:
    """Two lanes. Normal films (up to 1/10 of the budget in pixels, about 3,100 x 3,100 at the default) share a quarter
    of it and never queue behind heavy work; heavy work (a larger film, or any heatmap: a backward pass and a
    full-size overlay) goes one at a time, in order of arrival, so a burst of it holds one film's memory, not many."""

    def __init__(self, megapixels: float):
        total = int(megapixels * 1e6)
        self.small_max = total // 10
        self.small, self.large = PixelBudget(total // 4), PixelBudget(0)  # 0: each alone
        self._lock, self._in_work = threading.Lock(), 0

    def heavy(self, pixels: int, heatmap: bool = False) -> bool:
        return heatmap or pixels > self.small_max

    @contextlib.contextmanager
    def hold(self, pixels: int, heatmap: bool = False):
        heavy = self.heavy(pixels, heatmap)
        with self._lock:
            self._in_work += 1
        try:
            with (self.large if heavy else self.small).hold(pixels):
                yield
        finally:
            with self._lock:
                self._in_work -= 1
                idle = self._in_work == 0
            if heavy or idle:  # after a large film, and when a burst is over: its memory goes back to the system
                _release_freed_memory()


def invalid_form(errors) -> str:
    """FastAPI's list of validation errors as one line: each field, what is wrong, the value cut short."""
    parts = []
    for e in errors[:5]:
        field = next((str(x) for x in reversed(e.get("loc", ())) if isinstance(x, str)), "request")
        got = f" (got {shown(e['input'])})" if e.get("input") not in (None, {}, []) else ""
        parts.append(f"{field}: {e.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(answerer: Answerer, max_upload_mb: float = 64.0, max_decoding_mpx: float = 100.0,
               allowed_hosts: list[str] | None = None, per_client: int = 4) -> FastAPI:
    """max_decoding_mpx: decoded megapixels in work at once (see `Admission`); ~8 bytes each at the peak.
    allowed_hosts: the Host header names answered (`guards.allowed_hosts`; `boneage serve` always gives them), None
    for any. per_client: POSTs in progress at once per client address."""
    limit = int(max_upload_mb * 1024 * 1024)
    admission = Admission(max_decoding_mpx)

    def admitted_answer(data: bytes, name: str, inputs: Inputs, pixels: int) -> dict:
        with admission.hold(pixels, inputs.heatmap):
            return answerer.answer(data, name, inputs)

    # Each lane's work runs on its own few threads, never on the framework's pool of 40: memory that a thread keeps
    # once it has prepared a large film (per-thread buffers that malloc_trim cannot return) then stays bounded by
    # these threads, where 16 clients at once would otherwise leave it on 16 threads (benchmarks/hostile.py).
    lanes = {True: ThreadPoolExecutor(1, thread_name_prefix="boneage-heavy"),
             False: ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="boneage-normal")}

    app = FastAPI(title="boneage", version=__version__, docs_url=None, redoc_url=None,
                  description="Bone age from a hand radiograph (PNG, JPEG, TIFF or DICOM), with the bone-age SDS "
                              "against the Greulich & Pyle (Brush Foundation) reference. Research use only.")

    # room for the form's other fields and the multipart boundaries
    app.add_middleware(LimitBody, limit=limit + 64 * 1024, detail=f"upload too large (limit {max_upload_mb:g} MB)")
    app.add_middleware(SlowBody)  # the last added runs first: the Host, then the Origin, then the client's count
    app.add_middleware(PerClient, limit=per_client)
    app.add_middleware(SameOriginPosts)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": str(UserError(invalid_form(exc.errors())))}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        p = answerer.predictor
        return {"status": "ok", "version": __version__, "arch": p.spec.model.arch,
                "image_size": p.preprocess.image_size, "runtime": p.runtime}

    @app.post("/predict")
    async def predict(
        request: Request,
        file: UploadFile = File(..., description="the radiograph: PNG, JPEG, TIFF, WebP or DICOM"),
        sex: str | None = Form(None, description="M or F; optional for a DICOM whose header has it"),
        chronological_age_months: float | None = Form(None, description="months, 0 to 300"),
        birth_date: str | None = Form(None, description="YYYY-MM-DD, with study_date, instead of the age"),
        study_date: str | None = Form(None, description="YYYY-MM-DD"),
        heatmap: bool = Form(False, description="add a Grad-CAM overlay (PNG, base64 data URL)"),
        preview: bool = Form(False, description="add the radiograph as a PNG data URL, for display"),
        chart: bool = Form(False, description="add the Greulich & Pyle chart with this film (needs an age), PNG"),
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
                        preview, chart)
        pixels = await run_in_threadpool(decoded_pixels, data)
        lane = lanes[admission.heavy(pixels, heatmap)]
        return await asyncio.wrap_future(lane.submit(admitted_answer, data, file.filename or "upload", inputs, pixels))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    return app


def build(model=None, runtime: str = "auto", max_upload_mb: float = 64.0, tta: str = "flip",
          allowed_hosts: list[str] | None = None, per_client: int = 4) -> FastAPI:
    """model: a path, a list of paths (an ensemble) or None (the shipped model)."""
    from boneage.inference.loading import load_predictor

    predictor = load_predictor(model, runtime, tta=tta)
    return create_app(Answerer(predictor), max_upload_mb, allowed_hosts=allowed_hosts, per_client=per_client)
