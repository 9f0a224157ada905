"""The OTLP-over-HTTP exporter, with the real SDK, to a collector stand-in on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from keel.core.events import NodeCompleted
from keel.runtime.tracing import RunTracer
from tests.ledger import model_called


def test_spans_reach_an_otlp_http_endpoint() -> None:
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        tracer = RunTracer("otlp", endpoint)
        events = tracer.annotate(
            "run-otlp",
            [
                model_called(seq=2, step=0, worker="keel-planner-0"),
                NodeCompleted(
                    seq=3, node="plan", step=0, attempt=1, updates={}, next=None, duration_s=0.02
                ),
            ],
        )
        assert all(e.span_id for e in events)
        assert tracer.flush()
    finally:
        server.shutdown()
    assert received and all(path == "/v1/traces" for path, _ in received)
    payload = b"".join(body for _, body in received)
    assert b"node plan" in payload and b"chat keel-rules/planner" in payload
    assert b"gen_ai.request.model" in payload
