"""Where job records live. ``JobStore`` is the protocol; the in-process store is the embedded
default (records are msgpack-encoded even here, so every store sees the same bytes) and
``RedisJobStore`` is the shared one that several ingress replicas use at once.

Every write is a compare-and-set on the stored record: ``transition`` moves a job only from
the statuses it names, and ``put`` never turns a finished job back into a live one.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import fields as dc_fields
from dataclasses import replace
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from orchestrator.records import SCHEMA_VERSION, STATUSES, JobRecord

TERMINAL = ("done", "failed", "cancelled")
_SETTABLE = {f.name for f in dc_fields(JobRecord)} - {"id", "status", "version"}  # by ``transition``


class JobStore(Protocol):
    async def put(self, record: JobRecord) -> None: ...
    async def get(self, job_id: str) -> JobRecord | None: ...
    async def list(self, limit: int = 100) -> list[JobRecord]: ...
    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]: ...
    async def transition(self, job_id: str, from_statuses: Iterable[str], to_status: str,
                         **fields) -> JobRecord | None: ...
    async def lease(self, job_id: str, ttl_s: float) -> None: ...
    async def leased(self, job_id: str) -> bool: ...


def _check(record: JobRecord) -> JobRecord:
    if record.version != SCHEMA_VERSION:
        raise ValueError(f"job record schema {record.version} is not {SCHEMA_VERSION}")
    if record.status not in STATUSES:
        raise ValueError(f"unknown job status {record.status!r}")
    return record


def _put_change(record: JobRecord) -> Callable[[JobRecord | None], JobRecord | None]:
    """The new record for ``put``, or None where it would revive a finished job."""
    _check(record)

    def change(old: JobRecord | None) -> JobRecord | None:
        if old is not None and old.status in TERMINAL and record.status not in TERMINAL:
            return None
        return record
    return change


def _transition_change(from_statuses, to_status: str, fields: dict):
    """The new record for ``transition``, or None where the current status is not allowed."""
    allowed = (from_statuses,) if isinstance(from_statuses, str) else tuple(from_statuses)
    bad = set(fields) - _SETTABLE
    if to_status not in STATUSES or bad:
        raise ValueError(f"bad transition to {to_status!r} setting {sorted(bad)}")

    def change(old: JobRecord | None) -> JobRecord | None:
        if old is None or old.status not in allowed:
            return None
        return replace(old, status=to_status, **fields)
    return change


class _CasStore:
    """put/transition in terms of one primitive: ``_cas(job_id, change)``, an atomic
    read-modify-write where ``change(current)`` returns the record to store or None."""

    async def _cas(self, job_id: str, change) -> JobRecord | None:
        raise NotImplementedError

    async def put(self, record: JobRecord) -> None:
        await self._cas(record.id, _put_change(record))

    async def transition(self, job_id: str, from_statuses: Iterable[str], to_status: str,
                         **fields) -> JobRecord | None:
        """Set ``to_status`` (and ``fields``) only if the job's status is in ``from_statuses``;
        returns the stored record, or None (unknown job, or another status)."""
        return await self._cas(job_id, _transition_change(from_statuses, to_status, fields))


class InProcessJobStore(_CasStore):
    def __init__(self):
        self._data: dict[str, bytes] = {}
        self._leases: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def _cas(self, job_id: str, change) -> JobRecord | None:
        async with self._lock:
            data = self._data.get(job_id)
            new = change(JobRecord.decode(data) if data is not None else None)
            if new is not None:
                self._data[job_id] = new.encode()
            return new

    async def get(self, job_id: str) -> JobRecord | None:
        data = self._data.get(job_id)
        return JobRecord.decode(data) if data is not None else None

    async def list(self, limit: int | None = 100) -> list[JobRecord]:
        records = [JobRecord.decode(d) for d in self._data.values()]
        return sorted(records, key=lambda r: r.created, reverse=True)[:limit]

    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]:
        return [r for r in await self.list(None) if r.status == status][:limit]

    async def lease(self, job_id: str, ttl_s: float) -> None:
        """Mark the job as owned by a live controller for ``ttl_s`` (<= 0 releases)."""
        if ttl_s > 0:
            self._leases[job_id] = time.monotonic() + ttl_s
        else:
            self._leases.pop(job_id, None)

    async def leased(self, job_id: str) -> bool:
        return self._leases.get(job_id, 0.0) > time.monotonic()


class RedisJobStore(_CasStore):
    """Records at ``{prefix}:job:{id}`` (msgpack), newest-first index ``{prefix}:jobs`` and
    one index per status ``{prefix}:status:{status}`` (sorted sets scored by ``created``),
    leases at ``{prefix}:lease:{id}``. Writes are WATCH/MULTI transactions on the record key."""

    def __init__(self, url: str, prefix: str = "loom"):
        self.r = aioredis.from_url(url)
        self.prefix = prefix

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _status_key(self, status: str) -> str:
        return f"{self.prefix}:status:{status}"

    async def _cas(self, job_id: str, change) -> JobRecord | None:
        key = self._key(job_id)
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    data = await pipe.get(key)
                    old = JobRecord.decode(data) if data is not None else None
                    new = change(old)
                    if new is None:
                        return None
                    pipe.multi()
                    self._write(pipe, old, new)
                    await pipe.execute()
                    return new
                except WatchError:  # someone else wrote the record first: read it again
                    continue

    def _write(self, pipe, old: JobRecord | None, new: JobRecord) -> None:
        pipe.set(self._key(new.id), new.encode())
        pipe.zadd(f"{self.prefix}:jobs", {new.id: new.created})
        if old is not None and old.status != new.status:
            pipe.zrem(self._status_key(old.status), new.id)
        pipe.zadd(self._status_key(new.status), {new.id: new.created})

    async def get(self, job_id: str) -> JobRecord | None:
        data = await self.r.get(self._key(job_id))
        return JobRecord.decode(data) if data is not None else None

    async def list(self, limit: int = 100) -> list[JobRecord]:
        return await self._list(f"{self.prefix}:jobs", limit)

    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]:
        return await self._list(self._status_key(status), limit)

    async def _list(self, index: str, limit: int | None) -> list[JobRecord]:
        if limit is not None and limit <= 0:
            return []
        ids = await self.r.zrevrange(index, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        blobs = await self.r.mget([self._key(i.decode()) for i in ids])
        return [JobRecord.decode(b) for b in blobs if b is not None]

    async def lease(self, job_id: str, ttl_s: float) -> None:
        """Mark the job as owned by a live controller for ``ttl_s`` (<= 0 releases)."""
        key = f"{self.prefix}:lease:{job_id}"
        if ttl_s > 0:
            await self.r.set(key, b"1", px=max(1, int(ttl_s * 1000)))
        else:
            await self.r.delete(key)

    async def leased(self, job_id: str) -> bool:
        return bool(await self.r.exists(f"{self.prefix}:lease:{job_id}"))

    async def aclose(self) -> None:
        await self.r.aclose()
