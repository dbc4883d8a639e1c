"""Where job records live. ``JobStore`` is the protocol; the in-process store is the embedded
default (records are msgpack-encoded even here, so every store sees the same bytes) and
``RedisJobStore`` (redis_store.py) is the shared one that several ingress replicas use at once.

Every write is a compare-and-set on the stored record: ``transition`` moves a job only from
the statuses it names, and ``put`` never turns a finished job back into a live one.

Both stores are bounded: a finished record (a terminal ``JobStatus``) is kept ``ttl_s`` after
its last write, and the in-process store also keeps at most ``max_records`` records, dropping
the oldest finished ones first. Queued and running records are never dropped, whatever their
age or number: nothing accepted is lost.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import fields as dc_fields
from dataclasses import replace
from typing import Protocol

from orchestrator.driver.records import SCHEMA_VERSION, JobRecord, JobStatus


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (Redis down or failing over): try again shortly."""


_SETTABLE = {f.name for f in dc_fields(JobRecord)} - {"id", "status", "version"}  # by ``transition``


class JobStore(Protocol):
    async def put(self, record: JobRecord) -> None: ...
    async def get(self, job_id: str) -> JobRecord | None: ...
    async def list(self, limit: int = 100) -> list[JobRecord]: ...
    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]: ...
    async def transition(self, job_id: str, from_statuses: Iterable[str], to_status: str,
                         **fields) -> JobRecord | None: ...
    async def heartbeat(self, job_id: str, ttl_s: float) -> None: ...
    async def has_heartbeat(self, job_id: str) -> bool: ...


def _check(record: JobRecord) -> JobRecord:
    if record.version != SCHEMA_VERSION:
        raise ValueError(f"job record schema {record.version} is not {SCHEMA_VERSION}")
    JobStatus(record.status)  # ValueError for an unknown one
    return record


def _put_change(record: JobRecord) -> Callable[[JobRecord | None], JobRecord | None]:
    """The new record for ``put``, or None where it would revive a finished job."""
    _check(record)

    def change(old: JobRecord | None) -> JobRecord | None:
        if old is not None and JobStatus(old.status).terminal and not JobStatus(record.status).terminal:
            return None
        return record
    return change


def _transition_change(from_statuses, to_status: str, fields: dict):
    """The new record for ``transition``, or None where the current status is not allowed."""
    allowed = (from_statuses,) if isinstance(from_statuses, str) else tuple(from_statuses)
    bad = set(fields) - _SETTABLE
    if to_status not in set(JobStatus) or bad:
        raise ValueError(f"bad transition to {to_status!r} setting {sorted(bad)}")
    status = JobStatus(to_status)

    def change(old: JobRecord | None) -> JobRecord | None:
        if old is None or old.status not in allowed:
            return None
        return replace(old, status=status, **fields)
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
    """Records in a dict, as msgpack bytes. Finished ids also sit in ``_finished``, in the order
    they were (last) written finished, with the ``time.monotonic()`` of that write; so the
    oldest finished record is always the first one there, and evicting (on every write, and
    for age on every read) costs O(evicted), not a scan of the store."""

    def __init__(self, max_records: int = 10_000, ttl_s: float = 86_400.0):
        if max_records <= 0 or ttl_s <= 0:
            raise ValueError("max_records and ttl_s must be > 0")
        self.max_records = max_records
        self.ttl_s = ttl_s
        self._data: dict[str, bytes] = {}
        self._finished: dict[str, float] = {}  # id -> monotonic time it was written finished
        self._heartbeats: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def _cas(self, job_id: str, change) -> JobRecord | None:
        async with self._lock:
            data = self._data.get(job_id)
            new = change(JobRecord.unpack(data) if data is not None else None)
            if new is not None:
                self._data[job_id] = new.pack()
                self._finished.pop(job_id, None)  # re-inserted last, or live again
                if JobStatus(new.status).terminal:
                    self._finished[job_id] = time.monotonic()
                self._evict()
            return new

    def _evict(self) -> None:
        """Drops finished records older than ``ttl_s`` and, while there are more than
        ``max_records`` records, the oldest finished ones. Synchronous: atomic in the loop."""
        expired = time.monotonic() - self.ttl_s
        while self._finished:
            job_id, finished = next(iter(self._finished.items()))
            if finished > expired and len(self._data) <= self.max_records:
                break
            del self._finished[job_id]
            self._data.pop(job_id, None)
            self._heartbeats.pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        self._evict()
        data = self._data.get(job_id)
        return JobRecord.unpack(data) if data is not None else None

    async def list(self, limit: int | None = 100) -> list[JobRecord]:
        self._evict()
        records = [JobRecord.unpack(d) for d in self._data.values()]
        return sorted(records, key=lambda r: r.created, reverse=True)[:limit]

    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]:
        return [r for r in await self.list(None) if r.status == status][:limit]

    async def heartbeat(self, job_id: str, ttl_s: float) -> None:
        """Marks the job as run by a live controller for ``ttl_s`` (<= 0 clears the mark)."""
        if ttl_s > 0:
            self._heartbeats[job_id] = time.monotonic() + ttl_s
        else:
            self._heartbeats.pop(job_id, None)

    async def has_heartbeat(self, job_id: str) -> bool:
        return self._heartbeats.get(job_id, 0.0) > time.monotonic()
