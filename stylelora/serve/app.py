"""The HTTP API (FastAPI): generate with named adapters, list, upload and delete adapters, health and metrics.

Library errors are typed (errors.py); this is the one place that turns them into HTTP statuses, and every
error reply is JSON, `{"error": "<one line>"}`, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..adapters.library import MAX_UPLOAD_BYTES, delete_adapter, import_adapter
from ..adapters.stack import StyleWeight
from ..errors import AdapterFileError, AdapterNotFoundError, ConfigError, ConflictError, ServerBusyError, StyleloraError
from ..files import safe_file_name
from ..images import png_bytes
from ..options import declaration, default_of
from ..paint.engine import Engine, PaintJob
from ..paint.request import GenerateConfig, image_settings, validate_generate
from ..model.cores import CoreShare
from ..paint.pipeline import BLENDS, SCHEDULERS
from .batcher import Batcher
from .config import ServeConfig, validate_serve
from .limits import BodyLimit
from .metrics import Metrics

REPLICA = f"{socket.gethostname()}:{os.getpid()}"
STATUS = [(AdapterNotFoundError, 404), (ConflictError, 409), (ConfigError, 422), (AdapterFileError, 422),
          (ServerBusyError, 503)]
Weight = Annotated[float, Field(allow_inf_nan=False)]


class AdapterWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: Weight | str = 1.0  # a number, or parts as `stylelora generate --lora` takes them: "unet=0.8,te=0.5"


def _default(name: str):
    """The default `stylelora generate` declares for a setting the request shares with it."""
    return default_of(declaration(GenerateConfig, name)[0])


class GenerateBody(BaseModel):
    """A request's settings: those of `stylelora generate` (choices and defaults from its declarations), with the
    adapters named from the served folder, and one image unless `count` asks for more."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    negative: str = _default("negative")
    adapters: list[AdapterWeight] = []
    blend: Literal[BLENDS] = _default("blend")
    blend_density: float = Field(_default("blend_density"), gt=0, le=1)
    seed: int = Field(_default("seed"), ge=0, lt=2**63)
    steps: int = _default("steps")
    cfg: Weight = _default("cfg")
    width: int | None = None
    height: int | None = None
    count: int = 1
    scheduler: Literal[tuple(SCHEDULERS)] = _default("scheduler")


def status_of(error: StyleloraError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 500)


def error_reply(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The app over `engine` (built from the config if not given: the base is loaded before the first request)."""
    validate_serve(config)
    Path(config.adapters).mkdir(parents=True, exist_ok=True)
    engine = engine or Engine(config.base, Path(config.adapters), quantize=config.quantize_base,
                              max_resident=config.max_resident,
                              max_bytes=int(config.max_resident_mb * 2**20) if config.max_resident_mb else None)
    # This process's share of the cores, taken here so that each Ray replica (which builds its own app) takes one
    # too; the engine looks at it again before each batch, as a training does before each step.
    engine.cores = CoreShare(config.threads, say=lambda line: print(f"stylelora: {line}", flush=True)).__enter__()
    metrics = Metrics(engine)
    batcher = Batcher(engine, config.max_queue, config.max_batch, config.batch_window_ms / 1000, metrics.batch_done)
    metrics.queue_depth = lambda: batcher.depth

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()
        engine.close()
        engine.cores.__exit__(None, None, None)

    app = FastAPI(title="stylelora", version="1", lifespan=lifespan,
                  description="Paint with a Stable Diffusion base and many style adapters, each at its own weight.")
    app.state.engine, app.state.batcher, app.state.config = engine, batcher, config
    _add_middleware(app, config, metrics)
    _add_error_handlers(app)
    _add_generate(app, config, engine, batcher)
    _add_adapter_routes(app, config, engine)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "base": config.base, "architecture": engine.family.label, "replica": REPLICA,
                "resident": len(engine.pool.resident)}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _add_middleware(app: FastAPI, config: ServeConfig, metrics: Metrics) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        if config.api_key is not None and not _has_key(request, config.api_key):
            response: Response = error_reply(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                                             {"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        metrics.request_done(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - start)
        response.headers["X-Stylelora-Replica"] = REPLICA
        return response

    # Outermost: a body over its limit is refused before anything reads it.
    app.add_middleware(BodyLimit, default=int(config.max_body_mb * 2**20),
                       limits={("POST", "/v1/adapters"): MAX_UPLOAD_BYTES + 2**20})


def _has_key(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return secrets.compare_digest(given.encode(), key.encode())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StyleloraError)
    async def library_error(request: Request, error: StyleloraError):
        headers = {"Retry-After": "1"} if isinstance(error, ServerBusyError) else None
        return error_reply(status_of(error), str(error), headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return error_reply(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return error_reply(500, f"internal error ({type(error).__name__}); the server log has the details")


def _add_generate(app: FastAPI, config: ServeConfig, engine: Engine, batcher: Batcher) -> None:
    @app.post("/v1/generate", responses={200: {"content": {"image/png": {}}}})
    async def generate(body: GenerateBody, request: Request):
        """Paint `count` images. JSON with base64 PNGs, or one `image/png` when the request accepts only that."""
        job, specs, notes = _job(body, config, engine)
        images = await asyncio.wrap_future(batcher.submit(job))
        files = [png_bytes(image, image_settings(job.config, body.seed + i, image.size, specs))
                 for i, image in enumerate(images)]
        if request.headers.get("accept", "").startswith("image/png") and len(files) == 1:
            return Response(files[0], media_type="image/png", headers={"X-Stylelora-Notes": " | ".join(notes)})
        return {"images": [{"seed": body.seed + i, "png": base64.b64encode(data).decode()}
                           for i, data in enumerate(files)],
                "prompt_cut": any("cut" in note for note in notes), "notes": notes}


def _job(body: GenerateBody, config: ServeConfig, engine: Engine) -> tuple[PaintJob, list, list[str]]:
    """The request as a checked PaintJob (the same checks as `stylelora generate`, then the server's limits)."""
    stack, specs = [], []
    for index, adapter in enumerate(body.adapters):
        entry = engine.pool.entry(adapter.name)
        weight = (StyleWeight.parse(adapter.weight, f"adapters[{index}]") if isinstance(adapter.weight, str)
                  else StyleWeight(adapter.weight, adapter.weight))
        if not weight.is_off:
            stack.append((adapter.name, weight))
        specs.append((entry.path, weight))
    settings = GenerateConfig(prompt=body.prompt, base=config.base, negative=body.negative, count=body.count,
                              steps=body.steps, cfg=body.cfg, seed=body.seed, width=body.width, height=body.height,
                              scheduler=body.scheduler, blend=body.blend, blend_density=body.blend_density,
                              quantize_base=config.quantize_base)
    try:
        validate_generate(settings)
    except ConfigError as error:  # the same checks as `stylelora generate`, named as the JSON field is
        raise ConfigError(str(error).removeprefix("--")) from None
    for value, limit, name, flag in [(body.count, config.max_count, "count", "--max-count"),
                                     (body.steps, config.max_steps, "steps", "--max-steps"),
                                     (body.width or 0, config.max_side, "width", "--max-side"),
                                     (body.height or 0, config.max_side, "height", "--max-side")]:
        if value > limit:
            raise ConfigError(f"{name} = {value}: this server allows at most {limit} ({flag})")
    notes = [f"{field} cut: {over} tokens past the text encoder's {engine.prompt_limit} were dropped"
             for field, over in (("prompt", engine.tokens_over(body.prompt)), ("negative", engine.tokens_over(body.negative)))
             if over]
    return PaintJob(settings, tuple(stack)), specs, notes


def _add_adapter_routes(app: FastAPI, config: ServeConfig, engine: Engine) -> None:
    folder = Path(config.adapters)

    @app.get("/v1/adapters")
    def adapters() -> dict:
        resident = dict(engine.pool.resident)
        return {"adapters": [
            {"name": name, "method": entry.method, "rank": entry.rank, "base": entry.architecture,
             "trigger": entry.trigger, "size": entry.path.stat().st_size, "resident": name in resident,
             "resident_bytes": resident[name].nbytes if name in resident else 0}
            for name, entry in engine.pool.catalog().items()]}

    @app.post("/v1/adapters", status_code=201)
    async def upload(file: UploadFile = File(...), name: str | None = Form(None)) -> dict:
        """Add a .safetensors adapter, checked as `stylelora inspect` checks it and against the served base."""
        original = name or file.filename or "adapter.safetensors"
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / safe_file_name(original)  # errors name the file as the client sent it
            source.write_bytes(await file.read())
            # checked as the UI's import checks it, and to fit this base module by module, before it is copied
            target = import_adapter(source, folder, original, fits=engine.read_adapter)
        engine.pool.forget(target.stem)
        return {"name": target.stem, "file": target.name}

    @app.delete("/v1/adapters/{name}")
    def remove(name: str) -> dict:
        entry = engine.pool.entry(name)
        delete_adapter(entry.path, folder)
        engine.pool.forget(name)
        return {"deleted": name}
