"""The service around jobs: HTTP API (``api``, the OpenAI-compatible chat completion in
``chat``), what ``/openapi.json`` documents of it (``openapi``), request validation
(``schema``), the job store (``store``, in Redis: ``redis_store``), the job service that runs
and keeps them (``jobs``) and ``/healthz``'s verdict (``health``).
May import ``protocol``, ``telemetry``, ``plan``, ``budget`` and ``driver``.
"""
