"""The CPU a real engine's front end spends inside the worker's own process, emulated for a
simulated engine.

vLLM's AsyncLLM runs in the worker actor's process and event loop: each engine step's outputs
come over ZMQ, are decoded, detokenized and checked for stop strings there, per step and per
token. A simulated engine does none of that, so its worker's process is cheaper and Loom's other
processes on the same core run faster than beside a real engine. Where the profile says so
(``worker_cpu_s_per_step``, ``worker_cpu_s_per_token``: fitted by bench.sim_profile from the
real worker process's CPU under load), the simulated engine makes its worker's process spend at
least that much: after each step it adds the step's due to a debt, subtracts the CPU the
process has really used since (its own work, Loom's worker, Ray's threads), and spins on the
event loop for what is left, as the real front end's output handler holds that loop. CPU used
beyond the due is not banked; time idle between busy spells is not counted.
"""
from __future__ import annotations

import time

MAX_SPIN_S = 0.05  # at most this long on the loop at once (the rest stays owed)


class FrontEndLoad:
    def __init__(self, per_step_s: float, per_token_s: float):
        self.per_step_s, self.per_token_s = per_step_s, per_token_s
        self.debt_s = 0.0
        self.cpu_at = time.process_time()

    def resume(self) -> None:
        """The engine wakes from idle: what the process used while idle pays nothing."""
        self.cpu_at = time.process_time()

    def charge(self, tokens: int) -> None:
        """A step made ``tokens`` tokens: spins until the process has spent its due."""
        now = time.process_time()
        self.debt_s = max(0.0, self.debt_s + self.per_step_s + tokens * self.per_token_s - (now - self.cpu_at))
        spin = min(self.debt_s, MAX_SPIN_S)
        end = time.process_time() + spin
        while time.process_time() < end:
            pass
        self.cpu_at = time.process_time()
        self.debt_s -= self.cpu_at - now
