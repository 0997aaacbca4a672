"""A real uvicorn server on 127.0.0.1 (a free port) in a thread of the test process, and a small HTTP client of its
API (the standard library's: what any client sends)."""
import base64
import contextlib
import http.client
import io
import json
import re
import socket
import threading
import time

import numpy as np
import uvicorn
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def request(port, method, path, body=None, headers=None, timeout=300):
    """(status, JSON or text) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        connection.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    kind = response.getheader("content-type", "")
    return response.status, json.loads(text) if kind.startswith("application/json") else text


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


def metric(port, name) -> float:
    """The value of one Prometheus sample (`name` with its labels, as the text writes it)."""
    _, text = request(port, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
