"""The FastAPI app: OpenAI's `POST /v1/audio/speech`, saved voices, models, health, and errors in OpenAI's shape.

One engine, built once, serves every request through a `SynthesisPool` (bounded threads, bounded waiting line).
A request is parsed once here (pydantic, `schemas.py`) into a `SynthesisRequest`; the engine checks the rest and
its InputError becomes a 400 with the engine's own message. Nothing a client sends can produce a traceback.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..audio import MAX_UPLOAD_BYTES
from ..errors import CosyVoiceError, InputError, RequestTimeout, one_line
from ..request import DEFAULT_MAX_SECONDS, MAX_TRANSCRIPT_CHARS, SynthesisRequest
from ..voices import VoiceStore, validate_name
from .audio_formats import (MEDIA_TYPES, STREAM_FORMATS, available_formats, check_format, encode, pcm16,
                            streaming_wav_header)
from .pool import QueueFull, SynthesisPool
from .schemas import OPENAI_MODEL_ALIASES, SpeechRequest, error_json

log = logging.getLogger("cosyvoice_onnx.server")
MAX_JSON_BYTES = 1 << 20            # a 5000-character text is at most 20 kB of JSON
MULTIPART_SLACK = 64 << 10          # the form's other fields and boundaries


@dataclass
class ServerSettings:
    model_id: str
    voices_dir: Path
    api_key: str | None = None
    concurrency: int = 1
    max_queue: int = 16
    max_seconds: float = DEFAULT_MAX_SECONDS    # the most a request may ask for (and its default)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def _error(status: int, message: str, kind: str, code: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(error_json(message, kind, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def _body_limit(path: str) -> int:
    return MAX_UPLOAD_BYTES + MULTIPART_SLACK if path.rstrip("/").endswith("/v1/voices") else MAX_JSON_BYTES


def create_app(engine, settings: ServerSettings, pool: SynthesisPool | None = None) -> FastAPI:
    """The API over a loaded `CosyVoice` engine; the studio can be mounted on it afterwards (`/studio`).
    `pool`: where requests run (default: a SynthesisPool of `settings.concurrency` threads on this engine)."""
    pool = pool or SynthesisPool(settings.concurrency, settings.max_queue)
    store: VoiceStore = engine.voice_store(settings.voices_dir)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="CosyVoice ONNX speech API", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.pool, app.state.engine, app.state.settings = pool, engine, settings

    @app.middleware("http")
    async def bound_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.url.path.startswith("/v1/") and length is not None:
            limit = _body_limit(request.url.path)
            if not length.isdigit() or int(length) > limit:
                return _error(413, f"the request body is {length} bytes; at most {limit} are accepted here",
                              "invalid_request_error", "request_too_large")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, str(exc), exc.kind, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return _error(400, _validation_message(exc), "invalid_request_error", "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", None)

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return _error(429, str(exc), "rate_limit_error", "server_busy", {"Retry-After": "1"})

    @app.exception_handler(RequestTimeout)
    async def timeout(_request, exc: RequestTimeout):
        return _error(504, str(exc), "timeout_error", "request_timeout")

    @app.exception_handler(CosyVoiceError)
    async def engine_error(_request, exc: CosyVoiceError):
        status = 400 if isinstance(exc, InputError) else 500
        return _error(status, one_line(exc, 1000), "invalid_request_error" if status == 400 else "server_error")

    @app.exception_handler(Exception)
    async def bug(_request, exc: Exception):
        log.exception("internal error")   # the traceback goes to the server's log, never to the client
        return _error(500, f"internal error ({type(exc).__name__}: {one_line(exc, 1000)})", "server_error")

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = token.strip()
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                           "invalid_request_error", "invalid_api_key")

    auth = [Depends(require_key)]

    def load_voice(name: str):
        try:
            validate_name(name)
        except InputError as exc:
            raise ApiError(400, str(exc), code="invalid_voice") from exc
        if name not in store.names():
            known = ", ".join(store.names()) or "none saved yet; POST /v1/voices saves one"
            raise ApiError(404, f"no saved voice named {name!r} (voices: {known})", code="voice_not_found")
        return store.load(name)

    def synthesis_request(body: SpeechRequest) -> SynthesisRequest:
        if body.model not in (settings.model_id, *OPENAI_MODEL_ALIASES):
            raise ApiError(404, f"unknown model {body.model!r}; this server has {settings.model_id!r} (OpenAI's "
                                f"names {', '.join(OPENAI_MODEL_ALIASES)} also select it)", code="model_not_found")
        check_format(body.response_format, body.stream)
        if body.max_seconds is not None and body.max_seconds > settings.max_seconds:
            raise ApiError(400, f"max_seconds {body.max_seconds:g} is above this server's limit of "
                                f"{settings.max_seconds:g} s")
        decode = {"max_len": body.max_len} if body.max_len is not None else {}
        return SynthesisRequest(text=body.input, voice=load_voice(body.voice), instruct=body.instructions or None,
                                seed=body.seed, speed=body.speed, duration=body.duration, stream=body.stream,
                                first_chunk_tokens=body.first_chunk_tokens, decode_options=decode,
                                max_seconds=body.max_seconds or settings.max_seconds)

    @app.post("/v1/audio/speech", dependencies=auth)
    async def speech(body: SpeechRequest):
        request = synthesis_request(body)
        fmt = body.response_format
        if request.stream:
            return await _streamed(pool, engine, request, fmt)
        def synthesize_and_encode():   # one worker call: a finished clip is never refused for its encoding
            result = engine.synthesize(request)
            return result, encode(result.audio, result.sample_rate, fmt)

        result, audio = await pool.run(synthesize_and_encode)
        return Response(audio, media_type=MEDIA_TYPES[fmt],
                        headers={"X-Seed": str(result.seed), "X-Sample-Rate": str(result.sample_rate)})

    @app.get("/v1/voices", dependencies=auth)
    async def list_voices():
        return {"object": "list", "data": [_voice_json(info) for info in store.list()]}

    @app.post("/v1/voices", dependencies=auth, status_code=201)
    async def save_voice(file: UploadFile = File(...), name: str = Form(...), transcript: str = Form(""),
                         overwrite: bool = Form(False)):
        validate_name(name)
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise ApiError(400, f"the transcript is {len(transcript)} characters; the limit is "
                                f"{MAX_TRANSCRIPT_CHARS}. Shorten it.")
        clip = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(clip) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"the clip is over {MAX_UPLOAD_BYTES >> 20} MB; a 3-10 s prompt is far smaller",
                           code="request_too_large")
        voice = await pool.run(engine.prompt_from_audio, clip, transcript)
        return _voice_json(store.save(name, voice, overwrite=overwrite))

    @app.delete("/v1/voices/{name}", dependencies=auth)
    async def delete_voice(name: str):
        load_voice(name)                  # 400 for a bad name, 404 for an unknown one
        store.delete(name)
        return {"object": "voice", "name": name, "deleted": True}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [{
            "id": settings.model_id, "object": "model", "created": 0, "owned_by": "cosyvoice-onnx",
            "aliases": list(OPENAI_MODEL_ALIASES), "plan": str(engine.plan), "sample_rate": engine.sample_rate,
            "response_formats": available_formats(), "stream_formats": list(STREAM_FORMATS)}]}

    @app.get("/healthz")
    async def health():
        return {"status": "ok", "model": settings.model_id, "requests_in_flight": pool.admitted,
                "concurrency": pool.concurrency, "max_queue": pool.max_queue}

    return app


def _voice_json(info) -> dict:
    return {"object": "voice", "name": info.name, "transcript": info.transcript, "seconds": info.seconds,
            "created": info.created, "compatible": info.compatible}


async def _streamed(pool: SynthesisPool, engine, request: SynthesisRequest, fmt: str) -> Response:
    """Chunks as the engine makes them. The first chunk is awaited before the response starts, so an error in
    the prompt or the first sentence still becomes a JSON error with its status; a later one ends the stream."""
    chunks = pool.stream(lambda: engine.stream(request))
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = None

    async def body():
        if fmt == "wav":
            yield streaming_wav_header(engine.sample_rate)
        try:
            if first is not None:
                yield pcm16(first)
                async for chunk in chunks:
                    yield pcm16(chunk)
        except Exception:     # the status is sent already: log it and end the stream early
            log.exception("streaming request failed after its first chunk")
        finally:
            await chunks.aclose()

    return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt], headers={"X-Sample-Rate": str(engine.sample_rate)})
