"""An OTLP/HTTP trace receiver that keeps nothing: it decodes each export, counts its spans and
answers 200. A stand-in for a collector on another machine, so that a bench on one machine can
tell the cost of exporting (in Loom's processes) from the cost of a trace server ingesting.

    python -m bench.otlp_sink --port 4318     # POST /v1/traces; GET /count -> {"spans": n}
"""
from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Sink(BaseHTTPRequestHandler):
    spans = 0
    lock = threading.Lock()  # one handler thread per connection

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        request = ExportTraceServiceRequest.FromString(body)
        with Sink.lock:
            Sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self._answer(ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        self._answer(json.dumps({"spans": Sink.spans}).encode(), "application/json")

    def _answer(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Sink).serve_forever()


if __name__ == "__main__":
    main()
