"""Spans handed to an exporting process: the serving process only packs each finished span.

Encoding spans as OTLP costs about 31 us per span in Python (measured: ``docs/experiments.md``,
"Trace export under load"), ten times what packing its fields with msgpack costs. In the SDK's
``BatchSpanProcessor`` that encoding runs on a thread of the process that made the spans, so a
Serve replica or a worker actor whose event loop is busy pays it on its own GIL. Here a
``RelaySpanProcessor`` queues each ended span's fields (a ``RelayedSpan``), a thread writes them
in batches, length-prefixed msgpack, to the stdin of a child process
(``python -m orchestrator.telemetry.export_process``) that rebuilds the spans and exports them
with the exporter the ``OTEL_*`` variables name, batched by its own ``BatchSpanProcessor``.

Invariants: a job never waits on export (``on_end`` only appends to a bounded queue; a full queue
drops the span and counts it); the child exits when its stdin closes, after exporting what it
holds, so a serving process that dies leaves no exporter behind and loses no span it had
written; a child that died is started again on the next batch.
"""
from __future__ import annotations

import logging
import struct
import subprocess
import sys
import threading
from collections import deque
from typing import NamedTuple

import msgpack
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

log = logging.getLogger(__name__)
HEADER = struct.Struct("<I")  # each batch's length, then its msgpack bytes
WRITE_EVERY_S = 0.2  # the longest a finished span waits in this process
WRITE_AT = 256  # spans queued that wake the writer before that


class RelayedSpan(NamedTuple):
    """A finished span's fields, as they cross the pipe (a msgpack array; a NamedTuple, not a
    dataclass: ``astuple``'s deep copy cost more than the rest of the relay)."""

    name: str
    trace_id: bytes  # 16 bytes, big-endian
    span_id: int
    trace_flags: int
    parent_id: int  # 0: a root span
    parent_remote: bool
    kind: int  # opentelemetry.trace.SpanKind's value
    start_ns: int
    end_ns: int
    attributes: dict
    status_code: int  # opentelemetry.trace.StatusCode's value
    status_description: str
    events: list  # [name, timestamp_ns, attributes] each

    @classmethod
    def of(cls, span: ReadableSpan) -> RelayedSpan:
        ctx, parent = span.context, span.parent
        return cls(span.name, ctx.trace_id.to_bytes(16, "big"), ctx.span_id, int(ctx.trace_flags),
                   parent.span_id if parent else 0, bool(parent and parent.is_remote), span.kind.value,
                   span.start_time, span.end_time, dict(span.attributes), span.status.status_code.value,
                   span.status.description or "",
                   [[e.name, e.timestamp, dict(e.attributes or {})] for e in span.events])

    @classmethod
    def from_fields(cls, fields: list) -> RelayedSpan:
        return cls(*fields)


def pack(spans: list[RelayedSpan]) -> bytes:
    payload = msgpack.packb(spans, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


class RelaySpanProcessor(SpanProcessor):
    """Queues finished spans and writes them to the exporting child process (see the module)."""

    def __init__(self, service_name: str, max_queue: int = 2048):
        self.service_name = service_name
        self.max_queue = max_queue
        self.dropped = 0
        self._queue: deque[RelayedSpan] = deque()
        self._wake = threading.Event()
        self._writing = threading.Lock()  # the writer thread, and force_flush's caller
        self._closing = False
        self._child: subprocess.Popen | None = None
        self._writer = threading.Thread(target=self._write_loop, name="loom-span-relay", daemon=True)
        self._writer.start()

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(RelayedSpan.of(span))
        if len(self._queue) >= WRITE_AT:
            self._wake.set()

    def _write_loop(self) -> None:
        told = 0
        while not self._closing:
            self._wake.wait(WRITE_EVERY_S)
            self._wake.clear()
            self._write_queued()
            if self.dropped > told:
                log.warning("span relay: %d spans dropped so far (queue full or export process lost)", self.dropped)
                told = self.dropped
        self._write_queued()

    def _write_queued(self) -> None:
        with self._writing:
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if batch:
                self._write(batch)

    def _write(self, batch: list[RelayedSpan]) -> None:
        try:
            child = self._running_child()
            child.stdin.write(pack(batch))
            child.stdin.flush()
        except (OSError, ValueError) as e:  # the child died: this batch is lost, the next starts another
            self.dropped += len(batch)
            log.warning("span export process: %s", e)
            self._child = None

    def _running_child(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen([sys.executable, "-m", "orchestrator.telemetry.export_process",
                                            self.service_name], stdin=subprocess.PIPE)
        return self._child

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Writes what is queued to the child now (which exports it on its own schedule)."""
        self._write_queued()
        return True

    def shutdown(self) -> None:
        """Writes the rest, closes the child's stdin and waits for it to export and exit."""
        self._closing = True
        self._wake.set()
        self._writer.join(timeout=10)
        if self._child is not None:
            try:
                self._child.stdin.close()
                self._child.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._child.kill()
