"""--backend torch: the PyTorch path serves the JAX backend's images (one seed, one image: it draws the JAX noise);
and a PixArt-Σ folder (diffusers' PixArtSigmaPipeline layout, built with diffusers) served as it is."""
import os

import numpy as np
import pytest

from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.serving.app import create_app
from pixart_jax.serving.settings import Backend, ServerSettings
from pixart_jax.testing.server_client import request
from tests.serving.client import generate, pixels, running, stream

pytest.importorskip("diffusers")


def test_the_torch_backend_serves_the_jax_backend_s_images(model_dir):
    settings = ServerSettings(model_dir, backend=Backend.torch, warmup=())
    bodies = [dict(prompt="a small red circle", seed=0, num_inference_steps=3),
              dict(prompt="a big blue square", seed=5, n=2, num_inference_steps=3, scheduler="ddim", eta=1.0,
                   negative_prompt="a cat", size="352x176")]
    with running(create_app(settings)) as port:
        code, config = request(port, "GET", "/v1/config")
        assert config["backend"] == "torch" and {"dpm", "ddim", "lcm"} <= set(config["samplers"])
        answers = [generate(port, **body) for body in bodies]
        events = stream(port, prompt="a cat", seed=1, num_inference_steps=2)
    assert [e for e, _ in events] == ["progress", "progress", "result"]
    pipe = PixArtPipeline.from_pretrained(model_dir)
    for (code, answer), body in zip(answers, bodies):
        assert code == 200, answer
        pipe.sampler = from_scheduler_config(os.path.join(model_dir, "scheduler"), body.get("scheduler"))
        width, height = map(int, body.get("size", "256x256").split("x"))
        jax_images = pipe(body["prompt"], negative_prompt=body.get("negative_prompt", ""), seed=body["seed"],
                          num_images_per_prompt=body.get("n", 1), height=height, width=width, num_inference_steps=3,
                          eta=body.get("eta", 0.0), progress=False).images
        assert len(answer["data"]) == len(jax_images)
        for item, image in zip(answer["data"], jax_images):
            assert np.abs(pixels(item["b64_json"]) - np.asarray(image, np.int16)).max() <= 1  # 1/255


def test_a_sigma_folder_is_served(tmp_path):
    import diffusers

    from pixart_jax.testing.reference_pipeline import build_sigma_pipeline

    build_sigma_pipeline(tmp_path / "sigma", scheduler=diffusers.DPMSolverMultistepScheduler())
    model = str(tmp_path / "sigma")
    with running(create_app(ServerSettings(model, warmup=()))) as port:
        code, config = request(port, "GET", "/v1/config")
        assert config["model"] == "sigma" and config["sizes"][0] == [256, 256]
        code, answer = generate(port, prompt="a small red circle", seed=3, num_inference_steps=2)
    assert code == 200, answer
    alone = PixArtPipeline.from_pretrained(model)("a small red circle", seed=3, num_inference_steps=2,
                                                  progress=False).images[0]
    assert np.abs(pixels(answer["data"][0]["b64_json"]) - np.asarray(alone, np.int16)).max() <= 1  # 1/255
