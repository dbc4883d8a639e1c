"""Where job records live. ``JobStore`` is the protocol; the in-process store is the embedded
default (records are msgpack-encoded even here, so every store sees the same bytes) and
``RedisJobStore`` is the shared one that several ingress replicas use at once.

Every write is a compare-and-set on the stored record: ``transition`` moves a job only from
the statuses it names, and ``put`` never turns a finished job back into a live one.

Both stores are bounded: a finished record (status in ``TERMINAL``) is kept ``ttl_s`` after
its last write, and the in-process store also keeps at most ``max_records`` records, dropping
the oldest finished ones first. Queued and running records are never dropped, whatever their
age or number: nothing accepted is lost.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import fields as dc_fields
from dataclasses import replace
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from orchestrator.driver.records import SCHEMA_VERSION, STATUSES, JobRecord

TERMINAL = ("done", "failed", "cancelled")


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (Redis down or failing over): try again shortly."""


def _reachable(method):
    """Redis connection failures and timeouts as StoreUnavailable (the API answers 503)."""
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreUnavailable(f"the job store cannot be reached: {e}") from None
    return wrapper
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
        self._leases: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def _cas(self, job_id: str, change) -> JobRecord | None:
        async with self._lock:
            data = self._data.get(job_id)
            new = change(JobRecord.decode(data) if data is not None else None)
            if new is not None:
                self._data[job_id] = new.encode()
                self._finished.pop(job_id, None)  # re-inserted last, or live again
                if new.status in TERMINAL:
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
            self._leases.pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        self._evict()
        data = self._data.get(job_id)
        return JobRecord.decode(data) if data is not None else None

    async def list(self, limit: int | None = 100) -> list[JobRecord]:
        self._evict()
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


# Looks at the ids due in the expiry index (KEYS[1], scored by expiry time in ms) at ARGV[1],
# at most ARGV[2] of them. Where the record (key ARGV[3] .. id) is gone, the id leaves every
# index in KEYS (the expiry index, ``{prefix}:jobs``, every status index). Where it still
# exists (a clock ahead of Redis's), the id is scored again by the key's own remaining time,
# or leaves the expiry index only, if the key has no expiry (a record kept for good).
_TRIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local gone = 0
for _, id in ipairs(due) do
  local left = redis.call('PTTL', ARGV[3] .. id)
  if left == -2 then
    for i = 1, #KEYS do redis.call('ZREM', KEYS[i], id) end
    gone = gone + 1
  elseif left == -1 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + left, id)
  end
end
return gone
"""
_TRIM_BATCH = 1000  # ids looked at per trim: bounds the script's time


class RedisJobStore(_CasStore):
    """Records at ``{prefix}:job:{id}`` (msgpack), newest-first index ``{prefix}:jobs`` and
    one index per status ``{prefix}:status:{status}`` (sorted sets scored by ``created``),
    leases at ``{prefix}:lease:{id}``. Writes are WATCH/MULTI transactions on the record key.

    Retention: a write with a finished status sets the record with ``PX ttl_s`` and, in the
    same MULTI, puts its id in ``{prefix}:expiry`` scored by when it expires (ms, this client's
    clock); Redis then deletes the key itself. A live write (queued, running) is a plain SET,
    which clears any expiry, and takes the id out of ``{prefix}:expiry``: live records never
    expire. The indexes are trimmed by a Lua script (``_TRIM``, run atomically in Redis) inside
    every write's MULTI and before every ``list``: it takes the ids due in ``{prefix}:expiry``
    and removes from every index only those whose record key no longer exists (the others are
    scored again by their key's remaining time). So only records that Redis has really
    expired leave the indexes, never a live one however old (its id is not in
    ``{prefix}:expiry``, and its key has no expiry), and a clock skew between replicas and
    Redis only delays trimming, never loses a record. Scores by ``created`` would not do: a
    queued or running job older than ``ttl_s`` must stay in its status index for recovery.
    """

    def __init__(self, url: str, prefix: str = "loom", ttl_s: float = 86_400.0):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.r = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._expiry = f"{prefix}:expiry"
        self._indexes = [self._expiry, f"{prefix}:jobs", *(self._status_key(s) for s in STATUSES)]

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _status_key(self, status: str) -> str:
        return f"{self.prefix}:status:{status}"

    @_reachable
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
        if new.status in TERMINAL:
            pipe.set(self._key(new.id), new.encode(), px=self._ttl_ms)
            pipe.zadd(self._expiry, {new.id: int(time.time() * 1000) + self._ttl_ms})
        else:  # a plain SET drops any expiry the key had
            pipe.set(self._key(new.id), new.encode())
            pipe.zrem(self._expiry, new.id)
        pipe.zadd(f"{self.prefix}:jobs", {new.id: new.created})
        if old is not None and old.status != new.status:
            pipe.zrem(self._status_key(old.status), new.id)
        pipe.zadd(self._status_key(new.status), {new.id: new.created})
        self._trim(pipe)

    def _trim(self, client):
        """Queues (pipeline) or runs (client) the index trim for records that have expired."""
        return client.eval(_TRIM, len(self._indexes), *self._indexes,
                           int(time.time() * 1000), _TRIM_BATCH, f"{self.prefix}:job:")

    @_reachable
    async def get(self, job_id: str) -> JobRecord | None:
        data = await self.r.get(self._key(job_id))
        return JobRecord.decode(data) if data is not None else None

    async def list(self, limit: int = 100) -> list[JobRecord]:
        return await self._list(f"{self.prefix}:jobs", limit)

    async def list_by_status(self, status: str, limit: int | None = 100) -> list[JobRecord]:
        return await self._list(self._status_key(status), limit)

    @_reachable
    async def _list(self, index: str, limit: int | None) -> list[JobRecord]:
        if limit is not None and limit <= 0:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            self._trim(pipe)
            pipe.zrevrange(index, 0, -1 if limit is None else limit - 1)
            _, ids = await pipe.execute()
        if not ids:
            return []
        blobs = await self.r.mget([self._key(i.decode()) for i in ids])
        return [JobRecord.decode(b) for b in blobs if b is not None]

    @_reachable
    async def lease(self, job_id: str, ttl_s: float) -> None:
        """Mark the job as owned by a live controller for ``ttl_s`` (<= 0 releases)."""
        key = f"{self.prefix}:lease:{job_id}"
        if ttl_s > 0:
            await self.r.set(key, b"1", px=max(1, int(ttl_s * 1000)))
        else:
            await self.r.delete(key)

    @_reachable
    async def leased(self, job_id: str) -> bool:
        return bool(await self.r.exists(f"{self.prefix}:lease:{job_id}"))

    async def aclose(self) -> None:
        await self.r.aclose()
