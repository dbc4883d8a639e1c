"""JobService: accepts jobs, runs them in the background, keeps their records in the store.

The Serve deployment (api.py) and the CLI both drive this plain class; nothing accepted is
lost: a record is stored (queued) before the submit call returns, and every outcome,
failures included, is written back. Status changes are compare-and-set ``transition`` calls,
so several controllers (ingress replicas) can share one store: only one of them takes a
queued job, and a finished record is never overwritten by a stale one. While a job runs,
its controller keeps a heartbeat on it in the store; ``recover`` uses that to tell a job whose
controller died from one that another live controller is still running.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.driver.records import JobRecord, JobRequest, JobStatus
from orchestrator.service.store import StoreUnavailable

log = logging.getLogger(__name__)

RESTARTED = "controller restarted while the job was running"
STOPPED = "controller stopped while the job was running"
_OUTCOME = ("started", "dag", "usage", "result", "notes", "error")  # written back with the status


@dataclass
class Recovery:
    """What ``JobService.recover`` did, by job id."""
    resumed: list[str] = field(default_factory=list)  # queued: run again by this controller
    failed: list[str] = field(default_factory=list)  # running, controller gone: marked failed
    live: list[str] = field(default_factory=list)  # running under a live heartbeat: left, watched


class JobService:
    def __init__(self, runner, store, heartbeat_s: float = 30.0):
        self.runner = runner
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.tasks: dict[str, asyncio.Task] = {}
        self._watchers: set[asyncio.Task] = set()

    async def submit(self, request: JobRequest, emit: Callable[[str], None] | None = None) -> JobRecord:
        """Stores the job (queued) and starts it; a prompt the model cannot take (RequestError)
        is refused before anything is stored. Tokenizing runs off the event loop."""
        request = self.runner.complete(request)
        await asyncio.to_thread(self.runner.prepare, request)
        record = JobRecord.new(request)
        await self.store.put(record)
        self._start(record, emit)
        return record

    def _start(self, record: JobRecord, emit) -> None:
        self.tasks[record.id] = asyncio.create_task(self._run(record, emit))

    async def _run(self, record: JobRecord, emit) -> JobRecord | None:
        try:
            claimed = await self._claim(record.id)
            if claimed is None:  # another controller took it, or it has ended already
                return await self.store.get(record.id)
            return await self._execute(claimed, emit)
        finally:
            self.tasks.pop(record.id, None)

    async def _claim(self, job_id: str) -> JobRecord | None:
        """queued -> running for this controller, or None. The claim is marked by its start time:
        one the store applied but whose answer was lost with the connection (then retried, and
        refused, as the job is running) finds the job running with that same time, and so ours."""
        started = time.time()
        claimed = await _retrying(lambda: self.store.transition(job_id, (JobStatus.QUEUED,), JobStatus.RUNNING, started=started))
        if claimed is None:
            current = await _retrying(lambda: self.store.get(job_id))
            if current is not None and current.status == JobStatus.RUNNING and current.started == started:
                return current
        return claimed

    async def _execute(self, record: JobRecord, emit) -> JobRecord | None:
        beat = asyncio.create_task(self._beat(record.id))
        try:
            await self.runner.run(record, emit)
        except Exception as e:  # noqa: BLE001 - never lose a job: record what went wrong
            record.status, record.error = JobStatus.FAILED, f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:  # shutting down: say so rather than leave it running
            record.status, record.error = JobStatus.FAILED, STOPPED
            await self._write_back(record)
            raise
        finally:
            beat.cancel()
        return await self._write_back(record)

    async def _write_back(self, record: JobRecord) -> JobRecord | None:
        """running -> the runner's final status ("done" if it left none); the stored record.
        The write is retried (backoff) while the store is unreachable, for FINAL_WRITE_S."""
        status = record.status if JobStatus(record.status).terminal else JobStatus.DONE
        outcome = {name: getattr(record, name) for name in _OUTCOME}
        stored = await _retrying(lambda: self.store.transition(record.id, (JobStatus.RUNNING,), status,
                                                               finished=record.finished or time.time(), **outcome))
        with contextlib.suppress(Exception):  # the heartbeat lapses by itself anyway
            await self.store.heartbeat(record.id, 0)
        return stored or await self.store.get(record.id)

    async def _beat(self, job_id: str) -> None:
        while True:
            try:
                await self.store.heartbeat(job_id, self.heartbeat_s)
            except Exception as e:  # noqa: BLE001 - the store is down: keep trying, the job goes on
                log.warning("heartbeat for %s failed: %s", job_id, e)
            await asyncio.sleep(self.heartbeat_s / 3)

    async def recover(self) -> Recovery:
        """Takes over what a dead controller left in the store; call once at startup.

        Queued jobs are run again here (the queued->running compare-and-set lets only one
        controller take each, however many recover at once). Running jobs whose controller is
        gone (no live heartbeat, started over ``heartbeat_s`` ago) are marked failed with RESTARTED, not
        re-queued: they may already have streamed output and spent budget, and the client,
        who saw the failure, can resubmit. Running jobs under a live heartbeat are left to their
        controller and watched: failed the same way if the heartbeat lapses. Nothing is deleted.
        """
        out = Recovery()
        running = await self.store.list_by_status(JobStatus.RUNNING, None)
        out.failed, out.live = await self._sweep(running)
        out.resumed = await self._resume_queued()
        if out.live:
            watcher = asyncio.create_task(self._watch(out.live))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        return out

    async def _sweep(self, records: list[JobRecord]) -> tuple[list[str], list[str]]:
        """Fails the running records whose controller is gone; returns (failed, live) ids."""
        failed, live = [], []
        for r in records:
            if r.status != JobStatus.RUNNING:
                continue
            if await self._alive(r):
                live.append(r.id)
            elif await self.store.transition(r.id, (JobStatus.RUNNING,), JobStatus.FAILED, error=RESTARTED,
                                             finished=time.time()):
                failed.append(r.id)
        return failed, live

    async def _alive(self, record: JobRecord) -> bool:
        return (record.id in self.tasks or record.started > time.time() - self.heartbeat_s
                or await self.store.has_heartbeat(record.id))

    async def sweep_forever(self) -> None:
        """Every heartbeat_s, fails the running jobs whose controller is gone (its heartbeat lapsed): a
        replica that died, or a final write that never landed; and runs the queued jobs that no
        controller took within heartbeat_s (their claim never reached the store). Runs for the
        service's life."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                failed, _ = await self._sweep(await self.store.list_by_status(JobStatus.RUNNING, None))
                resumed = await self._resume_queued(older_than_s=self.heartbeat_s)
            except StoreUnavailable as e:
                log.warning("sweep skipped: %s", e)
                continue
            if failed:
                log.warning("swept %d running jobs whose controller is gone: %s", len(failed), failed)
            if resumed:
                log.warning("took %d queued jobs no controller had started: %s", len(resumed), resumed)

    async def _resume_queued(self, older_than_s: float | None = None) -> list[str]:
        """Starts the queued jobs this controller is not running (only those created over
        ``older_than_s`` ago, if given), oldest first; the queued->running compare-and-set lets
        one controller take each. Returns their ids."""
        cutoff = None if older_than_s is None else time.time() - older_than_s
        started = []
        for record in reversed(await self.store.list_by_status(JobStatus.QUEUED, None)):  # oldest first
            if record.id not in self.tasks and (cutoff is None or record.created < cutoff):
                self._start(record, None)
                started.append(record.id)
        return started

    async def _watch(self, ids: list[str]) -> None:
        while ids:
            await asyncio.sleep(self.heartbeat_s)
            records = [r for r in [await self.store.get(i) for i in ids] if r is not None]
            _, ids = await self._sweep(records)

    async def shutdown(self, grace_s: float = 20.0) -> None:
        """Cancels the jobs this controller runs: each is written back failed with STOPPED (and its
        engine requests aborted) within ``grace_s``; what is left then, the sweeper of another
        controller settles once its heartbeat lapses. The budget calls their ends sent (each closes
        its job's account, freeing its thread slots) are waited for too."""
        tasks = list(self.tasks.values()) + list(self._watchers)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.runner.drain(), grace_s)

    async def wait(self, job_id: str) -> JobRecord | None:
        task = self.tasks.get(job_id)
        if task is not None:
            return await asyncio.shield(task)
        return await self.store.get(job_id)

    async def run(self, request: JobRequest, emit=None) -> JobRecord:
        record = await self.submit(request, emit)
        return await self.wait(record.id)


FINAL_WRITE_S = 300.0


async def _retrying(write, limit_s: float = FINAL_WRITE_S):
    """``await write()``, again with backoff (0.1 s doubling to 5 s) while the store is unreachable."""
    deadline, pause = time.monotonic() + limit_s, 0.1
    while True:
        try:
            return await write()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("job store unreachable; retrying the write in %.1f s", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
