"""A free TCP port for a server a test starts (or a port nothing listens on, for one it must not reach)."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
