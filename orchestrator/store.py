"""Where job records live. ``JobStore`` is the protocol; the in-process store is the embedded
default (records are msgpack-encoded even here, so every store sees the same bytes)."""
from __future__ import annotations

import asyncio
from typing import Protocol

from orchestrator.records import JobRecord


class JobStore(Protocol):
    async def put(self, record: JobRecord) -> None: ...
    async def get(self, job_id: str) -> JobRecord | None: ...
    async def list(self, limit: int = 100) -> list[JobRecord]: ...


class InProcessJobStore:
    def __init__(self):
        self._data: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def put(self, record: JobRecord) -> None:
        async with self._lock:
            self._data[record.id] = record.encode()

    async def get(self, job_id: str) -> JobRecord | None:
        data = self._data.get(job_id)
        return JobRecord.decode(data) if data is not None else None

    async def list(self, limit: int = 100) -> list[JobRecord]:
        records = [JobRecord.decode(d) for d in self._data.values()]
        return sorted(records, key=lambda r: r.created, reverse=True)[:limit]
