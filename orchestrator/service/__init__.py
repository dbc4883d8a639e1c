"""The service around jobs: HTTP API (``api``), request validation (``schema``), the job
store (``store``), the job service that runs and keeps them (``jobs``) and ``/healthz``'s verdict
(``health``). May import ``protocol``, ``telemetry``, ``plan``, ``budget`` and ``driver``.
"""
