"""The real server on a tiny random pipeline with a LoRA adapter: concurrent requests with their own prompts, negative
prompts, image counts and seeds, batched together (seen in /metrics), each equal to the pipeline's own call run
alone; progress events; a drawn seed that reproduces its image; per-request adapter weights."""
import threading

import numpy as np
import pytest

from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.serving.app import create_app
from pixart_jax.serving.settings import ServerSettings
from pixart_jax.testing.server_client import metric, request
from tests.serving.client import generate, pixels, running, stream

COMMON = dict(num_inference_steps=3, scheduler="ddim", eta=1.0)  # DDIM with η: fresh noise at every step
BODIES = [dict(prompt="a small red circle", seed=0), dict(prompt="a big blue square", seed=7, negative_prompt="a cat"),
          dict(prompt="a small red circle", seed=1, n=2)]


@pytest.fixture(scope="module")
def server(model_dir, lora_dir):
    settings = ServerSettings(model_dir, loras=((lora_dir, 1.0),), max_batch=8, batch_wait_ms=500, warmup=())
    app = create_app(settings)
    with running(app) as port:
        yield port, app.state.service.engine.pipe


def alone(pipe, body):
    """The pipeline's own call with the body's settings (what the server's answer must equal): the server's
    PixArtPipeline object, called by the test once the server is idle (with progress, as the server runs it: its
    compiled loops serve both)."""
    image = pipe(body["prompt"], negative_prompt=body.get("negative_prompt", ""), seed=body["seed"],
                 num_images_per_prompt=body.get("n", 1), height=256, width=256, num_inference_steps=3, eta=1.0).images
    return [np.asarray(i, np.int16) for i in image]


def test_concurrent_requests_are_batched_and_each_equals_its_call_alone(server):
    server, pipe = server
    answers = {}
    start = threading.Barrier(len(BODIES))

    def client(i):
        start.wait()
        answers[i] = generate(server, **COMMON, **BODIES[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(BODIES))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    # the three guided 256² requests share a forward (4 images); unguided and 352x176 run on their own
    assert metric(server, 'pixart_batch_size_bucket{le="4"}') - metric(server, 'pixart_batch_size_bucket{le="2"}') == 1
    for i, body in enumerate(BODIES):
        status, answer = answers[i]
        assert status == 200, answer
        assert answer["seed"] == body["seed"] and answer["settings"]["n"] == body.get("n", 1)
        expected = alone(pipe, body)
        got = [pixels(item["b64_json"]) for item in answer["data"]]
        assert len(got) == len(expected)
        for image, reference in zip(got, expected):
            assert image.shape == reference.shape
            assert np.abs(image - reference).max() <= 1, body  # 1/255


def test_streamed_progress_then_the_result_and_a_drawn_seed_reproduces(server):
    server, pipe = server
    events = stream(server, prompt="a small red circle", num_inference_steps=3, scheduler="ddim")
    assert [e for e, _ in events] == ["progress"] * 3 + ["result"]
    assert [d["step"] for _, d in events[:3]] == [1, 2, 3] and events[0][1]["steps"] == 3
    result = events[-1][1]
    settings = result["settings"]
    assert settings["scheduler"] == "ddim" and settings["size"] == "256x256" and settings["guidance_scale"] == 4.5
    hits = pipe.prompt_cache.hits
    status, again = generate(server, prompt="a small red circle", num_inference_steps=3, scheduler="ddim",
                             seed=result["seed"])
    assert status == 200 and again["data"][0]["b64_json"] == result["data"][0]["b64_json"]
    assert pipe.prompt_cache.hits == hits + 1  # the repeated prompt skipped T5
    assert request(server, "GET", "/health") == (200, {"status": "ok"})


def test_a_request_s_lora_scale_is_its_own(server, model_dir):
    """Weight 0 serves the base model's image; the default (the adapter's load scale, 1) another one."""
    server, _ = server
    code, config = request(server, "GET", "/v1/config")
    assert config["lora"] == [{"name": "style", "scale": 1.0}]
    body = dict(prompt="a small red circle", seed=0, **COMMON)
    code, off = generate(server, lora_scales={"style": 0.0}, **body)
    assert code == 200 and off["settings"]["lora_scales"] == {"style": 0.0}
    base = PixArtPipeline.from_pretrained(model_dir, sampler="ddim")
    image = pixels(off["data"][0]["b64_json"])
    assert np.abs(image - alone(base, body)[0]).max() <= 1  # 1/255
    code, on = generate(server, **body)
    assert np.abs(pixels(on["data"][0]["b64_json"]) - image).max() > 8
