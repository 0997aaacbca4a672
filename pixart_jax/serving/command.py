"""`pixart-jax serve`: its options → ServerSettings, checked before anything loads, then uvicorn on the app. SIGTERM
(and Ctrl-C): uvicorn stops accepting connections, answers the requests already in (their jobs run to the end),
then the app stops its worker and the process exits."""
import logging
import os

from pixart_jax.pipelines.text_to_image import check_pipeline_directory
from pixart_jax.serving.settings import Backend, Limits, ServerSettings

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "pixart-jax", "xla")


def settings_of(args, loras) -> ServerSettings:
    """ServerSettings of parsed `serve` options (`loras`: the checked [(path, scale)] of --lora); a ValueError
    naming a bad option, a WeightsError for a directory that is no pipeline."""
    check_pipeline_directory(args.model)
    for flag, path in (("--controlnet", args.controlnet), ("--hed", args.hed)):
        if path is not None and not os.path.exists(path):
            raise ValueError(f"{flag} {path} does not exist")
    if args.hed and (args.controlnet is None or args.backend == Backend.torch):
        raise ValueError("--hed is for a ControlNet server (--controlnet) on the JAX backend")
    limits = Limits(args.max_steps, args.max_images, args.max_pixels, args.max_prompt_chars, args.max_upload_bytes)
    return ServerSettings(args.model, Backend(args.backend), tuple(loras), args.controlnet, args.hed, args.device,
                          args.max_batch, args.batch_wait_ms, args.max_queue, args.timeout_s, args.api_key,
                          None if args.warmup is None else tuple(args.warmup), limits, args.prompt_cache)


def serve(settings: ServerSettings, host: str, port: int):
    """Runs the server until SIGTERM / SIGINT; 1 when the model failed to load."""
    import jax
    import uvicorn

    from pixart_jax.serving.app import create_app

    if not jax.config.jax_compilation_cache_dir:  # a restart reuses the compiled loops
        jax.config.update("jax_compilation_cache_dir", os.environ.get("PIXART_JAX_CACHE", DEFAULT_CACHE))
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_keep_alive=5))
    # after uvicorn's logging config, which clears the root logger's handlers: the server's own lines (loading,
    # warm-up, a failed load)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s", force=True)

    def stop():
        server.should_exit = True

    app.state.service.on_failure = stop
    server.run()
    return 1 if app.state.service.failed else 0


def add_parser(commands, run):
    """The `serve` command's parser (its options: ServerSettings), running `run(args)`."""
    p = commands.add_parser("serve", help="an HTTP server (the OpenAI images API, a web page, dynamic batching)")
    p.add_argument("--model", required=True, help="pipeline directory (PixArt-α or PixArt-Σ, diffusers layout)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=list(Backend), default=Backend.jax,
                   help="torch: the PyTorch path (pip install pixart-jax[torch])")
    p.add_argument("--device", help="torch device (--backend torch; default cpu)")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA adapter at default weight SCALE (1), named by its file; requests set weights")
    p.add_argument("--controlnet", help="a PixArt ControlNet checkpoint: requests then need a control_image")
    p.add_argument("--hed", help="ControlNetHED.pth, for control 'hed' (JAX backend)")
    p.add_argument("--max-batch", type=int, default=4, help="images per forward (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long the oldest request waits for others to share its forward")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting; more are answered 429")
    p.add_argument("--max-steps", type=int, default=Limits.max_steps)
    p.add_argument("--max-images", type=int, default=Limits.max_images, help="n of one request")
    p.add_argument("--max-pixels", type=int, help="pixels of one image (default: the largest bucket's)")
    p.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars)
    p.add_argument("--max-upload-bytes", type=int, default=Limits.max_upload_bytes, help="a control image's bytes")
    p.add_argument("--timeout-s", type=float, default=300.0, help="a request not answered by then gets 504")
    p.add_argument("--api-key", default=os.environ.get("PIXART_API_KEY"),
                   help="bearer token every request but the page and /health needs (default $PIXART_API_KEY)")
    p.add_argument("--prompt-cache", type=int, default=ServerSettings.prompt_cache,
                   help="prompts whose T5 embeddings are kept, least recently used dropped (0: none)")
    p.add_argument("--warmup", nargs="*", metavar="WxH",
                   help="sizes compiled at start at the default settings (default the native square; none: no sizes)")
    p.set_defaults(run=run, low_memory=False)
