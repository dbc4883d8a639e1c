"""Moving KV blocks between two engine processes: a torch.distributed process group per engine
pair (pair_group.py), made when first needed, and a ZMQ side channel for the control messages
(messages.py). Needs torch and pyzmq only, not vLLM.

One code path for both devices: the backend follows the KV cache's device (``gloo`` for CPU
tensors, ``nccl`` for CUDA ones). Every wait has a deadline; a group whose operation failed or
timed out is dropped (closed) and the next transfer builds a new one.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch
import zmq

from workers.kv import pair_group
from workers.kv.messages import Connect, Reply, decode, encode

log = logging.getLogger(__name__)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class PairGroups:
    """This engine's process groups, one per peer it pulls from (the puller's side) or that
    pulls from it (the holder's side), keyed by a name both sides know."""

    def __init__(self, host: str, timeout_s: float):
        self.host = host
        self.timeout_s = timeout_s
        self.groups: dict[str, pair_group.PairGroup] = {}
        self.lock = threading.Lock()

    def get(self, key: str):
        with self.lock:
            return self.groups.get(key)

    def wait_for(self, key: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while (group := self.get(key)) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return group

    def put(self, key: str, group) -> None:
        with self.lock:
            self.groups[key] = group

    def drop(self, key: str) -> None:
        with self.lock:
            group = self.groups.pop(key, None)
        if group is not None:
            group.close()

    def open_to(self, peer_host: str, peer_port: int, peer: str, backend: str, deadline: Deadline) -> str:
        """A new group with the holder ``peer`` (rank 0 here, serving the store), built by
        ``deadline``; returns its key."""
        listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind((self.host, 0))
        listen.listen()
        port = listen.getsockname()[1]
        key = f"{peer}/{uuid.uuid4().hex[:8]}"
        try:
            reply = request(peer_host, peer_port, Connect(key, self.host, port, backend), deadline.left())
            if not reply.ok:
                raise TransferError(f"{peer} refused a pair group: {reply.error}")
            self.put(key, pair_group.build(self.host, port, 0, backend, deadline.left(), listen, local=self.host))
        except Exception:
            listen.close()  # the holder never joined: no socket is left listening
            raise
        return key

    def join(self, msg: Connect) -> None:
        """The holder's side of ``open_to`` (rank 1); run off the side channel's thread."""
        try:
            self.put(msg.group, pair_group.build(msg.host, msg.port, 1, msg.backend, self.timeout_s, local=self.host))
        except Exception as e:  # noqa: BLE001 - the puller times out and recomputes
            log.warning("pair group %s not built: %s", msg.group, e)

    def close(self) -> None:
        for key in list(self.groups):
            self.drop(key)


class TransferError(RuntimeError):
    """A transfer could not be done (peer unreachable, refused, timed out, or failed)."""


@dataclass(frozen=True)
class Deadline:
    """When a whole transfer must have ended: each of its waits gets what is left."""

    started: float  # time.monotonic()
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        now = time.monotonic()
        return cls(now, now + seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds left; TransferError once there are none."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TransferError("the transfer's deadline passed")
        return left


def request(host: str, port: int, msg, timeout_s: float) -> Reply:
    """One control message and its reply; TransferError if none comes within ``timeout_s``."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send(encode(msg))
        reply = decode(sock.recv())
    except zmq.Again as e:
        raise TransferError(f"no answer from {host}:{port} in {timeout_s:.1f} s") from e
    finally:
        sock.close()
    if not isinstance(reply, Reply):
        raise TransferError(f"{host}:{port} answered with {type(reply).__name__}")
    return reply


def notify(host: str, port: int, msg, timeout_s: float) -> None:
    """A control message whose answer does not matter (a lost one is covered by a time-out)."""
    try:
        request(host, port, msg, timeout_s)
    except TransferError as e:
        log.info("control message %s to %s:%d lost: %s", type(msg).__name__, host, port, e)


class SideChannel:
    """The holder's control socket: a thread answering each message with ``handler(msg)``."""

    def __init__(self, host: str, port: int, handler: Callable[[object], Reply]):
        self.handler = handler
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://{host}:{port}")
        self.port = int(self.sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="loom-kv-side-channel", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        log.info("KV side channel serving on %s", self.sock.getsockopt(zmq.LAST_ENDPOINT).decode())
        while not self.stopped.is_set():
            try:
                if poller.poll(100):
                    self._answer(*self.sock.recv_multipart())
            except Exception:  # a malformed frame must not end the server
                log.exception("KV side channel: a message could not be answered")
        self.sock.close()

    def _answer(self, ident: bytes, raw: bytes) -> None:
        try:
            reply = self.handler(decode(raw))
        except Exception as e:  # a bad message gets an error, the server lives on
            log.exception("KV control message failed")
            reply = Reply(False, f"{type(e).__name__}: {e}")
        self.sock.send_multipart([ident, encode(reply)])

    def close(self) -> None:
        self.stopped.set()
