"""Loom's metrics through ``ray.util.metrics``: exported on each node's Ray metrics port
(Prometheus format, names prefixed ``ray_``), next to Ray's and vLLM's own.

Created lazily in the process that records them (driver or Serve replica), so importing
this module never needs Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

TIME_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
WIDTH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]


@dataclass(frozen=True)
class KVPullOutcome:
    """A request's pull of its prompt's leading KV from a peer, as the metrics count it."""

    ok: bool
    tokens: int
    bytes: int


class LoomMetrics:
    @cached_property
    def jobs(self):
        from ray.util.metrics import Counter

        return Counter("loom_jobs_total", "Jobs finished, by final status", tag_keys=("status",))

    @cached_property
    def threads(self):
        from ray.util.metrics import Counter

        return Counter("loom_threads_started_total", "Threads started by forks")

    @cached_property
    def fork_width(self):
        from ray.util.metrics import Histogram

        return Histogram("loom_fork_width", "Threads run at once per admitted fork", boundaries=WIDTH_BUCKETS)

    @cached_property
    def threads_ended(self):
        from ray.util.metrics import Counter

        # threads in flight = started - ended, summed over every driver (counters add up; gauges would not)
        return Counter("loom_threads_ended_total", "Threads ended (done, cancelled or failed)")

    @cached_property
    def forks(self):
        from ray.util.metrics import Counter

        return Counter("loom_forks_total", "Forks by outcome: admitted (every thread at once), narrowed "
                       "(fewer at once, in waves), refused (decoded sequentially)", tag_keys=("outcome",))

    @cached_property
    def admission_time(self):
        from ray.util.metrics import Histogram

        return Histogram("loom_fork_admission_seconds", "Seconds to admit a fork: a round trip to the budget "
                         "coordinator (replicated budget)", boundaries=TIME_BUCKETS)

    @cached_property
    def kv_pulls(self):
        from ray.util.metrics import Counter

        return Counter("loom_kv_pulls_total", "Prefix KV pulls from a peer worker, by outcome (pulled, failed)",
                       tag_keys=("outcome",))

    @cached_property
    def kv_pull_bytes(self):
        from ray.util.metrics import Counter

        return Counter("loom_kv_pull_bytes_total", "Bytes of prefix KV pulled from peer workers")

    @cached_property
    def recomputed(self):
        from ray.util.metrics import Counter

        return Counter("loom_recomputed_prefix_tokens_total", "Prompt tokens computed again: neither in the "
                       "worker's prefix cache nor pulled from a peer")

    @cached_property
    def tokens(self):
        from ray.util.metrics import Counter

        return Counter("loom_tokens_total", "Tokens by kind (prompt, generated, cached)", tag_keys=("kind",))

    @cached_property
    def rejections(self):
        from ray.util.metrics import Counter

        return Counter("loom_budget_rejections_total", "Forks refused or jobs stopped by the budget",
                       tag_keys=("reason",))

    @cached_property
    def queue_time(self):
        from ray.util.metrics import Histogram

        return Histogram("loom_queue_seconds", "Seconds from submit to start", boundaries=TIME_BUCKETS)

    @cached_property
    def ttft(self):
        from ray.util.metrics import Histogram

        return Histogram("loom_time_to_first_token_seconds", "Seconds from an engine request to its first token",
                         boundaries=TIME_BUCKETS)

    def request_done(self, prompt: int, generated: int, cached: int, ttft: float | None,
                     pull: KVPullOutcome | None = None) -> None:
        # a Counter refuses 0: a request that failed before its first token counts nothing
        pulled = pull.tokens if pull is not None and pull.ok else 0
        if prompt - cached - pulled > 0:
            self.recomputed.inc(prompt - cached - pulled)
        if pull is not None:
            self.kv_pulls.inc(tags={"outcome": "pulled" if pull.ok else "failed"})
            if pull.bytes:
                self.kv_pull_bytes.inc(pull.bytes)
        if prompt:
            self.tokens.inc(prompt, tags={"kind": "prompt"})
        if generated:
            self.tokens.inc(generated, tags={"kind": "generated"})
        if cached:
            self.tokens.inc(cached, tags={"kind": "cached"})
        if ttft is not None and ttft >= 0:
            self.ttft.observe(ttft)

    def forked(self, width: int, asked: int, admission_s: float) -> None:
        self.admission_time.observe(max(0.0, admission_s))
        outcome = "refused" if width == 0 else "admitted" if width >= asked else "narrowed"
        self.forks.inc(tags={"outcome": outcome})
        if width:
            self.fork_width.observe(width)

    def threads_started(self, k: int) -> None:
        self.threads.inc(k)

    def thread_ended(self) -> None:
        self.threads_ended.inc()

    def job_done(self, status: str, queue_s: float) -> None:
        self.jobs.inc(tags={"status": status})
        self.queue_time.observe(max(0.0, queue_s))

    def rejected(self, reason: str) -> None:
        self.rejections.inc(tags={"reason": reason.split(" ")[0] if reason else "unknown"})


class NullMetrics:
    """Records nothing: for drivers run outside Ray (unit tests of the control flow)."""

    def request_done(self, prompt: int, generated: int, cached: int, ttft: float | None,
                     pull: KVPullOutcome | None = None) -> None: ...
    def forked(self, width: int, asked: int, admission_s: float) -> None: ...
    def threads_started(self, k: int) -> None: ...
    def thread_ended(self) -> None: ...
    def job_done(self, status: str, queue_s: float) -> None: ...
    def rejected(self, reason: str) -> None: ...
