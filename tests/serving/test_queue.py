"""The server's queue, batching rules, limits and api key on a stand-in engine (no model: these are the server's own
rules): each bad field gets its 4xx naming it and the server keeps serving, a full queue answers 429, a client that
leaves frees its slot, a slow request gets 504, only compatible requests share a forward."""
import json
import socket
import threading

from pixart_jax.serving.app import create_app
from pixart_jax.serving.batcher import Ticket, batch_sizes, compiled_batch
from pixart_jax.serving.settings import Limits, ServerSettings
from pixart_jax.testing.server_client import metric, request, wait_for
from tests.serving.client import generate, png_b64, running
from tests.serving.stub import StubEngine


def serve(engines=None, loras=None, **options):
    """A running stub server (yields its port); the engine it loads is appended to `engines`."""
    settings = ServerSettings("stub", **{"batch_wait_ms": 0, **options})

    def load(settings):
        engine = StubEngine(settings, loras)
        if engines is not None:
            engines.append(engine)
        return engine

    return running(create_app(settings, load))


BAD = [
    (dict(size="100x100"), 400, "size"),
    (dict(size="256"), 400, "size"),
    (dict(n=5), 400, "n"),
    (dict(n=0), 400, "n"),
    (dict(n="two"), 422, "n"),
    (dict(num_inference_steps=51), 400, "num_inference_steps"),
    (dict(num_inference_steps=0), 400, "num_inference_steps"),
    (dict(scheduler="euler"), 400, "scheduler"),
    (dict(response_format="url"), 400, "response_format"),
    (dict(prompt="x" * 101), 400, "prompt"),
    (dict(negative_prompt="x" * 101), 400, "negative_prompt"),
    (dict(prompt=" "), 400, "prompt"),
    (dict(prompt=None), 422, "prompt"),
    (dict(seed=-1), 400, "seed"),
    (dict(seed=2**32), 400, "seed"),
    (dict(guidance_scale=-1), 400, "guidance_scale"),
    (dict(eta=1.5), 400, "eta"),
    (dict(control_image=png_b64([[0]])), 400, "control_image"),
    (dict(lora_scales={"other": 1.0}), 400, "lora_scales"),
    (dict(lora_scales={"style": "big"}), 422, "lora_scales"),
    (dict(stream="sometimes"), 422, "stream"),
]


def test_each_bad_field_gets_its_4xx_naming_it_and_the_server_keeps_serving():
    with serve(loras={"style": 1.0}, limits=Limits(max_prompt_chars=100)) as port:
        for fields, status, param in BAD:
            code, body = generate(port, **{"prompt": "a cat", **fields})
            assert (code, body["error"]["param"]) == (status, param), (fields, body)
            assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
        code, body = request(port, "POST", "/v1/images/generations", None)
        assert code == 422 and body["error"]["message"]
        assert generate(port, prompt="a cat", n=2)[0] == 200
        assert metric(port, 'pixart_requests_total{status="400"}') == sum(s == 400 for _, s, _ in BAD)


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot():
    engines = []
    with serve(engines, max_queue=3) as port:
        engine = engines[0]
        engine.gate.clear()
        answers = []
        first = threading.Thread(target=lambda: answers.append(generate(port, prompt="first")))
        first.start()
        wait_for(lambda: metric(port, "pixart_running_requests") == 1)
        queued = threading.Thread(target=lambda: answers.append(generate(port, prompt="queued")))
        queued.start()
        leaving = _send_and_leave_open(port, "leaving")
        streaming = _send_and_leave_open(port, "streaming", stream=True)
        wait_for(lambda: metric(port, "pixart_queue_depth") == 3)
        code, body = generate(port, prompt="one too many")
        assert code == 429 and body["error"]["type"] == "rate_limit_error"
        leaving.close()  # the clients go away: their slots are free before the forward they waited for
        wait_for(lambda: metric(port, "pixart_queue_depth") == 2)
        streaming.close()
        wait_for(lambda: metric(port, "pixart_queue_depth") == 1)
        engine.gate.set()
        first.join(30), queued.join(30)
        assert sorted(code for code, _ in answers) == [200, 200]
        assert not {"leaving", "streaming"} & {prompt for batch in engine.batches for prompt in batch}
        assert generate(port, prompt="after")[0] == 200


def _send_and_leave_open(port, prompt, stream=False):
    """A socket that sent a generation request (and is not reading the answer)."""
    body = json.dumps({"prompt": prompt, "stream": stream}).encode()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return connection


def test_a_request_past_its_timeout_gets_504_and_leaves_the_queue():
    engines = []
    with serve(engines, timeout_s=0.5) as port:
        engines[0].gate.clear()
        code, body = generate(port, prompt="slow")
        assert code == 504 and body["error"]["type"] == "timeout"
        engines[0].gate.set()
        assert generate(port, prompt="fast")[0] == 200


def test_only_compatible_requests_share_a_forward():
    engines = []
    with serve(engines, loras={"style": 1.0}, batch_wait_ms=300, max_batch=4) as port:
        engine = engines[0]
        engine.gate.clear()
        bodies = [dict(prompt="a"), dict(prompt="b", seed=5, negative_prompt="x"), dict(prompt="c", n=2),
                  dict(prompt="d"), dict(prompt="e", num_inference_steps=4), dict(prompt="f", size="192x320"),
                  dict(prompt="g", lora_scales={"style": 0.5}), dict(prompt="h", guidance_scale=3.0),
                  dict(prompt="i", scheduler="ddim")]
        blocker = threading.Thread(target=generate, args=(port,), kwargs=dict(prompt="blocker"))
        blocker.start()
        wait_for(lambda: metric(port, "pixart_running_requests") == 1)
        threads = [threading.Thread(target=generate, args=(port,), kwargs=body) for body in bodies]
        for i, thread in enumerate(threads):  # queued in this order
            thread.start()
            wait_for(lambda: metric(port, "pixart_queue_depth") == i + 1)
        engine.gate.set()
        for thread in threads + [blocker]:
            thread.join(30)
        batches = sorted(sorted(batch) for batch in engine.batches[2:])  # after warm-up and the blocker
        # a, b, c fill 4 images; d waits for the next forward; e to i differ from them in one setting each
        assert batches == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g"], ["h"], ["i"]]
        assert metric(port, 'pixart_batch_requests_bucket{le="1"}') == 7  # the blocker, d to i (warm-up: not queued)


def test_the_api_key_guards_everything_but_the_page_and_health():
    with serve(api_key="s3cret") as port:
        assert request(port, "GET", "/health")[0] == 200
        for method, path in [("GET", "/v1/config"), ("GET", "/v1/models"), ("GET", "/metrics"),
                             ("POST", "/v1/images/generations"), ("GET", "/openapi.json")]:
            code, body = request(port, method, path, {"prompt": "a cat"})
            assert code == 401 and body["error"]["type"] == "authentication_error", path
            assert request(port, method, path, {"prompt": "a cat"}, {"Authorization": "Bearer wrong"})[0] == 401
        key = {"Authorization": "Bearer s3cret"}
        code, config = request(port, "GET", "/v1/config", headers=key)
        assert code == 200 and config["api_key_required"] is True
        assert generate(port, key, prompt="a cat")[0] == 200


def test_health_says_loading_until_the_model_is_warm():
    gate = threading.Event()

    def load(settings):
        gate.wait(30)
        return StubEngine(settings)

    with running(create_app(ServerSettings("stub"), load), ready=False) as port:
        assert request(port, "GET", "/health") == (503, {"status": "loading"})
        code, body = generate(port, prompt="a cat")
        assert code == 503 and "loading" in body["error"]["message"]
        gate.set()
        wait_for(lambda: request(port, "GET", "/health")[0] == 200)
        assert request(port, "GET", "/health")[1] == {"status": "ok"}
        code, config = request(port, "GET", "/v1/config")
        assert config["sizes"][0] == [256, 256] and [192, 320] in config["sizes"]
        assert config["limits"]["max_pixels"] == max(w * h for w, h in config["sizes"])
        code, models = request(port, "GET", "/v1/models")
        assert models["data"][0]["id"] == "stub" and models["data"][0]["owned_by"] == "pixart-jax"
        schema = request(port, "GET", "/openapi.json")[1]["components"]["schemas"]["GenerationBody"]["properties"]
        assert "max_steps" in schema["num_inference_steps"]["description"]
        assert schema["num_inference_steps"]["maximum"] == 50 and schema["n"]["maximum"] == 4
        assert schema["prompt"]["maxLength"] == 2000


def test_a_step_limit_below_the_model_s_default_caps_the_default():
    """--max-steps 5 on a model whose default is 20 steps: the server warms up and serves at 5 steps."""
    with serve(limits=Limits(max_steps=5)) as port:
        assert request(port, "GET", "/v1/config")[1]["defaults"]["num_inference_steps"] == 5
        code, answer = generate(port, prompt="a cat")
        assert code == 200 and answer["settings"]["num_inference_steps"] == 5, answer


def test_a_batch_is_cut_to_a_power_of_two_images_and_ordered_by_images():
    tickets = [Ticket(Job(images), None, None, 0.0) for images in (1, 2, 1, 1, 2, 3)]
    assert [t.job.images for t in compiled_batch(tickets[:5])] == [2, 1, 1]  # 1 + 2 + 1 = 4 (5, 7: not)
    assert compiled_batch([tickets[5], tickets[4]]) == [tickets[5]]  # 3 + 2 = 5: the first alone
    assert batch_sizes(16) == (1, 2, 4, 8, 16) and batch_sizes(6) == (1, 2, 4)


class Job:
    def __init__(self, images):
        self.images = images
