"""A real uvicorn server on 127.0.0.1 (a free port) in a thread of the test process, and the tests' calls of its API
(on pixart_jax.testing.server_client)."""
import base64
import contextlib
import io
import json
import re
import threading
import time

import numpy as np
import uvicorn
from PIL import Image

from pixart_jax.testing.server_client import free_port, request


@contextlib.contextmanager
def running(app, ready=True, timeout=300):
    """The server of `app` on a free port: yields (host, port); with `ready`, once /health says ok."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started or (ready and request((port), "GET", "/health")[0] != 200):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(60)


def generate(port, headers=None, **body):
    return request(port, "POST", "/v1/images/generations", body, headers)


def stream(port, **body) -> list[tuple[str, dict]]:
    """The (event, data) server-sent events of a streamed generation."""
    status, text = request(port, "POST", "/v1/images/generations", dict(body, stream=True))
    assert status == 200, text
    return [(event, json.loads(data)) for event, data in re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)]


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), np.int16)


def png_b64(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
