"""The engine core's niceness: renice on a real process, and on the session's real engines."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import ray
from processes import engine_cores

from workers.engine import renice


def test_renice_sets_a_process_niceness():
    child = subprocess.Popen(["sleep", "30"])
    try:
        renice([child.pid], 7)  # raising a niceness needs no privilege
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 7
    finally:
        child.kill()
        child.wait()


def _children_nice(parent: int) -> dict[str, int]:
    """Name -> niceness of ``parent``'s child processes."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[1]) == parent:
            out[name] = int(rest[16])
    return out


@pytest.mark.integration
def test_the_engine_core_runs_at_the_configured_niceness_above_rays_workers(loom, loom_config):
    """Ray starts the worker at nice 15; its engine core runs at engine.core_nice (0) where this
    process may lower a niceness (root or CAP_SYS_NICE), else at Ray's."""
    worker = next(iter(loom.pool.handles.values()))
    pid = ray.get(worker.pid.remote())
    ray_nice = os.getpriority(os.PRIO_PROCESS, pid)
    cores = {c.pid: c.nice() for c in engine_cores(pid)}
    assert cores, _children_nice(pid)
    may_lower = os.geteuid() == 0
    assert set(cores.values()) == {loom_config.engine.core_nice if may_lower else ray_nice}, (cores, ray_nice)
