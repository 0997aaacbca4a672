"""A ControlNet server (--controlnet): a base64 control image steers the image, which equals the ControlNet
pipeline's call alone; bad uploads (not base64, not PNG/JPEG, too large, missing) get 400 naming control_image."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from pixart_jax.serving.app import create_app
from pixart_jax.serving.settings import Limits, ServerSettings
from pixart_jax.testing.server_client import request
from tests.serving.client import generate, pixels, png_b64, running


@pytest.fixture(scope="module")
def server(model_dir, controlnet_dir):
    settings = ServerSettings(model_dir, controlnet=controlnet_dir, max_batch=1, warmup=("256x256",),
                              limits=Limits(max_upload_bytes=20_000))
    app = create_app(settings)
    with running(app) as port:
        yield port, app.state.service.engine.pipe


def edges(size=64):
    image = np.zeros((size, size, 3), np.uint8)
    image[12:40, 12:40] = 255
    return image


def test_a_control_image_steers_the_image_as_the_pipeline_alone(server):
    port, pipe = server
    code, config = request(port, "GET", "/v1/config")
    assert config["controlnet"] is True and config["control_modes"] == ["canny", "none"]
    body = dict(prompt="a red circle", seed=2, num_inference_steps=2, control="none")
    code, answer = generate(port, control_image="data:image/png;base64," + png_b64(edges()), **body)
    assert code == 200, answer
    alone = pipe("a red circle", control_image=edges(), control="none", seed=2, num_inference_steps=2,
                 height=256, width=256).images[0]
    image = pixels(answer["data"][0]["b64_json"])
    assert np.abs(image - np.asarray(alone, np.int16)).max() <= 1  # 1/255
    code, other = generate(port, control_image=png_b64(255 - edges()), **body)
    assert code == 200 and np.abs(pixels(other["data"][0]["b64_json"]) - image).max() > 8


def test_bad_control_images_get_400_naming_the_field(server):
    port, _ = server
    gif = io.BytesIO()
    Image.fromarray(edges()).save(gif, format="GIF")
    big = base64.b64encode(np.random.default_rng(0).bytes(30_000)).decode()
    for value in ("not base64!", base64.b64encode(b"not an image").decode(), base64.b64encode(gif.getvalue()).decode(),
                  big, "data:image/png,abc", None):
        code, body = generate(port, prompt="a cat", control_image=value)
        assert (code, body["error"]["param"]) == (400, "control_image"), (value, body)
    code, body = generate(port, prompt="a cat", control_image=png_b64(edges()), control="hed")
    assert (code, body["error"]["param"]) == (400, "control")
