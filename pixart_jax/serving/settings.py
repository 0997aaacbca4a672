"""What `pixart-jax serve` is started with: the model, the backend, batching and the limits every request is held
to (checked before it is queued)."""
import dataclasses
import enum


class Backend(enum.StrEnum):
    """Which pipeline serves: the JAX one or the PyTorch path (pixart_jax.torch)."""
    jax = "jax"
    torch = "torch"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits: steps, images (n), pixels of one image (None: the largest bucket's), prompt and negative
    prompt characters, bytes of an uploaded control image (decoded)."""
    max_steps: int = 50
    max_images: int = 4
    max_pixels: int | None = None
    max_prompt_chars: int = 2000
    max_upload_bytes: int = 10 * 2**20


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The server's options (`pixart-jax serve --help` documents each). `loras`: [(path, scale)];
    `warmup`: sizes "WxH" compiled (at the default settings) before /health says ok (None: the native square;
    (): none)."""
    model: str
    backend: Backend = Backend.jax
    loras: tuple[tuple[str, float], ...] = ()
    controlnet: str | None = None
    hed: str | None = None
    device: str | None = None
    max_batch: int = 4
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    timeout_s: float = 300.0
    api_key: str | None = None
    warmup: tuple[str, ...] | None = None
    limits: Limits = Limits()
    prompt_cache: int = 256

    def __post_init__(self):
        if self.prompt_cache < 0:
            raise ValueError(f"--prompt-cache must be >= 0, got {self.prompt_cache}")
        for name in ("max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_wait_ms", "timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name, value in dataclasses.asdict(self.limits).items():
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
