"""The job driver: one job's control flow, segment -> fork -> threads -> join -> continue.

Owns: ``job`` (a job run end to end, with the engines and the budget injected), ``lanes`` (a
lane's segments, its forks and their threads), ``join`` (a thread's prompt and the join: where a
join is built), ``context`` (what a running job keeps) and ``records`` (a job's request and
record). Imports no Ray and no vLLM: it is unit-tested with a scripted model. May import
``protocol``, ``telemetry``, ``plan`` and ``budget``.
"""
