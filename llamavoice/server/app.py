"""The OpenAI-compatible HTTP API (FastAPI) and the web page.

Routes: ``POST /v1/audio/speech``, ``GET /v1/models[/{id}]``, ``GET/POST /v1/audio/voices``,
``DELETE /v1/audio/voices/{id}``, ``GET /health``, and the page at ``/``. Errors are OpenAI's JSON
shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; every
:class:`LlamaVoiceError` is a 400 carrying its own message.

A speech request runs in its own thread: ``TTS.stream`` (frames from the engine, see
``engine.py``), an optional resampler and the encoder; the bytes reach the event loop through an
asyncio queue. The response starts with the first encoded bytes, so errors found before any audio
(bad text, unusable voice, ...) still get their 400. When the client goes away, the response's
cleanup cancels the request, which frees its row in the decode loop at the next step.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamavoice.audio.io import StreamingResampler
from llamavoice.errors import ConfigError, LlamaVoiceError, TextError
from llamavoice.inference.api import TTS
from llamavoice.inference.voice import Voice
from llamavoice.server.engine import BatchingEngine, Cancelled, RequestHandle, SerialEngine, make_engine
from llamavoice.server.formats import FORMATS, MEDIA_TYPES, check_format, make_encoder
from llamavoice.server.library import VoiceExistsError, VoiceLibrary

log = logging.getLogger("llamavoice.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MODEL_ID = "llamavoice"
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's built-in voice names, accepted as the model's default voice so that clients with a
# hard-coded voice (most of them say "alloy") work unchanged.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
STREAM_FORMATS = ("audio", "sse")
MIN_SPEED, MAX_SPEED = 0.25, 4.0


@dataclass
class ServerSettings:
    voices_dir: Path | None = None  # None: the library's default location
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    batching: bool = True  # False: one request at a time (the peers' way; the benchmark's baseline)
    max_batch: int = 16  # LM rows per decode step
    max_requests: int = 64  # speech requests in flight (generating or waiting); more get 429
    max_input_chars: int = 4096  # OpenAI's limit
    max_upload_bytes: int = 20 * 1024 * 1024
    max_clip_seconds: float = 60.0
    threads: int | None = None  # torch threads per worker thread (None: torch's current setting)
    # Streamed audio chunks start at 4 latent frames (the time to first audio) and double up to
    # this. The VAE decodes each chunk with ~9 frames of context on each side, so long chunks
    # waste less work: with many streams the decoder, not the LM, is the larger cost.
    max_chunk_frames: int = 64


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _from_llamavoice(exc: LlamaVoiceError, param: str | None = None) -> APIError:
    return APIError(400, str(exc), param=param, code=type(exc).__name__)


class VoiceRef(BaseModel):
    id: str


class SpeechBody(BaseModel):
    """OpenAI's speech request plus our extras (seed, temperature, cfg_weight, sample_rate)."""

    model_config = ConfigDict(extra="ignore")

    input: str
    model: str = MODEL_ID
    voice: str | VoiceRef = "default"
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: str = "audio"
    instructions: str | None = None  # accepted and ignored: the voice clip sets the style
    seed: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    cfg_weight: float | None = None
    sample_rate: int | None = None


@dataclass
class _State:
    tts: TTS
    settings: ServerSettings
    engine: BatchingEngine | SerialEngine
    library: VoiceLibrary
    threads: int
    active: int = 0  # speech requests in flight
    voices: dict[str, Voice] = field(default_factory=dict)  # library voices loaded for this model
    lock: threading.Lock = field(default_factory=threading.Lock)


_END = object()


class _SpeechResponse(StreamingResponse):
    """A streaming response that always runs ``on_close`` when it ends, however it ends (finished,
    client gone, error): the request's generation must not outlive its client."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _SpeechJob:
    """One speech request: a worker thread producing encoded bytes into an asyncio queue."""

    def __init__(self, state: _State, text: str, voice: Voice, cfg, fmt: str, rate: int):  # noqa: ANN001
        self.state, self.text, self.voice, self.cfg, self.fmt, self.rate = state, text, voice, cfg, fmt, rate
        self.handle = RequestHandle()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.samples = 0
        self._loop = asyncio.get_running_loop()
        self._closed = False
        state.active += 1
        threading.Thread(target=self._produce, name="llamavoice-speech", daemon=True).start()

    def _emit(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _produce(self) -> None:
        state, tts = self.state, self.state.tts
        torch.set_num_threads(state.threads)
        try:
            with state.engine.session():
                self.handle.check()
                encoder = make_encoder(self.fmt, self.rate)
                resampler = StreamingResampler(tts.sample_rate, self.rate) if self.rate != tts.sample_rate else None
                frames = state.engine.frame_source(self.handle)
                stream = tts.stream(self.text, self.voice, sampling=self.cfg, frame_source=frames,
                                    max_chunk_frames=state.settings.max_chunk_frames)
                with closing(stream) as chunks:
                    for audio in chunks:
                        self.handle.check()
                        if resampler is not None:
                            audio = resampler.push(audio)
                        self.samples += audio.shape[0]
                        data = encoder.push(audio)
                        if data:
                            self._emit(data)
                tail = resampler.finish() if resampler is not None else np.zeros(0, dtype=np.float32)
                self.samples += tail.shape[0]
                data = encoder.push(tail) + encoder.finish()
                if data:
                    self._emit(data)
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 (handed to the event loop, which answers it)
            self._emit(exc)
        finally:
            self._emit(_END)

    async def next(self) -> object:
        return await self.queue.get()

    def close(self) -> None:
        """Stop the generation (if still running) and release the request's place; idempotent."""
        if not self._closed:
            self._closed = True
            self.handle.cancel()
            self.state.active -= 1


def create_app(tts: TTS, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``tts``. Run it with uvicorn (``llamavoice serve`` does)."""
    settings = settings or ServerSettings()
    threads = settings.threads or torch.get_num_threads()
    engine = make_engine(tts, batching=settings.batching, max_rows=settings.max_batch, threads=threads)
    state = _State(tts, settings, engine, VoiceLibrary(settings.voices_dir), threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        # Resolve the default voice now: a model without one makes a random voice with the LM,
        # which must not run beside the decode loop later.
        await anyio.to_thread.run_sync(tts.get_voice, None)
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="LlamaVoice", summary="OpenAI-compatible text-to-speech", lifespan=lifespan)
    app.state.llamavoice = state
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    _install_error_handlers(app)

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with (--api-key)",
                           type="authentication_error", code="invalid_api_key")

    auth = [Depends(authorize)]

    # --- pages and health -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": MODEL_ID, "sample_rate": tts.sample_rate, "device": str(tts.device),
                "batching": engine.batching, "requests": state.active, "auth": settings.api_key is not None,
                **engine.stats()}

    # --- models -------------------------------------------------------------------------------------
    def model_card(mid: str) -> dict:
        return {"id": mid, "object": "model", "created": 0, "owned_by": "llamavoice"}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(m) for m in (MODEL_ID, *MODEL_ALIASES)]}

    @app.get("/v1/models/{model_id}", dependencies=auth)
    async def get_model(model_id: str) -> dict:
        if model_id not in (MODEL_ID, *MODEL_ALIASES):
            raise _unknown_model(model_id)
        return model_card(model_id)

    # --- voices -------------------------------------------------------------------------------------
    def voice_list() -> list[dict]:
        shipped = [{"id": v, "name": v, "source": "model"} for v in tts.list_voices()]
        mine = [{"id": v.id, "name": v.name, "source": "library"} for v in state.library.list()]
        return shipped + mine

    def resolve_voice(ref: str | VoiceRef) -> Voice:
        name = ref.id if isinstance(ref, VoiceRef) else ref
        if name in OPENAI_VOICES or name in ("", "default"):
            return tts.get_voice(None)
        if name in tts.list_voices():
            return tts.get_voice(name)
        entry = state.library.get(name)
        if entry is None:
            known = ", ".join(v["id"] for v in voice_list()) or "none"
            raise APIError(400, f"voice {name!r} not found; available voices: {known} (OpenAI's names such as "
                                "'alloy' mean the default voice); add one with POST /v1/audio/voices",
                           param="voice", code="voice_not_found")
        with state.lock:
            voice = state.voices.get(entry.id)
        if voice is None:
            voice = state.library.load(entry.id, tts)
            with state.lock:
                voice = state.voices.setdefault(entry.id, voice)  # one Voice per id: its KV prefix is reused
        return voice

    @app.get("/v1/audio/voices", dependencies=auth)
    async def list_voices() -> dict:
        return {"voices": voice_list()}

    @app.post("/v1/audio/voices", dependencies=auth, status_code=201)
    async def add_voice(request: Request) -> dict:
        limit = settings.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            raise _too_large_upload(int(length), limit)
        form = await request.form(max_files=1, max_fields=4)
        upload, name = form.get("file"), form.get("name")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "send the clip as a multipart file field named 'file'", param="file")
        if not isinstance(name, str) or not name.strip():
            name = Path(upload.filename or "").stem
        if not name:
            raise APIError(400, "give the voice a name (multipart field 'name')", param="name")
        data = await upload.read()
        if len(data) > limit:
            raise _too_large_upload(len(data), limit)
        if name.strip() in tts.list_voices() or name.strip() in OPENAI_VOICES:
            raise APIError(409, f"voice name {name!r} is taken by a built-in voice; pick another name",
                           param="name", code="voice_exists")
        audio, sr = decode_clip(data, upload.filename or "upload")
        seconds = audio.shape[0] / sr
        if seconds > settings.max_clip_seconds:
            raise APIError(413, f"the clip is {seconds:.1f} s long; the limit is {settings.max_clip_seconds:g} s "
                                "(3-15 s is what cloning uses)", param="file", code="clip_too_long")

        def encode_and_store() -> dict:
            voice = tts.encode_voice(audio, sample_rate=sr, name=name)
            entry = state.library.add(name, audio, sr, source=upload.filename or "", voice=voice,
                                      model_id=tts.model_id)
            return {"id": entry.id, "name": entry.name, "source": "library", "seconds": entry.seconds}

        try:
            return await anyio.to_thread.run_sync(encode_and_store)
        except VoiceExistsError as exc:
            raise APIError(409, str(exc), param="name", code="voice_exists") from exc

    @app.delete("/v1/audio/voices/{voice_id}", dependencies=auth)
    async def delete_voice(voice_id: str) -> dict:
        if voice_id in tts.list_voices():
            raise APIError(403, f"voice {voice_id!r} ships with the model and cannot be deleted", param="voice_id",
                           code="voice_protected")
        if not state.library.remove(voice_id):
            raise APIError(404, f"voice {voice_id!r} is not in the voice library", param="voice_id",
                           code="voice_not_found")
        with state.lock:
            state.voices.pop(voice_id, None)
        return {"id": voice_id, "object": "voice", "deleted": True}

    # --- speech -------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech", dependencies=auth)
    async def speech(body: SpeechBody) -> Response:
        if body.model not in (MODEL_ID, *MODEL_ALIASES):
            raise _unknown_model(body.model)
        fmt = body.response_format.lower()
        if fmt not in FORMATS:
            raise APIError(400, f"unknown response_format {body.response_format!r}; choose one of "
                                f"{', '.join(FORMATS)}", param="response_format", code="unsupported_format")
        if body.stream_format not in STREAM_FORMATS:
            raise APIError(400, f"unknown stream_format {body.stream_format!r}; choose audio or sse",
                           param="stream_format")
        if len(body.input) > settings.max_input_chars:
            raise APIError(413, f"input has {len(body.input)} characters; the limit is {settings.max_input_chars}: "
                                "split the text into several requests", param="input", code="input_too_long")
        if not body.input.strip():
            raise APIError(400, "input is empty: give at least one word to speak", param="input")
        if not (MIN_SPEED <= body.speed <= MAX_SPEED) or math.isnan(body.speed):
            raise APIError(400, f"speed {body.speed} is out of range; choose {MIN_SPEED}-{MAX_SPEED}", param="speed")
        rate = body.sample_rate or tts.sample_rate
        try:
            check_format(fmt, rate)
        except ConfigError as exc:
            raise _from_llamavoice(exc, "sample_rate") from exc
        overrides: dict[str, Any] = {"speed": body.speed}
        for name in ("seed", "temperature", "cfg_weight"):
            if getattr(body, name) is not None:
                overrides[name] = getattr(body, name)
        try:
            cfg = tts.sampling.replace(**overrides)
        except ConfigError as exc:
            raise _from_llamavoice(exc) from exc
        try:
            voice = await anyio.to_thread.run_sync(resolve_voice, body.voice)
        except LlamaVoiceError as exc:
            raise _from_llamavoice(exc, "voice") from exc
        if state.active >= settings.max_requests:
            raise APIError(429, f"the server is busy ({state.active} requests in flight, limit "
                                f"{settings.max_requests}); retry shortly", type="rate_limit_error",
                           code="too_many_requests")

        job = _SpeechJob(state, body.input, voice, cfg, fmt, rate)
        try:
            first = await job.next()
        except BaseException:  # cancelled while waiting (shutdown): release the request
            job.close()
            raise
        if isinstance(first, BaseException):
            job.close()
            if isinstance(first, LlamaVoiceError):
                raise _from_llamavoice(first, "input" if isinstance(first, TextError) else None)
            raise first
        sse = body.stream_format == "sse"
        return _SpeechResponse(
            _body(job, first, sse, len(body.input), tts.frame_rate / rate),
            on_close=job.close,
            media_type="text/event-stream" if sse else MEDIA_TYPES[fmt],
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


async def _body(
    job: _SpeechJob, first: object, sse: bool, chars: int, frames_per_sample: float
) -> AsyncIterator[bytes]:
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        item = first
        while item is not _END:
            if isinstance(item, BaseException):
                log.error("speech generation failed mid-stream: %s", item)
                if sse:
                    message = str(item) if isinstance(item, LlamaVoiceError) else "internal error during generation"
                    yield event({"type": "error", "error": {"message": message, "type": "server_error"}})
                return
            assert isinstance(item, bytes)
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(item).decode()}) if sse else item
            item = await job.next()
        if sse:
            frames = round(job.samples * frames_per_sample)
            yield event({"type": "speech.audio.done",
                         "usage": {"input_tokens": chars, "output_tokens": frames, "total_tokens": chars + frames}})
    finally:
        job.close()


def decode_clip(data: bytes, filename: str) -> tuple[np.ndarray, int]:
    """An uploaded clip as mono float32: soundfile first (WAV, FLAC, OGG, MP3), then PyAV (M4A,
    WebM/Opus from a browser's recorder, ...)."""
    import soundfile as sf

    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return audio.mean(axis=1), int(sr)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate or 24000)
            pieces = [f.to_ndarray().reshape(-1) for frame in container.decode(stream)
                      for f in resampler.resample(frame)]
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
            sr = resampler.rate
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise APIError(400, f"could not decode {filename!r} as audio (corrupt or unsupported); send WAV, FLAC, OGG, "
                            "MP3, M4A or WebM", param="file", code="invalid_audio") from exc
    if audio.size == 0:
        raise APIError(400, f"{filename!r} holds no audio samples", param="file", code="invalid_audio")
    return audio.astype(np.float32, copy=False), int(sr)


def _unknown_model(model: str) -> APIError:
    return APIError(404, f"model {model!r} does not exist; this server speaks with {MODEL_ID!r} (aliases: "
                         f"{', '.join(MODEL_ALIASES)})", param="model", code="model_not_found")


def _too_large_upload(size: int, limit: int) -> APIError:
    return APIError(413, f"the upload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB: send a "
                         "shorter clip (3-15 s is enough)", param="file", code="upload_too_large")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(LlamaVoiceError)
    async def llamavoice_error(request: Request, exc: LlamaVoiceError) -> JSONResponse:
        return _from_llamavoice(exc).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return APIError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), code="http_error").response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        message = f"internal error: {type(exc).__name__}; see the server log"
        return APIError(500, message, type="server_error").response()


__all__ = ["APIError", "ServerSettings", "create_app", "decode_clip"]
