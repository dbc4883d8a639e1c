"""OpenTelemetry for Loom: one trace per job, spans job > segment | block > thread > engine request.

Context crosses every Ray and Serve hop explicitly as a W3C ``traceparent`` carrier (a
plain dict in the request dataclasses), not through Ray's tracing hook. Attributes follow
the OpenTelemetry GenAI semantic conventions (``gen_ai.*``; engine requests are CLIENT spans
named ``chat {model}``) plus Loom's own ``loom.*``, and each span says its OpenInference kind
(``openinference.span.kind``: CHAIN for job, segment, block and thread, LLM for an engine request)
so that trace servers built on it (Arize Phoenix) draw the tree; no prompt or output text is
recorded. Export is chosen by the standard variables:
OTEL_TRACES_EXPORTER=otlp (OTEL_EXPORTER_OTLP_ENDPOINT, ...) | console | none (default).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from enum import StrEnum
from functools import lru_cache

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER = "loom"
_PROPAGATOR = TraceContextTextMapPropagator()


def setup(exporter=None, service_name: str | None = None) -> TracerProvider | None:
    """Install a tracer provider for this process; returns it (None when tracing is off)."""
    if exporter is None:
        exporter = _exporter_from_env()
        if exporter is None:
            return None
        processor = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(exporter)
    name = service_name or os.environ.get("OTEL_SERVICE_NAME", "loom")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def _exporter_from_env():
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip().lower()
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    return None


def tracer() -> trace.Tracer:
    """Loom's tracer from the installed provider (made once per provider: the SDK's get_tracer
    builds a new one on every call, which showed in a profile of the ingress's event loop)."""
    return _tracer_of(trace.get_tracer_provider())


@lru_cache(maxsize=4)
def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER)


def inject() -> dict:
    """The current span's context as a W3C carrier ({"traceparent": ...})."""
    carrier: dict = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def extract(carrier: dict | None):
    return _PROPAGATOR.extract(carrier or {})


class Kind(StrEnum):
    """OpenInference's span kinds that Loom's spans are."""

    CHAIN = "CHAIN"  # a job and its parts
    LLM = "LLM"  # one request to a model


@contextmanager
def span(name: str, kind: Kind = Kind.CHAIN, **attrs):
    """A span, child of the current one; ``a__b=v`` sets attribute ``a.b``. An LLM span is an
    OpenTelemetry CLIENT span (a call to the engine)."""
    otel_kind = trace.SpanKind.CLIENT if kind is Kind.LLM else trace.SpanKind.INTERNAL
    with tracer().start_as_current_span(name, kind=otel_kind,
                                        attributes=_named(openinference__span__kind=kind.value, **attrs)) as s:
        yield s


def server_span(name: str, carrier: dict | None, **attrs):
    """A started (not current) SERVER span, child of the caller's context in ``carrier``: the
    side of a call that receives it (a worker's engine request). End it with ``.end()``."""
    return tracer().start_span(name, context=extract(carrier), kind=trace.SpanKind.SERVER,
                               attributes=_named(openinference__span__kind=Kind.CHAIN.value, **attrs))


def set_attrs(s, **attrs) -> None:
    """Sets ``a__b=v`` as attribute ``a.b`` (None values skipped), all at once; nothing to do on
    a span that records nothing (tracing off)."""
    if s.is_recording():
        s.set_attributes(_named(**attrs))


def _named(**attrs) -> dict:
    return {key.replace("__", "."): value for key, value in attrs.items() if value is not None}


def attach(carrier: dict | None):
    """Make ``carrier`` the current context; returns a token for ``detach``."""
    return otel_context.attach(extract(carrier))


def detach(token) -> None:
    otel_context.detach(token)
