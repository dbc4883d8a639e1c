"""The job driver: one job's control flow, segment -> fork -> threads -> join -> continue.

Owns: ``job`` (the control flow, with the engines and the budget injected) and ``records``
(a job's request and record). Imports no Ray and no vLLM: it is unit-tested with a scripted
model. May import ``protocol``, ``telemetry``, ``plan`` and ``budget``.
"""
