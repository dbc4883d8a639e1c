"""An OTLP/HTTP trace receiver that only counts: it keeps each export's bytes, answers 200, and
decodes them when asked for the count. A stand-in for a collector on another machine, so that a
bench on one machine can tell the cost of exporting (in Loom's processes) from the cost of a trace
server ingesting: while jobs run, it does no more than receive.

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


class Tally:
    """The exports received; their spans counted on demand."""

    def __init__(self):
        self.spans = 0
        self.pending: list[bytes] = []  # exports received, not yet counted
        self.lock = threading.Lock()  # one handler thread per connection

    def add(self, body: bytes) -> None:
        with self.lock:
            self.pending.append(body)

    def count(self) -> int:
        with self.lock:
            for body in self.pending:
                request = ExportTraceServiceRequest.FromString(body)
                self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            self.pending.clear()
            return self.spans


class SinkServer(ThreadingHTTPServer):
    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), Sink)
        self.tally = Tally()


class Sink(BaseHTTPRequestHandler):
    ANSWER = ExportTraceServiceResponse().SerializeToString()

    def do_POST(self):
        self.server.tally.add(self.rfile.read(int(self.headers.get("content-length", 0))))
        self._answer(Sink.ANSWER, "application/x-protobuf")

    def do_GET(self):
        self._answer(json.dumps({"spans": self.server.tally.count()}).encode(), "application/json")

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
    SinkServer(parser.parse_args().port).serve_forever()


if __name__ == "__main__":
    main()
