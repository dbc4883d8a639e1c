"""A real forked job's spans, read with an in-memory exporter in the driver."""
from __future__ import annotations

import pytest
import ray
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.driver.records import JobRequest
from orchestrator.telemetry import tracing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    tracing.setup(exporter)
    return exporter


async def test_forked_job_is_one_trace_with_the_thread_tree(service, spans, loom):
    spans.clear()
    rec = await service.run(JobRequest(prompt="Q: 12*3+45*6\n"))
    assert rec.status == "done"
    got = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in got}
    (job,) = [s for s in got if s.name == "loom.job"]
    assert {s.context.trace_id for s in got} == {job.context.trace_id}
    assert job.attributes["loom.job.id"] == rec.id and job.attributes["gen_ai.request.model"] == "loom-arith"
    (block,) = [s for s in got if s.name == "loom.block"]
    assert by_id[block.parent.span_id] is job and block.attributes["loom.block.threads"] == 2
    threads = sorted((s for s in got if s.name == "loom.thread"), key=lambda s: s.attributes["loom.thread.index"])
    assert [t.attributes["loom.thread.index"] for t in threads] == ["1", "2"]
    assert all(by_id[t.parent.span_id] is block for t in threads)
    requests = [s for s in got if s.name == "chat loom-arith"]
    for t in threads:
        (req,) = [r for r in requests if r.parent.span_id == t.context.span_id]
        assert req.attributes["gen_ai.usage.output_tokens"] > 0
        assert req.attributes["gen_ai.usage.input_tokens"] > req.attributes["loom.prefix.cached_tokens"]
        assert req.attributes["loom.prefix.source"] in ("local", "pulled")  # the context's KV reused, either way
        assert req.attributes["loom.worker"] in loom.pool.handles
    segments = [s for s in got if s.name == "loom.segment"]
    assert len(segments) == 2 and all(by_id[s.parent.span_id] is job for s in segments)
    assert "loom.output.text" not in requests[0].attributes  # content only when opted in


async def test_worker_receives_the_trace_context(service, spans, loom):
    spans.clear()
    rec = await service.run(JobRequest(prompt="Q: 12*3+45*6\n"))
    (job,) = [s for s in spans.get_finished_spans() if s.name == "loom.job"]
    trace_hex = format(job.context.trace_id, "032x")
    log = [r for w in loom.pool.handles.values() for r in ray.get(w.request_log.remote())
           if r["request_id"].startswith(rec.id)]
    assert log and all(trace_hex in r["traceparent"] for r in log)
