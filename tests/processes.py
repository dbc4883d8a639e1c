"""Finding the processes of a test's engines: vLLM's engine core by its parent, a worker actor."""
from __future__ import annotations

import os

import psutil


def engine_cores(parent: int) -> list[psutil.Process]:
    """The engine-core processes worker actor ``parent`` started: its children vLLM spawned with
    multiprocessing. vLLM titles one ``VLLM::EngineCore`` (setproctitle) once it runs, but in two
    fresh-clone runs of ``make test`` an engine core that was serving jobs still had the spawned
    interpreter's command line, so the title alone does not find it (why, not known)."""
    found = []
    for child in psutil.Process(parent).children():
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in cmd or "multiprocessing.spawn" in cmd:
            found.append(child)
    return found


def session_process(sid: int, name: str) -> psutil.Process | None:
    """The first live process of session ``sid`` whose command line holds ``name``."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid and name in " ".join(p.info["cmdline"] or []):
                return p
        except (ProcessLookupError, psutil.Error):
            continue
    return None
