"""The worker actors as the engine client sees them: each worker's request stream and KV events,
which workers are down, and their engines' loads.

A worker that dies (its stream breaks, or a Ray call to it fails) is taken out of placement and
waited for: Ray restarts it (``max_restarts=-1``) with a new engine, and once it answers
``ready`` its new engine's KV events are followed from scratch and it is placed on again.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ray.exceptions import RayActorError

from orchestrator.protocol.engine import WorkerInfo
from orchestrator.routing.kv_events import KVEventSubscriber, SharedIndex
from orchestrator.routing.placement import Placer
from orchestrator.routing.stream_client import StreamClient

log = logging.getLogger(__name__)

REVIVE_TIMEOUT_S = 600.0  # how long a dead worker is waited for
LOAD_REFRESH_S = 0.05  # a placement uses engine loads at most this old (one refresh in flight at a time)
LOAD_TIMEOUT_S = 2.0


class NoLiveWorker(RuntimeError):
    """Every worker is down and none came back in time."""


class WorkerPool:
    def __init__(self, handles: dict, placer: Placer, index: SharedIndex):
        self.handles = handles  # worker name -> its actor handle
        self.placer = placer
        self.index = index
        self.subscribers: dict[str, KVEventSubscriber] = {}
        self.streams: dict[str, StreamClient] = {}
        self.reviving: dict[str, asyncio.Task] = {}
        self._loads_at = 0.0
        self._refresh: asyncio.Task | None = None

    def names(self) -> list[str]:
        return list(self.handles)

    def handle(self, name: str):
        return self.handles[name]

    def stream(self, name: str) -> StreamClient:
        return self.streams[name]

    def kv_events_applied(self) -> dict[str, int]:
        """Per worker, the last batch of its engine's KV events this process's index applied."""
        return {name: self.index.applied(name) for name in self.handles}

    def watch(self, info: WorkerInfo) -> None:
        """Follows a worker's engine: its KV events (from scratch), its request stream, its speed."""
        old = self.subscribers.pop(info.name, None)
        if old is not None:
            old.stop()
        self.index.forget(info.name)
        self.placer.add_worker(info.name, info.profile, info.kv_bytes_per_token)
        self.subscribers[info.name] = sub = KVEventSubscriber(info.name, info.kv, self.index)
        sub.start()
        if info.name in self.streams:
            self.streams[info.name].close()
        self.streams[info.name] = StreamClient(info.stream)

    def close(self) -> None:
        """Stops following the workers (their KV events, their streams); the workers run on."""
        for sub in self.subscribers.values():
            sub.stop()
        for stream in self.streams.values():
            stream.close()

    def lost(self, name: str) -> None:
        """The worker died under a request: out of placement until Ray has restarted it."""
        self.placer.mark_down(name)
        if not running_here(self.reviving.get(name)):
            self.reviving[name] = asyncio.ensure_future(self._revive(name))

    async def _revive(self, name: str) -> None:
        deadline = time.monotonic() + REVIVE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                info = await asyncio.wait_for(self.handles[name].ready.remote(), REVIVE_TIMEOUT_S)
            except (RayActorError, TimeoutError):
                await asyncio.sleep(1.0)
                continue
            self.watch(info)
            return
        log.error("worker %s did not come back in %.0f s", name, REVIVE_TIMEOUT_S)

    async def wait_for_live(self) -> None:
        """Returns once a worker is live (at once if one is); NoLiveWorker if none can be."""
        while not self.placer.live():
            pending = [t for t in self.reviving.values() if running_here(t)]
            if not pending:
                raise NoLiveWorker("no worker is alive and none is restarting")
            await asyncio.wait(pending, timeout=REVIVE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)

    async def refresh_loads(self) -> None:
        """Each engine's load, if the last reports are older than LOAD_REFRESH_S; concurrent
        callers share one refresh."""
        if time.monotonic() - self._loads_at < LOAD_REFRESH_S:
            return
        if not running_here(self._refresh):
            self._refresh = asyncio.ensure_future(self._fetch_loads())
        await asyncio.shield(self._refresh)

    async def _fetch_loads(self) -> None:
        names = self.placer.live()
        pending = {n: self.placer.pending(n) for n in names}  # what each report counts
        loads = await asyncio.gather(*(asyncio.wait_for(self.handles[n].load.remote(), LOAD_TIMEOUT_S)
                                       for n in names), return_exceptions=True)
        for name, load in zip(names, loads):
            if isinstance(load, RayActorError):
                self.lost(name)
            elif not isinstance(load, BaseException):
                self.placer.report(name, load, pending[name])
        self._loads_at = time.monotonic()


def running_here(task: asyncio.Task | None) -> bool:
    """A task still running on this event loop (a driver may run its jobs in successive loops)."""
    return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()
