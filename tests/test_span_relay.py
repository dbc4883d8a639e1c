"""Spans exported from a child process (orchestrator/telemetry/relay.py, export_process.py): what
a serving process hands over comes out of the child as the same span, over real OTLP/HTTP into a
real receiver (bench/otlp_sink.py); the child dies and comes back; the parent dies and the
child still exports what it had and exits."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import StatusCode
from ports import free_port

from bench.otlp_sink import SinkServer
from orchestrator.telemetry.export_process import batches, rebuild
from orchestrator.telemetry.relay import RelayedSpan, RelaySpanProcessor, pack

ROOT = Path(__file__).resolve().parent.parent


def make_job(tracer, label: str) -> None:
    """A root, a child with attributes of each kind, and a failed grandchild (an exception event)."""
    chat = {"gen_ai.usage.input_tokens": 12, "loom.kv.ms": 1.5, "loom.ok": True, "loom.tags": ("a", "b")}
    with (tracer.start_as_current_span("loom.job", attributes={"loom.job.id": label}),
          tracer.start_as_current_span("chat m", attributes=chat),
          pytest.raises(ValueError), tracer.start_as_current_span("loom.thread")):
        raise ValueError("thread failed")


def relay_of(service: str = "relay-test") -> tuple[TracerProvider, RelaySpanProcessor]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    processor = RelaySpanProcessor(service)
    provider.add_span_processor(processor)
    return provider, processor


def attributes(span) -> dict:
    """An OTLP span's string attributes."""
    return {kv.key: kv.value.string_value for kv in span.attributes}


def export_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "orchestrator.telemetry.export_process" in " ".join(p.cmdline())]


@pytest.fixture
def sink(monkeypatch):
    server = SinkServer(free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=relay-test")
    yield server.tally
    server.shutdown()


def test_a_span_crosses_the_pipe_unchanged():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "x"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    make_job(provider.get_tracer("loom"), "j1")
    made = memory.get_finished_spans()
    (crossed,) = batches(io.BytesIO(pack([RelayedSpan.of(s) for s in made])))
    rebuilt = [rebuild(s, provider.resource, InstrumentationScope("loom")) for s in crossed]
    for a, b in zip(made, rebuilt, strict=True):
        assert (a.name, a.context, a.parent, a.kind, a.start_time, a.end_time) == \
               (b.name, b.context, b.parent, b.kind, b.start_time, b.end_time)
        assert dict(a.attributes) == {k: tuple(v) if isinstance(v, list) else v for k, v in b.attributes.items()}
        assert (a.status.status_code, a.status.description) == (b.status.status_code, b.status.description)
        assert [(e.name, e.timestamp, dict(e.attributes)) for e in a.events] == \
               [(e.name, e.timestamp, dict(e.attributes)) for e in b.events]
    assert rebuilt[0].status.status_code is StatusCode.ERROR and rebuilt[0].events[0].name == "exception"


def test_every_span_reaches_the_receiver_with_its_tree_and_resource(sink):
    provider, processor = relay_of()
    tracer = provider.get_tracer("loom")
    for i in range(40):
        make_job(tracer, f"j{i}")
    provider.shutdown()  # writes the rest; the child exports it and exits
    got = sink.received()
    assert len(got) == 120 and processor.dropped == 0
    resource, _ = got[0]
    assert resource["service.name"] == "relay-test" and resource["deployment.environment"] == "relay-test"
    ids = {span.span_id for _, span in got}
    roots = [span for _, span in got if span.name == "loom.job"]
    assert len(roots) == 40 and all(not span.parent_span_id for span in roots)
    assert all(span.parent_span_id in ids for _, span in got if span.name != "loom.job")
    assert not export_children()


def test_a_dead_export_process_is_started_again(sink):
    provider, processor = relay_of()
    tracer = provider.get_tracer("loom")
    make_job(tracer, "before")
    processor.force_flush()
    (child,) = export_children()
    child.kill()
    child.wait(10)
    for i in range(5):
        make_job(tracer, f"after{i}")
    provider.shutdown()
    after = [span for _, span in sink.received() if span.name == "loom.job" and
             attributes(span)["loom.job.id"].startswith("after")]
    assert len(after) == 5 and processor.dropped == 0


def test_the_export_process_outlives_its_parent_only_to_export(sink):
    """A serving process killed (no shutdown): its export process still sends what it was handed,
    then exits on the end of its stdin."""
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from test_span_relay import make_job, relay_of
        provider, processor = relay_of("killed")
        for i in range(10):
            make_job(provider.get_tracer("loom"), f"k{i}")
        processor.force_flush()
        print(os.getpid(), flush=True)
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT / "tests")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)
    assert proc.returncode == 9, proc.stderr
    orphans = [p for p in psutil.process_iter(["cmdline"])
               if "orchestrator.telemetry.export_process" in " ".join(p.info["cmdline"] or ())
               and "killed" in (p.info["cmdline"] or ())]
    psutil.wait_procs(orphans, timeout=60)
    assert sorted(attributes(span)["loom.job.id"] for _, span in sink.received() if span.name == "loom.job") == \
        sorted(f"k{i}" for i in range(10))
