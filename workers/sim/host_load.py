"""The CPU a real engine's host side spends beside its worker, emulated for a simulated engine.

vLLM's engine core is a process of its own on the worker's node that keeps a core busy while the
engine has requests (it polls for the model runner's output, yielding the core at each poll:
vllm/distributed/device_communicators/shm_broadcast.py): where Loom's own processes share that
core (a CPU engine on a small machine), that time is taken from them. A simulated engine
whose profile has ``host_busy_share`` > 0 starts this spinner as a process of its own, at the
engine core's niceness, and tells it over a pipe when the engine is busy ("1") or idle ("0");
busy, it polls (yielding, as vLLM's does) in every PERIOD_S until it has spent that share of
the period in CPU, or the period is over, and sleeps the rest. The share is CPU, as the profile
measured it (the engine core's CPU seconds over the seconds of its steps), not wall time: on a
contended core, polling for the share's wall time spent about half the real engine core's CPU.
CPU it could not get in a period is not owed to the next. 0: nothing is started (a cluster of
simulated engines on one machine keeps its cores for the control plane).

    python -m workers.sim.host_load SHARE
"""
from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time

PERIOD_S = 0.005


class HostLoad:
    def __init__(self, share: float, nice: int | None):
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.sim.host_load", str(share)],
                                     stdin=subprocess.PIPE)
        if nice is not None:
            with contextlib.suppress(PermissionError):  # as renice: without CAP_SYS_NICE it keeps Ray's
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)
        self.busy = False

    def set_busy(self, busy: bool) -> None:
        if busy != self.busy and self.proc.poll() is None:
            self.busy = busy
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write(b"1" if busy else b"0")
                self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def spin(share: float) -> None:
    busy = False
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], 0 if busy else None)
        if ready:
            data = os.read(fd, 64)
            if not data:  # the engine is gone
                return
            busy = data[-1:] == b"1"
        if busy:
            poll_period(share)


def poll_period(share: float) -> None:
    """One period: polls until ``share`` of it is spent in CPU or it is over; sleeps the rest."""
    end = time.perf_counter() + PERIOD_S
    cpu_end = time.process_time() + share * PERIOD_S
    while time.process_time() < cpu_end and time.perf_counter() < end:
        os.sched_yield()
    time.sleep(max(0.0, end - time.perf_counter()))


if __name__ == "__main__":
    spin(float(sys.argv[1]))
