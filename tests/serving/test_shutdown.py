"""`pixart-jax serve` as a user starts it (a subprocess): SIGTERM stops accepting connections, finishes the requests
already in (the running one and the one queued behind it), then the process ends (by the signal, re-raised after
the drain as uvicorn does)."""
import http.client
import json
import signal
import subprocess
import threading

from pixart_jax.testing.server_client import free_port, request, wait_for
from tests.helpers.commands import SCRIPT, command_env


def test_sigterm_finishes_the_requests_in_and_exits(model_dir):
    port = free_port()
    process = subprocess.Popen([SCRIPT, "serve", "--model", model_dir, "--port", str(port), "--warmup"],
                               env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _health(port) == 200 or process.poll() is not None, timeout=240)
        assert process.poll() is None, process.stdout.read()
        running, answers = threading.Event(), {}
        first = threading.Thread(target=_stream, args=(port, running, answers))
        first.start()
        assert running.wait(120)  # its first step is done
        queued = threading.Thread(target=lambda: answers.update(queued=request(
            port, "POST", "/v1/images/generations", {"prompt": "a cat", "num_inference_steps": 2, "seed": 1})))
        queued.start()
        wait_for(lambda: b"pixart_queue_depth 1" in _metrics(port))
        process.send_signal(signal.SIGTERM)
        first.join(120), queued.join(120)
        assert process.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once it has drained
    finally:
        process.kill()
    assert answers["queued"][0] == 200 and len(answers["queued"][1]["data"]) == 1
    assert answers["stream"].count("event: progress") == 8 and "event: result" in answers["stream"]
    assert "Shutting down" in process.stdout.read()


def _health(port):
    try:
        return request(port, "GET", "/health", timeout=5)[0]
    except OSError:
        return None


def _metrics(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    return connection.getresponse().read()


def _stream(port, running, answers):
    """A streamed request of 8 steps: `running` is set at its first progress event; its whole text is kept."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"prompt": "a small red circle", "num_inference_steps": 8, "seed": 0, "size": "352x176", "stream": True}
    connection.request("POST", "/v1/images/generations", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    lines = []
    for line in response:
        lines.append(line.decode())
        if line.startswith(b"event: progress"):
            running.set()
    answers["stream"] = "".join(lines)
