"""The control messages between Loom's KV connectors (msgpack on the side channel). The values
that also reach the engine client (``KVHold``, ``PullReport``, the params keys) live in
orchestrator/protocol/kv.py, which both sides import.

The protocol (vLLM's NixlConnector pull protocol, with Loom's names):

1. The holder engine runs the prefix as a request with ``max_tokens=1`` and ``HOLD_KEY`` in its
   ``kv_transfer_params`` (a prefix-cache hit: nothing recomputed). Its scheduler-side connector
   keeps the request's blocks past ``request_finished`` and returns a ``KVHold``.
2. The target's request carries ``KVHold.to_params()``. Its scheduler-side connector reports the
   held tokens it lacks as an external hit loaded asynchronously; its worker side sends ``Pull``
   to the holder's side channel, receives the blocks over the pair's process group into the
   blocks vLLM allocated, and reports the request done (or its blocks failed: vLLM recomputes).
3. The holder frees the blocks once sent, on ``Release`` (the target did not need them), or
   when the hold expires. A ``Pull`` after that is refused, never served from reused blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import msgpack


@dataclass
class Connect:
    """Puller -> holder: join a new pair group whose store the puller serves at host:port."""

    group: str
    host: str
    port: int
    backend: str


@dataclass
class Pull:
    """Puller -> holder: send these held blocks on ``group`` (tag ``tag``)."""

    transfer: str
    block_ids: list[int]
    group: str
    tag: int


@dataclass
class Release:
    """Puller -> holder: the target will not pull ``transfer``; free its blocks now."""

    transfer: str


@dataclass
class Reply:
    """Holder -> puller: ``ok`` (the blocks follow on the group) or why not."""

    ok: bool
    error: str = ""
    shape: list[int] = field(default_factory=list)  # of the staged tensor that follows
    dtype: str = ""


MESSAGES = {cls.__name__: cls for cls in (Connect, Pull, Release, Reply)}


def encode(msg) -> bytes:
    return msgpack.packb({"kind": type(msg).__name__, **asdict(msg)})


def decode(raw: bytes):
    d = msgpack.unpackb(raw)
    kind = d.pop("kind", None)
    if kind not in MESSAGES:
        raise ValueError(f"unknown KV control message {kind!r}")
    return MESSAGES[kind](**d)
