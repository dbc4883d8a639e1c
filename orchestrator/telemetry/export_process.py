"""The span exporting process: ``python -m orchestrator.telemetry.export_process SERVICE_NAME``.

Reads batches of ``RelayedSpan`` (``relay.py``) from stdin, rebuilds each as the SDK's
``ReadableSpan`` with this service's resource (``service.name`` and ``OTEL_RESOURCE_ATTRIBUTES``)
and hands it to a ``BatchSpanProcessor`` over the exporter the ``OTEL_*`` variables name (its
batch size, delay and queue from ``OTEL_BSP_*``). At the end of stdin it exports what it holds
and exits.
"""
from __future__ import annotations

import sys

import msgpack
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from orchestrator.telemetry.relay import HEADER, RelayedSpan
from orchestrator.telemetry.tracing import TRACER, exporter_from_env


def rebuild(s: RelayedSpan, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = int.from_bytes(s.trace_id, "big")
    flags = TraceFlags(s.trace_flags)
    parent = SpanContext(trace_id, s.parent_id, s.parent_remote, flags) if s.parent_id else None
    return ReadableSpan(name=s.name, context=SpanContext(trace_id, s.span_id, False, flags), parent=parent,
                        resource=resource, attributes=s.attributes, kind=SpanKind(s.kind),
                        events=[Event(name, attrs, ts) for name, ts, attrs in s.events],
                        status=Status(StatusCode(s.status_code), s.status_description or None),
                        start_time=s.start_ns, end_time=s.end_ns, instrumentation_scope=scope)


def batches(stream):
    """Each batch's spans until the end of ``stream``."""
    while header := stream.read(HEADER.size):
        if len(header) < HEADER.size:
            return
        (size,) = HEADER.unpack(header)
        payload = stream.read(size)
        if len(payload) < size:
            return
        yield [RelayedSpan.from_fields(fields) for fields in msgpack.unpackb(payload, raw=False)]


def main(service_name: str) -> int:
    exporter = exporter_from_env()
    if exporter is None:
        return 0
    processor = BatchSpanProcessor(exporter)
    resource = Resource.create({"service.name": service_name})
    scope = InstrumentationScope(TRACER)
    try:
        for batch in batches(sys.stdin.buffer):
            for span in batch:
                processor.on_end(rebuild(span, resource, scope))
    finally:
        processor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
