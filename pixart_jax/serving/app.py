"""The ASGI app of `pixart-jax serve` (the HTTP contract: README "Serving"): the page and its static files, /health,
/v1/models, /v1/config, POST /v1/images/generations (JSON, or server-sent events with "stream": true) and /metrics;
OpenAI-shaped errors; a bearer api key for everything but the page and /health."""
import contextlib
import pathlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from pixart_jax.serving.engines import load_engine
from pixart_jax.serving.errors import APIError
from pixart_jax.serving.guard import Guard
from pixart_jax.serving.parsing import parse_generation
from pixart_jax.serving.schema import GenerationBody
from pixart_jax.serving.service import Service

STATIC = pathlib.Path(__file__).parent / "static"
BODY_OVERHEAD = 2**20  # JSON beyond the control image's base64


def create_app(settings, engine_loader=load_engine) -> FastAPI:
    """The app serving `settings.model`, loaded by `engine_loader(settings)` in the worker thread after start."""
    service = Service(settings, engine_loader)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="pixart-jax", summary="PixArt text-to-image: the OpenAI images API and its page",
                  lifespan=lifespan)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    _add_guards(app, settings)
    _add_info_routes(app, service)
    _add_generation_route(app, service)
    return app


def _add_guards(app, settings):
    """The api key and the body size limit (Guard), and the error shapes."""
    max_body = settings.limits.max_upload_bytes * 4 // 3 + BODY_OVERHEAD

    app.add_middleware(Guard, api_key=settings.api_key, max_body=max_body)

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        if request.url.path == "/v1/images/generations":
            app.state.service.metrics.requests[error.status] += 1
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = location[0] if location else None
        message = f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid')}"
        return await api_error(request, APIError(422, message, param))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return APIError(error.status_code, str(error.detail)).response(error.headers)


def _add_info_routes(app, service):
    @app.get("/", include_in_schema=False)
    async def page():
        index = STATIC / "index.html"
        if not index.is_file():
            raise APIError(404, "this install has no page (pixart_jax/serving/static/index.html)")
        return FileResponse(index)

    @app.get("/health")
    async def health():
        if service.ready:
            return {"status": "ok"}
        status = "loading" if service.failed is None else "error"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/models")
    async def models():
        service.require_ready()
        return {"object": "list", "data": [{"id": service.info.name, "object": "model",
                                            "created": int(service.started), "owned_by": "pixart-jax"}]}

    @app.get("/v1/config")
    async def config():
        service.require_ready()
        info, limits = service.info, service.settings.limits
        return {"model": info.name, "backend": info.backend, "sizes": [list(size) for size in info.sizes],
                "samplers": list(info.samplers), "defaults": info.defaults,
                "limits": {"max_steps": limits.max_steps, "max_images": limits.max_images,
                           "max_pixels": limits.max_pixels or max(w * h for w, h in info.sizes),
                           "max_prompt_chars": limits.max_prompt_chars, "max_upload_bytes": limits.max_upload_bytes},
                "controlnet": info.controlnet, "control_modes": list(info.control_modes),
                "lora": [{"name": name, "scale": scale} for name, scale in info.loras.items()],
                "api_key_required": service.settings.api_key is not None}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(service.metrics.text(), media_type="text/plain; version=0.0.4")


def _add_generation_route(app, service):
    @app.post("/v1/images/generations")
    async def generations(body: GenerationBody, request: Request):
        """Images of a prompt (the OpenAI images API, plus our fields). With "stream": true, server-sent events:
        `progress` {"step", "steps"} per step, then `result` (the answer) or `error`."""
        service.require_ready()
        job = parse_generation(body, service.info, service.settings.limits)
        if not body.stream:
            return await service.generate(job, request)
        ticket, steps = service.submit_stream(job)
        return StreamingResponse(service.events(job, ticket, steps), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
