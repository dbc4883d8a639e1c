"""Loom's control plane, one subpackage per subsystem. Where to look:

- ``protocol``: the values that cross between the driver, the engine client and the workers
  (engine requests and chunks, segments and their placements, KV hold parameters, wire frames).
- ``plan``: the plan formats (fork trigger, outlines, thread headers, join text) and the DAG.
- ``driver``: one job's control flow (segment, fork, threads, join, continue) and its record.
- ``budget``: the compute budget: policy, the per-job account, token leases, the coordinator.
- ``routing``: which worker runs a request (KV index, placement, worker pool), KV pulls, the
  engine client that streams requests to the workers.
- ``service``: the HTTP API, request validation, the job store and the job service.
- ``telemetry``: OpenTelemetry spans and Ray metrics.

Imports go down this list's dependency order only (tests/test_layout.py checks it); ``workers/``
imports only ``protocol`` and ``telemetry``.
"""
