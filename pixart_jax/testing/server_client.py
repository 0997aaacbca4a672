"""A small HTTP client of a running `pixart-jax serve` on 127.0.0.1 (the standard library's: what any client sends),
shared by the serving tests and bench/serve.py."""
import http.client
import json
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
