"""The JSON body of POST /v1/images/generations: the OpenAI images API's fields and ours. Types are checked here
(422 naming the field); values are checked by parsing.parse_generation with the library's GenerationRequest and the
server's limits (400 naming the field), so FastAPI's OpenAPI schema documents each field and its limit."""
from pydantic import BaseModel, Field


class GenerationBody(BaseModel):
    prompt: str = Field(description="what the image shows (at most the server's max_prompt_chars, /v1/config)")
    n: int = Field(1, description="images of this prompt, 1 to the server's max_images")
    size: str | None = Field(None, description="WIDTHxHEIGHT, one of /v1/config's sizes (the model's aspect-ratio "
                                              "buckets, at most max_pixels); default the native square")
    response_format: str = Field("b64_json", description='"b64_json" (PNG, base64) only: the server keeps no files')
    model: str | None = Field(None, description="accepted for OpenAI clients; the server serves its one model")
    negative_prompt: str = Field("", description="what the image should not show (classifier-free guidance)")
    seed: int | None = Field(None, description="0 to 2**32 - 1: the pipeline's seed (one seed, one image); null: "
                                               "drawn and returned")
    num_inference_steps: int | None = Field(None, description="sampling steps, 1 to the server's max_steps")
    guidance_scale: float | None = Field(None, description=">= 0; <= 1 turns classifier-free guidance off")
    scheduler: str | None = Field(None, description="a sampler of /v1/config's samplers; default the model's")
    eta: float = Field(0.0, description="stochasticity in [0, 1]: DDIM's eta, TCD's and PCM's gamma")
    control_image: str | None = Field(None, description="ControlNet servers: a PNG or JPEG, base64 or a "
                                                        "data:image/...;base64, URL (at most max_upload_bytes)")
    control: str = Field("canny", description="how the control image becomes edges: /v1/config's control_modes")
    lora_scales: dict[str, float] | None = Field(None, description="{adapter name: weight} of /v1/config's lora "
                                                                   "adapters; default their load scales")
    stream: bool = Field(False, description="server-sent events: progress steps, then the result")
