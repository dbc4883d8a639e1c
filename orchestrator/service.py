"""JobService: accepts jobs, runs them in the background, keeps their records in the store.

The Serve deployment (api.py) and the CLI both drive this plain class; nothing accepted is
lost: a record is stored (queued) before the submit call returns, and every outcome,
failures included, is written back.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from orchestrator.records import JobRecord, JobRequest


class JobService:
    def __init__(self, runner, store):
        self.runner = runner
        self.store = store
        self.tasks: dict[str, asyncio.Task] = {}

    async def submit(self, request: JobRequest, emit: Callable[[str], None] | None = None) -> JobRecord:
        record = JobRecord.new(request)
        await self.store.put(record)
        self.tasks[record.id] = asyncio.create_task(self._run(record, emit))
        return record

    async def _run(self, record: JobRecord, emit) -> JobRecord:
        try:
            record.status = "running"
            await self.store.put(record)
            await self.runner.run(record, emit)
        except Exception as e:  # never lose a job: record what went wrong
            record.status, record.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            await self.store.put(record)
            self.tasks.pop(record.id, None)
        return record

    async def wait(self, job_id: str) -> JobRecord | None:
        task = self.tasks.get(job_id)
        if task is not None:
            return await asyncio.shield(task)
        return await self.store.get(job_id)

    async def run(self, request: JobRequest, emit=None) -> JobRecord:
        record = await self.submit(request, emit)
        return await self.wait(record.id)
