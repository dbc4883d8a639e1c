"""The job store in Redis, shared by several ingress replicas (store.py has the protocol and the
compare-and-set rules every store follows)."""
from __future__ import annotations

import functools
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from orchestrator.driver.records import JobRecord, JobStatus
from orchestrator.service.store import StoreUnavailable, _CasStore


def _reachable(method):
    """Redis connection failures and timeouts as StoreUnavailable (the API answers 503)."""
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreUnavailable(f"the job store cannot be reached: {e}") from None
    return wrapper


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
    heartbeats at ``{prefix}:heartbeat:{id}``. Writes are WATCH/MULTI transactions on the record key.

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
        self._indexes = [self._expiry, f"{prefix}:jobs", *(self._status_key(s) for s in JobStatus)]

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
                    old = JobRecord.unpack(data) if data is not None else None
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
        if JobStatus(new.status).terminal:
            pipe.set(self._key(new.id), new.pack(), px=self._ttl_ms)
            pipe.zadd(self._expiry, {new.id: int(time.time() * 1000) + self._ttl_ms})
        else:  # a plain SET drops any expiry the key had
            pipe.set(self._key(new.id), new.pack())
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
        return JobRecord.unpack(data) if data is not None else None

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
        return [JobRecord.unpack(b) for b in blobs if b is not None]

    @_reachable
    async def heartbeat(self, job_id: str, ttl_s: float) -> None:
        """Marks the job as run by a live controller for ``ttl_s`` (<= 0 clears the mark)."""
        key = f"{self.prefix}:heartbeat:{job_id}"
        if ttl_s > 0:
            await self.r.set(key, b"1", px=max(1, int(ttl_s * 1000)))
        else:
            await self.r.delete(key)

    @_reachable
    async def has_heartbeat(self, job_id: str) -> bool:
        return bool(await self.r.exists(f"{self.prefix}:heartbeat:{job_id}"))

    async def aclose(self) -> None:
        await self.r.aclose()
