"""Cluster glue, Ray and Serve at the edge: configuration (``config``; the Helm chart's values
from it in ``helm_values``), Loom's actors brought up on a Ray cluster (``runtime``; each
worker's reserved resources in ``reservation``), the Serve application (``app``) and how requests
reach it (``ingress``), the ``loom`` command (``cli``, its inputs in ``inputs``, a job's tree
rendered by ``tree``) and the Ray Jobs entrypoint (``jobs``).
"""
